"""download: resumed with Range from a .part (in one call and across calls), size and checksums
checked before the file appears, a mismatch retried once then an error that leaves nothing,
network errors as one-line DataErrors, progress lines or a bar; served by a local http.server
(tests/local_http.py), never the network."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import io

import pytest

from dawntrain.data.download import RESUME_TRIES, Archive, download, download_archive
from dawntrain.errors import DataError
from local_http import dead_url, serving

PAYLOAD = bytes(range(256)) * 40
MD5, SHA256 = hashlib.md5(PAYLOAD).hexdigest(), hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with serving() as state:
        state.files["data.bin"] = PAYLOAD
        yield state


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_with_matching_checksums(server, tmp_path):
    dest = tmp_path / "out" / "data.bin"
    got = download(server.url("data.bin"), dest, md5=MD5, sha256=SHA256.upper(), progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", None)]
    assert leftovers(dest.parent) == ["data.bin"]


def test_mismatch_is_retried_once_then_an_error_and_nothing_is_left(server, tmp_path):
    dest = tmp_path / "data.bin"
    wrong = "0" * 64
    with pytest.raises(DataError) as info:
        download(server.url("data.bin"), dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert str(dest) in message and wrong in message and SHA256 in message
    assert "tried twice" in message
    assert server.requests == [("/data.bin", None), ("/data.bin", None)]
    assert leftovers(tmp_path) == []  # neither data.bin nor data.bin.part


def test_a_dropped_connection_is_resumed_with_range_in_the_same_call(server, tmp_path):
    server.drop_after, server.drops = 3000, 2
    dest = tmp_path / "data.bin"
    download(server.url("data.bin"), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [
        ("/data.bin", None),
        ("/data.bin", "bytes=3000-"),
        ("/data.bin", "bytes=6000-"),
    ]
    assert leftovers(tmp_path) == ["data.bin"]


def test_a_part_left_by_an_earlier_call_is_resumed(server, tmp_path):
    server.drop_after, server.drops = 1000, 10**6  # every response is cut after 1000 bytes
    dest = tmp_path / "data.bin"
    with pytest.raises(DataError, match="run the command again to resume") as info:
        download(server.url("data.bin"), dest, sha256=SHA256, progress=False)
    assert str(dest) + ".part" in str(info.value)
    kept = (tmp_path / "data.bin.part").read_bytes()
    assert kept == PAYLOAD[: 1000 * (RESUME_TRIES + 1)]
    assert not dest.exists()

    server.drops, server.requests[:] = 0, []
    download(server.url("data.bin"), dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", f"bytes={len(kept)}-")]
    assert leftovers(tmp_path) == ["data.bin"]


def test_a_server_without_range_support_sends_everything_again(server, tmp_path):
    server.ranges = False
    (tmp_path / "data.bin.part").write_bytes(b"junk that is not a prefix")
    download(server.url("data.bin"), tmp_path / "data.bin", md5=MD5, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=25-")]  # asked, answered with all of it


def test_a_part_that_is_not_a_prefix_is_refused_then_downloaded_whole(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(b"\xff" * 100)
    download(server.url("data.bin"), tmp_path / "data.bin", sha256=SHA256, progress=False)
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD
    assert server.requests == [("/data.bin", "bytes=100-"), ("/data.bin", None)]


def test_a_complete_part_is_checked_without_downloading_it_again(server, tmp_path):
    (tmp_path / "data.bin.part").write_bytes(PAYLOAD)
    download(server.url("data.bin"), tmp_path / "data.bin", md5=MD5, progress=False)
    assert server.requests == [("/data.bin", f"bytes={len(PAYLOAD)}-")]  # 416: nothing more
    assert leftovers(tmp_path) == ["data.bin"]

    (tmp_path / "other.part").write_bytes(PAYLOAD)  # with a known size, no request at all
    server.requests[:] = []
    download(server.url("data.bin"), tmp_path / "other", md5=MD5, size=len(PAYLOAD))
    assert server.requests == [] and (tmp_path / "other").read_bytes() == PAYLOAD


def test_a_wrong_size_is_named_as_such(server, tmp_path):
    with pytest.raises(DataError, match=f"the size of .* is {len(PAYLOAD)}, expected 99"):
        download(server.url("data.bin"), tmp_path / "d.bin", size=99, progress=False)
    assert leftovers(tmp_path) == []


def test_file_url(tmp_path):
    dest = tmp_path / "copy.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    download(src.as_uri(), dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_offline_and_http_errors_are_one_line_data_errors(server, tmp_path):
    for url in (dead_url("data.bin"), server.url("missing.bin")):
        with pytest.raises(DataError, match=f"cannot download {url}") as info:
            download(url, tmp_path / "x.bin", progress=False)
        assert "\n" not in str(info.value)
    assert "HTTP 404" in str(info.value)
    assert leftovers(tmp_path) == []  # no empty .part either


def test_a_part_another_process_writes_is_left_alone(server, tmp_path):
    part = tmp_path / "data.bin.part"
    part.write_bytes(PAYLOAD[:10])
    with open(part, "rb+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DataError, match="another process is downloading"):
            download(server.url("data.bin"), tmp_path / "data.bin", progress=False)
    assert server.requests == [] and part.read_bytes() == PAYLOAD[:10]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_line_every_few_percent_else_a_bar(tmp_path):
    big = bytes(range(256)) * (3 << 12)  # 3 MiB: three 1 MiB reads
    with serving() as server:
        server.files["big.bin"] = big
        log = io.StringIO()
        download(server.url("big.bin"), tmp_path / "a.bin", size=len(big), stream=log)
        lines = log.getvalue().splitlines()
        assert lines[0] == f"downloading {server.url('big.bin')} to {tmp_path / 'a.bin'}"
        assert lines[1:] == [
            "a.bin: 33% (1.0 MiB of 3.0 MiB)",
            "a.bin: 66% (2.0 MiB of 3.0 MiB)",
            "a.bin: 100% (3.0 MiB of 3.0 MiB)",
        ]
        terminal = Terminal()
        download(server.url("big.bin"), tmp_path / "b.bin", stream=terminal)
        assert "b.bin: 100%|" in terminal.getvalue() and "downloading" not in terminal.getvalue()
        quiet = io.StringIO()
        download(server.url("big.bin"), tmp_path / "c.bin", progress=False, stream=quiet)
        assert quiet.getvalue() == ""


def test_download_archive_checks_a_copy_that_is_there_and_says_where_one_goes(server, tmp_path):
    archive = Archive("fake", server.url("data.bin"), "data.bin", len(PAYLOAD), MD5, SHA256)
    assert download_archive(archive, tmp_path / "d", progress=False).read_bytes() == PAYLOAD
    assert download_archive(archive, tmp_path / "d", progress=False)  # there: checked, kept
    assert len(server.requests) == 1

    (tmp_path / "d" / "data.bin").write_bytes(PAYLOAD[:-1] + b"?")
    with pytest.raises(DataError, match="its sha256 is .* delete it and download it again"):
        download_archive(archive, tmp_path / "d", progress=False)

    offline = dataclasses.replace(archive, url=dead_url("data.bin"))
    with pytest.raises(DataError) as info:
        download_archive(offline, tmp_path / "e", progress=False)
    message = str(info.value)
    assert "cannot download" in message and "`dawntrain data download fake --to DIR`" in message
    assert f"copy data.bin into {tmp_path / 'e'}" in message and "DAWNTRAIN_DATA" in message
    assert "--data PATH/data.bin" in message and "\n" not in message
