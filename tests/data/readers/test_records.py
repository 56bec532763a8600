"""Record layouts (codec/record.py), sharded directories with a manifest (written by convert.py),
the decode-once loader, inspection and the stream (readers/records.py, readers/stream.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dawntrain.data import convert as convert_module
from dawntrain.data.codec.example import decode_example, parse_tensor
from dawntrain.data.codec.record import (
    ImageRecord,
    destandardize_image,
    encode_record,
    image_record_from_array,
    standardize_image,
)
from dawntrain.data.codec.tfrecord import read_records, write_records
from dawntrain.data.convert import write_manifest, write_shards
from dawntrain.data.readers import records as records_module
from dawntrain.data.readers.records import (
    inspect_records,
    load_record_split,
    read_manifest,
    verify_manifest,
)
from dawntrain.data.readers.stream import RecordStream
from dawntrain.errors import DataError, RecordError
from shared_data import TFRECORD_FIXTURES as FIXTURES
from shared_data import needs

needs_fixtures = needs(FIXTURES)


def small_images(n: int, size: int = 6, seed: int = 0) -> np.ndarray:
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = 0  # each reaches black, so the seed layout's uint8 comes back exactly
    return images


def make_records(n: int, size: int = 6) -> tuple[np.ndarray, list[ImageRecord]]:
    """Records whose label is their index, so a stream's labels say which records it gave."""
    images = small_images(n, size)
    return images, [image_record_from_array(img, i, f"class{i}") for i, img in enumerate(images)]


def write_dir(tmp_path: Path, n: int, num_shards: int, **kwargs) -> tuple[np.ndarray, Path]:
    images, records = make_records(n)
    infos = write_shards(tmp_path, "train", records, num_shards, progress=False, **kwargs)
    layout = kwargs.get("layout", "image")
    write_manifest(tmp_path, layout, {"train": infos}, [f"class{i}" for i in range(n)])
    return images, tmp_path


# --- the TensorFlow-written fixtures ---------------------------------------------------------


@needs_fixtures
def test_seed_fixture_tensors_equal_the_expected_arrays():
    expected = np.load(FIXTURES / "seed-format-expected.npz")
    paths = sorted(FIXTURES.glob("seed-format-*-of-02.tfrecord.gz"))
    records = [decode_example(r) for r in read_records(paths)]
    assert len(records) == len(expected["order"])
    for row, features in zip(expected["order"], records, strict=True):
        img = parse_tensor(features["img"][0], np.float32)
        np.testing.assert_array_equal(img, expected["img"][row])
        assert parse_tensor(features["label"][0], np.uint8) == expected["label"][row]


@needs_fixtures
def test_seed_layout_stores_per_image_standardized_pixels():
    seed = np.load(FIXTURES / "seed-format-expected.npz")
    pixels = np.load(FIXTURES / "encoded-jpeg-expected.npz")["pixels"]
    for img, px in zip(seed["img"], pixels, strict=True):  # the npz rows are the same images
        np.testing.assert_allclose(standardize_image(px), img, atol=1e-5)


@needs_fixtures
def test_seed_fixture_loads_as_the_tensorflow_decoded_pixels():
    seed = np.load(FIXTURES / "seed-format-expected.npz")
    pixels = np.load(FIXTURES / "encoded-jpeg-expected.npz")["pixels"].astype(int)
    images, labels, classes = load_record_split(str(FIXTURES / "seed-format-*.tfrecord.gz"))
    np.testing.assert_array_equal(labels, seed["label"][seed["order"]])
    assert classes == [str(i) for i in range(labels.max() + 1)]
    for img, row in zip(images.astype(int), seed["order"], strict=True):
        shift = img - pixels[row]
        assert (shift == shift.flat[0]).all(), "pixels come back exact up to brightness"
        if pixels[row].min() == 0:  # where the image reaches black, exactly
            assert shift.flat[0] == 0


