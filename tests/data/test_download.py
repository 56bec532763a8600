"""download: checksums verified, a mismatch retried once then an error, network errors as
DataError; served by a local http.server, never the network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading

import pytest

from dawntrain.data.download import download
from dawntrain.errors import DataError

PAYLOAD = bytes(range(256)) * 40


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www over HTTP on localhost; yields (base url, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_download_with_matching_checksums(server, tmp_path):
    url, requests = server
    dest = tmp_path / "out" / "data.bin"
    md5, sha = hashlib.md5(PAYLOAD).hexdigest(), hashlib.sha256(PAYLOAD).hexdigest()
    assert download(f"{url}/data.bin", dest, md5=md5, sha256=sha.upper(), progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert requests == ["/data.bin"]
    assert leftovers(dest.parent) == ["data.bin"]


def test_mismatch_is_retried_once_then_an_error_and_the_file_is_removed(server, tmp_path):
    url, requests = server
    dest = tmp_path / "data.bin"
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download(f"{url}/data.bin", dest, md5=wrong, progress=False)
    message = str(info.value)
    assert str(dest) in message and wrong in message
    assert hashlib.md5(PAYLOAD).hexdigest() in message
    assert requests == ["/data.bin", "/data.bin"]
    assert leftovers(tmp_path) == ["www"]


def test_file_url(tmp_path):
    dest = tmp_path / "copy.bin"
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    download(src.as_uri(), dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_offline_and_http_errors_are_one_line_data_errors(server, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url in (f"http://127.0.0.1:{port}/data.bin", f"{server[0]}/missing.bin"):
        with pytest.raises(DataError, match=f"cannot download {url}") as info:
            download(url, tmp_path / "x.bin", progress=False)
        assert "\n" not in str(info.value)
    assert "HTTP 404" in str(info.value)
    assert leftovers(tmp_path) == ["www"]
