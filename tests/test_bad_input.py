"""Bad input ends `dawntrain train` with one line on stderr naming the input, and exit status 2."""

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dawntrain.cli import main
from dawntrain.data import download as download_module
from dawntrain.data.codec.record import image_record_from_array
from dawntrain.data.convert import write_manifest, write_shards
from dawntrain.data.readers import cifar
from dawntrain.errors import DataError

TINY = [
    *("--set", "width=4", "--epochs", "1", "--batch-size", "4", "--precision", "fp32"),
    *("--device", "cpu", "--quiet", "--no-sanity-check"),
]
SHARD = "train-00000-of-00001.tfrecord"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("DAWNTRAIN_DATA", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits on a shared machine
    yield
    torch.set_num_threads(threads)


def folder(root: Path, size: int = 32, per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(2):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def records(root: Path, labels: list[int], manifest: bool = True) -> Path:
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("train", "test"):
        recs = [
            image_record_from_array(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), label)
            for label in labels
        ]
        splits[split] = write_shards(root, split, recs, 1, compression="none", progress=False)
    if manifest:
        write_manifest(root, "image", splits, ["c0", "c1"])
    return root


def expect_error(capsys, args: list[str], *names: str) -> str:
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dawntrain: error: "), err
    for name in names:
        assert name in err[0]
    return err[0]


# Each case builds its input under tmp and returns (args, strings the message must contain).


def missing_path(tmp):
    return ["--data", str(tmp / "missing")], [str(tmp / "missing"), "no such file"]


def empty_class_folder(tmp):
    data = folder(tmp / "d")
    shutil.rmtree(data / "train" / "c1")
    (data / "train" / "c1").mkdir()
    return ["--data", str(data)], ["train/c1/", "holds no images", "add some"]


def train_and_test_classes_differ(tmp):
    data = folder(tmp / "d")
    (data / "test" / "c1").rename(data / "test" / "c9")
    return ["--data", str(data)], ["only in train: c1", "only in test: c9", "every class"]


def not_an_image(tmp):
    data = folder(tmp / "d")
    (data / "train" / "c0" / "x.png").write_text("not a picture")
    return ["--data", str(data)], [str(data / "train" / "c0" / "x.png"), "not an image"]


def truncated_image(tmp):
    data = folder(tmp / "d")
    image = data / "train" / "c0" / "1.png"
    image.write_bytes(image.read_bytes()[:150])
    return ["--data", str(data)], [str(image), "truncated"]


def unreadable_image(tmp):
    data = folder(tmp / "d")
    os.symlink(tmp / "gone.png", data / "train" / "c1" / "9.png")  # a broken link
    return ["--data", str(data)], [str(data / "train" / "c1" / "9.png"), "cannot read"]


def wrong_image_size_for_the_preset(tmp):
    data = folder(tmp / "d", size=16)
    return ["--data", str(data)], [str(data), "16x16", "expects 32x32", "--resize"]


def mixed_image_sizes(tmp):
    data = folder(tmp / "d")
    Image.new("RGB", (20, 24)).save(data / "test" / "c0" / "z.png")
    return ["--data", str(data)], [str(data / "test" / "c0" / "z.png"), "20x24", "--resize"]


def labels_out_of_range(tmp):
    data = records(tmp / "r", [0, 1, 5, 0, 1, 0, 1, 0])
    return ["--data", str(data)], [str(data), "train", "[0, 5]", "2 classes"]


def record_with_a_bad_crc(tmp):
    data = records(tmp / "r", [0, 1] * 4, manifest=False)
    raw = bytearray((data / SHARD).read_bytes())
    raw[12 + 40] ^= 1  # inside record 0's data (after its 12-byte length and length CRC)
    (data / SHARD).write_bytes(bytes(raw))
    return ["--data", str(data)], [str(data / SHARD), "record 0", "CRC32C", "re-write"]


def truncated_record_file(tmp):
    data = records(tmp / "r", [0, 1] * 4, manifest=False)
    (data / SHARD).write_bytes((data / SHARD).read_bytes()[:-100])
    return ["--data", str(data)], [str(data / SHARD), "truncated", "record 7"]


def manifest_sha256_mismatch(tmp):
    data = records(tmp / "r", [0, 1] * 4)
    other = records(tmp / "other", [1, 0] * 4)  # a valid shard, just not the one listed
    shutil.copy(other / SHARD, data / SHARD)
    return ["--data", str(data)], [str(data / SHARD), "sha256 differs from manifest.json"]


def unknown_key(tmp):
    return ["--set", "widht=3"], ["widht", "did you mean width"]


def unknown_key_in_a_file(tmp):
    (tmp / "c.toml").write_text('lr_schedul = "staircase"\n')
    return ["--config", str(tmp / "c.toml")], [str(tmp / "c.toml"), "did you mean lr_schedule"]


def wrong_type(tmp):
    return ["--set", "momentum=high"], ["'momentum' must be float", "'high'"]


def wrong_type_in_a_file(tmp):
    (tmp / "c.toml").write_text('width = "wide"\n')
    return ["--config", str(tmp / "c.toml")], [str(tmp / "c.toml"), "'width' must be int"]


def nonpositive_lr(tmp):
    return ["--set", "lr=0"], ["lr must be > 0"]


def negative_epochs(tmp):
    return ["--epochs", "-1"], ["epochs must be >= 0"]


def batch_larger_than_the_data(tmp):
    data = folder(tmp / "d")
    return ["--data", str(data), "--batch-size", "512"], ["batch_size 512", "8 images"]


def nothing_to_resume(tmp):
    return ["--resume", str(tmp / "run")], [str(tmp / "run"), "nothing to resume"]


def unreadable_checkpoint(tmp):
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "checkpoints" / "last.pt").write_bytes(b"torn")
    return ["--resume", str(tmp / "run")], [str(tmp / "run" / "checkpoints" / "last.pt")]


