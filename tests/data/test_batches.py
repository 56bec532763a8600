import numpy as np
import pytest
import torch

from dawntrain.data.batches import (
    Normalizer,
    batch_positions,
    channel_stats,
    crop_flip,
    epoch_plan,
    reflect_index,
    samplewise_standardize,
    steps_per_epoch,
    train_batches,
)


def test_reflect_index_matches_numpy_pad():
    x = np.arange(7)
    np.testing.assert_array_equal(reflect_index(7, 4).numpy(), np.pad(x, 4, mode="reflect"))


def numpy_crop_flip(img, dx, dy, flip, pad):
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    out = padded[dy : dy + h, dx : dx + w]
    return out[:, ::-1] if flip else out


def test_crop_flip_equals_pad_then_crop_reference():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    dx, dy = rng.integers(0, 9, 16), rng.integers(0, 9, 16)
    flip = rng.random(16) < 0.5
    out = crop_flip(
        torch.from_numpy(images),
        torch.from_numpy(dx),
        torch.from_numpy(dy),
        torch.from_numpy(flip),
        4,
    ).numpy()
    for i in range(16):
        np.testing.assert_array_equal(out[i], numpy_crop_flip(images[i], dx[i], dy[i], flip[i], 4))


def test_every_crop_lies_inside_the_padded_image_and_flip_mirrors():
    plan = epoch_plan(1000, seed=3, epoch=0, pad=4, flip=True, device="cpu")
    assert plan.dx.min() >= 0 and plan.dx.max() <= 8 and plan.dy.max() <= 8
    assert 0.4 < plan.flip.float().mean() < 0.6
    img = torch.arange(2 * 5 * 5 * 3, dtype=torch.uint8).view(2, 5, 5, 3)
    zero = torch.full((2,), 4)
    same = crop_flip(img, zero, zero, torch.tensor([False, False]), 4)
    mirrored = crop_flip(img, zero, zero, torch.tensor([True, True]), 4)
    assert torch.equal(same, img) and torch.equal(mirrored, img.flip(2))


def test_labels_follow_their_images():
    n = 50
    # Each image's pixels encode its label, so a label that moves without its image shows.
    labels = torch.arange(n) % 10
    images = (labels * 20).to(torch.uint8).view(n, 1, 1, 1).expand(n, 6, 6, 3).contiguous()
    plan = epoch_plan(n, seed=0, epoch=1, pad=2, flip=True, device="cpu")
    seen = []
    for x, y in train_batches(images, labels, plan, 16, pad=2):
        assert torch.equal(x[:, 0, 0, 0], (y * 20).to(torch.uint8))
        seen.append(y)
    assert sorted(torch.cat(seen).tolist()) == sorted(labels.tolist())


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_plan(100, seed=1, epoch=2, pad=4, flip=True, device="cpu")
    b = epoch_plan(100, seed=1, epoch=2, pad=4, flip=True, device="cpu")
    c = epoch_plan(100, seed=1, epoch=3, pad=4, flip=True, device="cpu")
    assert torch.equal(a.order, b.order) and torch.equal(a.dx, b.dx)
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(100))


def test_steps_and_rank_slices_partition_each_global_batch():
    assert steps_per_epoch(50000, 512) == 98  # the original's len_train // batch + 1
    assert steps_per_epoch(1024, 512) == 2
    n, batch, world = 1000, 64, 4
    for step in range(steps_per_epoch(n, batch, world)):
        parts = [batch_positions(n, batch, step, r, world) for r in range(world)]
        merged = sorted(torch.cat(parts).tolist())
        assert merged == list(range(step * batch, min(n, (step + 1) * batch)))


def test_normalizer_per_channel_and_channels_last():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0), rtol=1e-15)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0), rtol=1e-13)
    # Any other dtype takes the float64 path, to the same figures.
    np.testing.assert_allclose(channel_stats(images.astype(np.float32)), (mean, std), rtol=1e-13)
    x = Normalizer(mean, std)(torch.from_numpy(images))
    assert x.shape == (20, 3, 4, 4) and x.is_contiguous(memory_format=torch.channels_last)
    ref = (images.astype(np.float64) - mean) / std
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ref, rtol=1e-5, atol=1e-5)


def test_samplewise_normalizer_matches_float64_reference():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    x = Normalizer(None, None, samplewise=True)(torch.from_numpy(images))
    f = images.astype(np.float64) / 255
    ref = (f - f.mean(axis=(1, 2, 3), keepdims=True)) / (
        f.std(axis=(1, 2, 3), keepdims=True) + 1e-6
    )
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), ref, rtol=1e-4, atol=1e-5)


def _keras_reference(images_nhwc_uint8: np.ndarray) -> np.ndarray:
    """ImageDataGenerator.standardize on each image in float64, returned as NCHW."""
    out = []
    for x in images_nhwc_uint8.astype(np.float64):
        x *= 1.0 / 255
        x -= np.mean(x, keepdims=True)
        x /= np.std(x, keepdims=True) + 1e-6
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


def test_samplewise_standardize_matches_keras():
    rng = np.random.default_rng(3)
    batch = rng.integers(0, 256, (5, 8, 6, 3), dtype=np.uint8)
    batch[1] = rng.integers(100, 104, (8, 6, 3))  # low contrast: the epsilon matters more
    batch[2] = 7  # constant image: zeros, not NaN
    ref = _keras_reference(batch)
    out = samplewise_standardize(torch.from_numpy(batch))
    assert out.dtype == torch.float32 and out.shape == (5, 3, 8, 6)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    assert (out[2] == 0).all()
    scaled = torch.from_numpy(batch).permute(0, 3, 1, 2).double() / 255
    np.testing.assert_allclose(samplewise_standardize(scaled).numpy(), ref, rtol=1e-10, atol=1e-9)
    with pytest.raises(TypeError):
        samplewise_standardize(torch.zeros(1, 3, 2, 2, dtype=torch.int32))
