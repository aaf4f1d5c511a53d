"""A real HTTP server on 127.0.0.1, in a thread, serving in-memory files with scripted misbehaviour.

Faults are queued per path and used up one request at a time:
"500" answers 500, "drop" sends the headers of the whole file but closes the connection half-way,
"slow" waits a second before answering (longer than the tests' client timeout). Requests are
recorded with their Range header so tests can check that a download resumed.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Range")))
        if self.path in owner.redirects:
            target, headers = owner.redirects[self.path]
            self.send_response(302)
            self.send_header("Location", target)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        faults = owner.faults.get(self.path, [])
        fault = faults.pop(0) if faults else None
        if self.path not in owner.files:
            self.send_error(404)
            return
        if fault == "500":
            self.send_error(500)
            return
        if fault == "slow":
            time.sleep(1.0)
        self._send(owner.files[self.path], fault == "drop")

    def _send(self, data: bytes, drop: bool) -> None:
        start = 0
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes=") : -1])
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        for key, value in self.server.owner.headers.get(self.path, {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body[: len(body) // 2] if drop else body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass
        if drop:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FileServer


class FileServer:
    """Serves `files` (path -> bytes) at `url(path)`; `faults`, `headers`, `redirects` script its behaviour."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.redirects: dict[str, tuple[str, dict[str, str]]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
