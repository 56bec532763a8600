"""files.atomic_write and digests: whole files or none, a full disk named, temp files removed."""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from dawntrain import files
from dawntrain.errors import DataError, DawntrainError


def test_bytes_or_a_writer_and_missing_parents(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    assert files.atomic_write(path, b"one") == path
    assert path.read_bytes() == b"one"
    files.atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.bin"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    files.atomic_write(path, b"old")

    def broken(f):
        f.write(b"half")
        raise ValueError("source broke")

    with pytest.raises(ValueError, match="source broke"):
        files.atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_full_disk_raises_the_given_error(tmp_path, monkeypatch):
    path = tmp_path / "x.bin"
    files.atomic_write(path, b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(DawntrainError, match="disk is full.*intact"):
        files.atomic_write(path, b"new")
    with pytest.raises(DataError, match="x.bin: the disk is full"):
        files.atomic_write(path, b"new", error=DataError)
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_digests(tmp_path):
    path = tmp_path / "x.bin"
    data = os.urandom(3 * files.CHUNK_BYTES // 2)
    path.write_bytes(data)
    assert files.file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert files.digest(path, "md5") == hashlib.md5(data).hexdigest()
