"""cached_arrays: build once, memory-map after, rebuild a corrupt entry, never leave half an entry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dawntrain.data.cache import (
    CacheRebuiltWarning,
    cached_arrays,
    default_cache_dir,
    entries,
    remove,
)


class Builder:
    def __init__(self):
        self.calls = 0

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return {
            "images": np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3),
            "labels": np.array([3, 1], dtype=np.int64),
            "names": np.array(["cat", "dog"]),
        }


def test_second_call_loads_without_building(tmp_path):
    build = Builder()
    first = cached_arrays("k1", build, tmp_path, meta={"source": "x"})
    second = cached_arrays("k1", build, tmp_path)
    assert build.calls == 1
    for name, expected in Builder()().items():
        np.testing.assert_array_equal(first[name], expected)
        np.testing.assert_array_equal(second[name], expected)
        assert second[name].dtype == expected.dtype
    info = json.loads((tmp_path / "arrays" / "k1" / "meta.json").read_text())
    assert info["meta"] == {"source": "x"}
    assert info["arrays"]["images"] == {"shape": [2, 4, 4, 3], "dtype": "|u1"}


def test_arrays_are_copy_on_write(tmp_path):
    build = Builder()
    cached_arrays("k", build, tmp_path)["labels"][0] = 99
    assert cached_arrays("k", build, tmp_path)["labels"][0] == 3


@pytest.mark.parametrize("damage", ["truncate_npy", "garble_meta", "delete_npy", "old_format"])
def test_corrupt_entry_is_rebuilt_with_a_warning(tmp_path, damage):
    build = Builder()
    cached_arrays("k", build, tmp_path)
    entry = tmp_path / "arrays" / "k"
    if damage == "truncate_npy":
        data = (entry / "images.npy").read_bytes()
        (entry / "images.npy").write_bytes(data[: len(data) // 2])
    elif damage == "garble_meta":
        (entry / "meta.json").write_text("{not json")
    elif damage == "delete_npy":
        (entry / "labels.npy").unlink()
    else:
        info = json.loads((entry / "meta.json").read_text())
        (entry / "meta.json").write_text(json.dumps({**info, "format": 0}))
    with pytest.warns(CacheRebuiltWarning, match="rebuilding"):
        arrays = cached_arrays("k", build, tmp_path)
    assert build.calls == 2
    np.testing.assert_array_equal(arrays["images"], Builder()()["images"])
    cached_arrays("k", build, tmp_path)
    assert build.calls == 2


def test_failed_build_or_write_leaves_nothing(tmp_path):
    def build():
        raise RuntimeError("decoder crashed")

    with pytest.raises(RuntimeError):
        cached_arrays("k", build, tmp_path)

    def build_unsaveable():  # fails halfway through writing: the first array is already saved
        return {"ok": np.zeros(3), "objects": np.array([object()], dtype=object)}

    with pytest.raises(ValueError):
        cached_arrays("k", build_unsaveable, tmp_path)
    assert list((tmp_path / "arrays").iterdir()) == []


def test_temp_dirs_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    leftover = tmp_path / "arrays" / f".tmp-k-{dead}-abc123"
    leftover.mkdir(parents=True)
    (leftover / "images.npy").write_bytes(b"half")
    cached_arrays("k", Builder(), tmp_path)
    assert not leftover.exists()
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == ["k"]


def test_key_must_be_a_plain_name(tmp_path):
    with pytest.raises(ValueError, match="not a plain file name"):
        cached_arrays("../escape", Builder(), tmp_path)


def test_the_data_directory_is_dawntrain_data_else_xdg_cache_home_else_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAWNTRAIN_DATA", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dawntrain"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG spec: ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "dawntrain"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "dawntrain"
    monkeypatch.setenv("DAWNTRAIN_DATA", "~/data")
    assert default_cache_dir() == tmp_path / "home" / "data"


def test_entries_list_what_is_cached_and_remove_deletes_only_those(tmp_path):
    cached_arrays("old", Builder(), tmp_path, meta={"source": "/data/a.tar.gz"})
    cached_arrays("new", Builder(), tmp_path, meta={"source": "/data/b"})
    entry = tmp_path / "arrays" / "old"
    os.utime(entry / "meta.json", (time.time() - 3 * 86400,) * 2)
    (tmp_path / "arrays" / "new" / "meta.json").write_text("{garbled")
    (tmp_path / "arrays" / ".tmp-new-999999999-abc").mkdir()  # a dead process's write
    found = entries(tmp_path)
    assert [e.key for e in found] == ["old", "new"]  # oldest first
    assert [e.source for e in found] == ["/data/a.tar.gz", "?"]
    assert found[0].path == entry
    assert found[0].size == sum(f.stat().st_size for f in entry.iterdir())
    assert 3 * 86400 - 60 < found[0].age() < 3 * 86400 + 60 and found[1].age() < 60

    remove(tmp_path, found[:1])
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == ["new"]
    assert entries(tmp_path / "nowhere") == []
