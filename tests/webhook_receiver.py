"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 at a free port.

Besides a well-behaved receiver (that may fail its first posts with a status), it misbehaves the ways
a real endpoint can: ``mode="garbage"`` answers something that is not HTTP, ``"trickle"`` answers one
byte every ``trickle_seconds`` and never ends, ``"silent"`` reads the post and never answers, and
``status=429`` with ``retry_after`` asks the client to wait.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET_PATH = "/services/T000/B000/s3cr3t-token"
MODES = ("ok", "garbage", "trickle", "silent")


class Receiver:
    """A webhook receiver on 127.0.0.1: records JSON bodies, fails the first ``fail_first`` posts with
    ``status`` (and ``Retry-After: retry_after`` when given), or misbehaves as ``mode`` says on every post."""

    def __init__(
        self,
        fail_first: int = 0,
        status: int = 500,
        mode: str = "ok",
        retry_after: str | None = None,
        trickle_seconds: float = 2.0,
    ) -> None:
        assert mode in MODES, mode
        self.bodies: list[dict] = []
        self.attempts = 0
        self.fail_first, self.status, self.mode = fail_first, status, mode
        self.retry_after, self.trickle_seconds = retry_after, trickle_seconds
        self.closed = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.attempts += 1
                    attempt = receiver.attempts
                if receiver.mode != "ok":
                    getattr(self, f"misbehave_{receiver.mode}")()
                    return
                if attempt <= receiver.fail_first:
                    self.send_response(receiver.status)
                    if receiver.retry_after is not None:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.end_headers()
                    return
                receiver.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def misbehave_garbage(self) -> None:
                self.wfile.write(b"SSH-2.0-OpenSSH_9.6 not a web server\r\n\r\n")
                self.close_connection = True

            def misbehave_trickle(self) -> None:
                answer = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"." * 10_000
                for byte in answer:
                    if receiver.closed.wait(receiver.trickle_seconds):
                        break
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:  # the client gave up
                        break
                self.close_connection = True

            def misbehave_silent(self) -> None:
                receiver.closed.wait()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def texts(self) -> list[str]:
        return [b["text"] for b in self.bodies]

    def close(self) -> None:
        self.closed.set()  # a silent or trickling answer ends
        self.server.shutdown()
        self.server.server_close()