@needs_fixtures
def test_encoded_jpeg_fixture_loads_close_to_tensorflow_decode():
    expected = np.load(FIXTURES / "encoded-jpeg-expected.npz")
    images, labels, classes = load_record_split(FIXTURES / "encoded-jpeg.tfrecord")
    np.testing.assert_array_equal(labels, expected["label"])
    assert images.shape == expected["pixels"].shape and images.dtype == np.uint8
    # TF's decode_jpeg uses libjpeg's fast integer IDCT by default, Pillow the accurate one.
    diff = np.abs(images.astype(int) - expected["pixels"])
    assert diff.mean() < 1.5 and diff.max() <= 6
    assert classes[19] == "n09246464" and len(classes) == 20


@needs_fixtures
def test_inspect_fixture():
    summary = inspect_records(str(FIXTURES / "seed-format-*.tfrecord.gz"), verify=True)
    assert summary["records"] == 24 and summary["files"] == 2
    assert summary["layout"] == "seed" and summary["first_bad"] is None
    assert summary["features"] == {"img": "bytes", "label": "bytes"}
    assert summary["first_image_shape"] == [64, 64, 3]
    labels = np.load(FIXTURES / "seed-format-expected.npz")["label"]
    keys, counts = np.unique(labels, return_counts=True)
    assert summary["class_histogram"] == dict(zip(keys.tolist(), counts.tolist(), strict=True))


# --- one record -------------------------------------------------------------------------------


def test_destandardize_recovers_integer_pixels_exactly():
    images = small_images(5, size=16, seed=3)
    images[4] //= 8  # low contrast: 32 levels
    for img in images:
        np.testing.assert_array_equal(destandardize_image(standardize_image(img)), img)
    assert (destandardize_image(np.full((2, 2, 3), 0.0, np.float32)) == 0).all()
    # values that never were integer pixels are stretched to [0, 255]
    z = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(10, 100, 1) ** 3
    out = destandardize_image(z)
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_allclose(out, (z - z.min()) / (z.max() - z.min()) * 255, atol=0.51)


def test_image_layout_fields():
    img = small_images(1, size=5)[0]
    record = image_record_from_array(img, 3, "dog")
    features = decode_example(encode_record(record))
    assert features["image/format"] == [b"png"] and features["image/class/label"] == [3]
    assert features["image/class/text"] == [b"dog"]
    assert features["image/height"] == [5] and features["image/width"] == [5]
    decoded = np.asarray(Image.open(io.BytesIO(features["image/encoded"][0])))
    np.testing.assert_array_equal(decoded, img)


def test_seed_layout_fields():
    img = small_images(1, size=5)[0]
    features = decode_example(encode_record(image_record_from_array(img, 200), "seed"))
    z = parse_tensor(features["img"][0], np.float32)
    np.testing.assert_allclose(z, (img - img.mean()) / img.std(), atol=1e-5)
    label = parse_tensor(features["label"][0], np.uint8)
    assert label.shape == () and label == 200
    with pytest.raises(DataError, match="uint8"):
        encode_record(image_record_from_array(img, 300), "seed")


# --- sharded directories ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["image", "seed"])
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_write_shards_manifest_load_round_trip(tmp_path, layout, compression):
    images, directory = write_dir(tmp_path, 10, 3, layout=layout, compression=compression)
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    manifest = read_manifest(directory)
    assert manifest["layout"] == layout and manifest["compression"] == compression
    shards = manifest["splits"]["train"]
    assert [s["file"] for s in shards] == [f"train-0000{i}-of-00003{suffix}" for i in range(3)]
    assert [s["records"] for s in shards] == [3, 3, 4]  # contiguous slices
    first = [decode_example(r) for r in read_records(directory / shards[1]["file"])]
    assert len(first) == 3
    got, labels, classes = load_record_split(directory, "train")
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, np.arange(10))
    assert classes == [f"class{i}" for i in range(10)]
    verify_manifest(directory)