CASES = [
    missing_path,
    empty_class_folder,
    train_and_test_classes_differ,
    not_an_image,
    truncated_image,
    unreadable_image,
    wrong_image_size_for_the_preset,
    mixed_image_sizes,
    labels_out_of_range,
    record_with_a_bad_crc,
    truncated_record_file,
    manifest_sha256_mismatch,
    unknown_key,
    unknown_key_in_a_file,
    wrong_type,
    wrong_type_in_a_file,
    nonpositive_lr,
    negative_epochs,
    batch_larger_than_the_data,
    nothing_to_resume,
    unreadable_checkpoint,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_one_line_naming_it_and_exit_2(tmp_path, capsys, case):
    args, names = case(tmp_path)
    expect_error(capsys, [*TINY, *args, "--out", str(tmp_path / "out")], *names)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        main(["--debug", "train", "--data", str(tmp_path / "missing"), *TINY])


def test_a_checkpoint_of_another_config_lists_the_differences(tmp_path, capsys):
    data, out = folder(tmp_path / "d"), tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--out", str(out)]) == 0
    line = expect_error(
        capsys, ["--data", str(data), *TINY, "--set", "width=8", "--out", str(out), "--resume"]
    )
    assert "another config (width: checkpoint 4 vs now 8)" in line and "--resume RUN" in line


def test_non_rgb_images_are_converted_with_one_note(tmp_path, capsys):
    data = folder(tmp_path / "d")
    Image.new("L", (32, 32), 7).save(data / "train" / "c0" / "gray.png")
    Image.new("P", (32, 32)).save(data / "train" / "c0" / "palette.png")
    Image.new("RGBA", (32, 32)).save(data / "train" / "c1" / "alpha.png")
    Image.new("CMYK", (32, 32)).save(data / "test" / "c1" / "cmyk.jpg")
    assert main(["train", "--data", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err  # one note per split that had some
    assert err[0].startswith("dawntrain: note: converted 3 of 11 images to RGB")
    assert err[1].startswith("dawntrain: note: converted 1 of 9 images to RGB")


def test_resize_trains_on_images_of_another_size(tmp_path, capsys):
    data = folder(tmp_path / "d", size=20)
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), *TINY, "--resize", "--out", str(out)]) == 0
    assert "resize = true" in (out / "config.toml").read_text()
    assert capsys.readouterr().err == ""


def test_a_download_with_a_wrong_checksum_is_deleted_retried_once_then_an_error(
    tmp_path, capsys, monkeypatch
):
    junk = tmp_path / "fake-cifar.tar.gz"
    junk.write_bytes(b"not the archive")
    fake = dataclasses.replace(cifar.ARCHIVE, url=junk.as_uri(), size=None, sha256=None)
    monkeypatch.setattr(cifar, "ARCHIVE", fake)
    fetches = []
    real_fetch = download_module.fetch
    monkeypatch.setattr(
        download_module, "fetch", lambda *a, **k: fetches.append(a) or real_fetch(*a, **k)
    )
    assert main(["train", "--data", "cifar10", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(fetches) == 2 and "checksum mismatch" in "\n".join(err)
    errors = [line for line in err if line.startswith("dawntrain: error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and "Traceback" not in "\n".join(err)
    assert (
        "cifar-10-python.tar.gz" in errors[0] and "md5" in errors[0] and "tried twice" in errors[0]
    )
    assert not list((tmp_path / "cache").glob("cifar-10-python.tar.gz*"))
