"""A local HTTP server for download tests (never the network): serves bytes by name, honours
`Range: bytes=N-` (or ignores it, like a server without range support), and can close the
connection after sending part of a response."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FileServer:
    """What the server serves and how; `requests` records (path, Range header or None)."""

    def __init__(self, base: str):
        self.base = base
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ranges = True  # False: answer a Range request with the whole file (200)
        self.drop_after: int | None = None  # bytes of a response sent before the connection closes
        self.drops = 0  # how many responses (the next ones) are cut so

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


def _handler(state: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            wanted = self.headers.get("Range")
            state.requests.append((self.path, wanted))
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            start, match = 0, re.fullmatch(r"bytes=(\d+)-", wanted or "")
            if match and state.ranges:
                start = int(match.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.drops and state.drop_after is not None:
                state.drops -= 1
                body = body[: state.drop_after]  # then the connection closes (HTTP/1.0)
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def serving() -> Iterator[FileServer]:
    """A FileServer on 127.0.0.1, running in a thread until the block ends."""
    state = FileServer("")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def dead_url(name: str) -> str:
    """A URL on a local port nothing listens on: what a download sees offline."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"
