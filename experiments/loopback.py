"""An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread of this process (a context manager): the tool
services, proxies and scripted APIs that evaluations, benchmarks and tests stand up beside the code they drive.
The socket is bound before the server starts, so the port is ours from the start (no free-port race)."""
from __future__ import annotations

import asyncio
import socket
import threading
import time


class LocalServer:
    """`with LocalServer(app) as server: ... server.url ...`, or start() / stop()."""

    def __init__(self, app, host: str = "127.0.0.1"):
        import uvicorn

        self.app = app
        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # log_config=None: a server inside this process must not reconfigure (and close) the process's log handlers
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
                                timeout_keep_alive=5, log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"local-server-{self.port}")

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def start(self) -> LocalServer:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"local server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