def test_worker_processes_give_the_same_shards_and_arrays(tmp_path, monkeypatch):
    images, records = make_records(12)
    serial = write_shards(tmp_path / "a", "train", records, 2, workers=1, progress=False)
    monkeypatch.setattr(convert_module, "PARALLEL_MIN_RECORDS", 0)
    monkeypatch.setattr(records_module, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(records_module, "CHUNK_RECORDS", 5)
    parallel = write_shards(tmp_path / "b", "train", iter(records), 2, workers=2, progress=False)
    assert parallel == serial
    got, labels, _ = load_record_split(tmp_path / "b", "train", workers=2)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(labels, np.arange(12))


def test_manifest_sha_mismatch_names_the_shard(tmp_path):
    _, directory = write_dir(tmp_path, 6, 2)
    shard = directory / read_manifest(directory)["splits"]["train"][1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 1
    shard.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=f"{shard.name}: sha256 differs"):
        verify_manifest(directory)
    shard.unlink()
    with pytest.raises(RecordError, match=f"{shard.name}.*missing"):
        verify_manifest(directory)


def test_directory_without_manifest_globs_the_split(tmp_path):
    images, records = make_records(4)
    write_shards(tmp_path, "val", records, 2, progress=False)
    got, labels, classes = load_record_split(tmp_path, "val")
    np.testing.assert_array_equal(got, images)
    assert classes == [f"class{i}" for i in range(4)]  # from image/class/text
    with pytest.raises(DataError, match="train"):
        load_record_split(tmp_path, "train")
    with pytest.raises(DataError, match="manifest"):
        read_manifest(tmp_path)


def test_mixed_image_sizes_are_a_data_error(tmp_path):
    records = [image_record_from_array(small_images(1, size)[0], 0) for size in (4, 5)]
    write_shards(tmp_path, "train", records, 1, progress=False)
    with pytest.raises(DataError, match=r"record 1.*\(5, 5, 3\)"):
        load_record_split(tmp_path, "train")


def test_inspect_reports_the_first_bad_record(tmp_path):
    _, records = make_records(5)
    path = tmp_path / "x.tfrecord"
    blobs = [encode_record(r) for r in records]
    blobs[3] = encode_record(ImageRecord(b"not an image", "png", 3, 6, 6))
    write_records(path, blobs)
    summary = inspect_records(path, verify=True)
    assert summary["records"] == 5 and summary["class_histogram"] == {i: 1 for i in range(5)}
    assert summary["first_bad"]["index"] == 3 and summary["first_bad"]["file"] == str(path)
    assert "cannot decode" in summary["first_bad"]["error"]
    plain = inspect_records(path)  # without verify: no data CRC, first image only
    assert plain["records"] == 5 and plain["layout"] == "image" and "first_bad" not in plain
    assert plain["features"]["image/encoded"] == "bytes"
    # a broken CRC stops that file; verify reports it, and without verify the parse raises
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 1  # inside the last record's data
    path.write_bytes(bytes(raw))
    summary = inspect_records(path, verify=True)
    assert summary["first_bad"]["index"] == 3 and summary["records"] == 4
    blobs[3] = blobs[2]
    write_records(path, blobs)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 1
    path.write_bytes(bytes(raw))
    summary = inspect_records(path, verify=True)
    assert summary["first_bad"]["index"] == 4 and "CRC32C" in summary["first_bad"]["error"]
    with pytest.raises(RecordError, match=r"x\.tfrecord record 4: .*malformed"):
        inspect_records(path)


# --- streaming --------------------------------------------------------------------------------


def labels_of(stream: RecordStream) -> list[int]:
    return [label for _, label in stream]


def test_stream_ranks_get_disjoint_shards_covering_all(tmp_path):
    _, directory = write_dir(tmp_path, 23, 5)
    seen = []
    for rank in range(2):
        stream = RecordStream(directory, "train", rank=rank, world_size=2, shuffle_buffer=8)
        got = labels_of(stream)
        assert len(got) == stream.num_records
        seen += got
    assert sorted(seen) == list(range(23))
    with pytest.raises(DataError, match="5 shard.*6 readers"):
        RecordStream(directory, "train", rank=0, world_size=6)


def test_stream_order_is_deterministic_per_seed_and_epoch(tmp_path):
    _, directory = write_dir(tmp_path, 40, 4)

    def order(seed: int, epoch: int) -> list[int]:
        return labels_of(RecordStream(directory, seed=seed, epoch=epoch, shuffle_buffer=10))

    assert order(1, 0) == order(1, 0)
    assert sorted(order(1, 0)) == list(range(40))
    assert order(1, 1) != order(1, 0)
    assert order(2, 0) != order(1, 0)
    stream = RecordStream(directory, seed=1, shuffle_buffer=10)
    stream.set_epoch(1)
    assert labels_of(stream) == order(1, 1)
    unshuffled = labels_of(RecordStream(directory, shuffle=False, cycle_length=1))
    assert unshuffled == list(range(40))
    # interleave: one record from each of cycle_length open shards in turn (shards of 10)
    interleaved = labels_of(RecordStream(directory, shuffle=False, cycle_length=2))
    assert interleaved[:4] == [0, 10, 1, 11]


@pytest.mark.parametrize("with_manifest", [True, False])
def test_stream_skip_take_split_is_fixed_across_epochs(tmp_path, with_manifest):
    _, directory = write_dir(tmp_path, 30, 4)  # shards of 7, 8, 7, 8
    if not with_manifest:
        (directory / "manifest.json").unlink()
    val, train = set(), set()
    for epoch in range(2):
        for rank in range(2):
            common = dict(split="train", rank=rank, world_size=2, epoch=epoch)
            val_stream = RecordStream(directory, take=9, **common)
            val |= set(labels_of(val_stream))
            assert val_stream.num_records == len(labels_of(val_stream))
            train |= set(labels_of(RecordStream(directory, skip=9, **common)))
    assert val == set(range(9)) and train == set(range(9, 30))
    middle = labels_of(RecordStream(directory, "train", skip=5, take=10, shuffle=False))
    assert sorted(middle) == list(range(5, 15))


def test_stream_batches_and_worker_processes(tmp_path):
    images, directory = write_dir(tmp_path, 11, 3)
    inline = RecordStream(directory, batch_size=4, seed=5)
    batches = list(inline)
    assert [b[0].shape for b in batches] == [(4, 6, 6, 3)] * 2 + [(3, 6, 6, 3)]
    labels = np.concatenate([b[1] for b in batches])
    assert labels.dtype == np.int64 and sorted(labels) == list(range(11))
    for x, y in batches:
        np.testing.assert_array_equal(x, images[y])
    assert len(list(RecordStream(directory, batch_size=4, drop_last=True))) == 2
    with RecordStream(directory, batch_size=4, seed=5, workers=2) as pooled:
        for (x1, y1), (x2, y2) in zip(pooled, batches, strict=True):
            np.testing.assert_array_equal(x1, x2)
            np.testing.assert_array_equal(y1, y2)


def test_manifest_is_json_with_the_documented_keys(tmp_path):
    _, directory = write_dir(tmp_path, 3, 1)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert set(manifest) == {"layout", "compression", "splits", "classes"}
    assert set(manifest["splits"]["train"][0]) == {"file", "records", "sha256"}


def test_tensorflow_reads_written_shards(tmp_path):
    tf = pytest.importorskip("tensorflow", reason="tensorflow is not installed")
    images, directory = write_dir(tmp_path, 4, 1)
    path = directory / read_manifest(directory)["splits"]["train"][0]["file"]
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }
    for i, raw in enumerate(tf.data.TFRecordDataset(str(path), "GZIP")):
        parsed = tf.io.parse_single_example(raw, spec)
        assert int(parsed["image/class/label"]) == i
        np.testing.assert_array_equal(tf.io.decode_png(parsed["image/encoded"]).numpy(), images[i])
