"""uvicorn in a background thread: how `probewatch run`, `probewatch review` and the tests serve an ASGI app."""

from __future__ import annotations

import threading
import time


class HTTPServerThread:
    """uvicorn in a background thread on a given (or ephemeral) port; `stop()` shuts it down."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", proxy_headers: bool = True
    ) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = host, self._sock.getsockname()[1]
        # proxy_headers=False: the peer address stays the TCP peer (the review app decides from it whether
        # an identity header comes from its trusted proxy; X-Forwarded-For must not rewrite it)
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off", proxy_headers=proxy_headers)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="probewatch-http", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> HTTPServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise RuntimeError(f"HTTP server did not start on {self.url}")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()
