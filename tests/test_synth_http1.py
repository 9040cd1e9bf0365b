"""synth/http1.py against a raw asyncio HTTP server on loopback: every response framing (Content-Length,
chunked, read-to-close), keep-alive reuse, a server that drops idle connections, timeouts and non-HTTP replies."""
import asyncio
import json
import threading

import pytest

from synth.http1 import ConnectionPool, TransportError


class RawServer:
    """Answers each request by the mode in its path; counts accepted connections."""

    def __init__(self):
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start():
            self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()

        self.thread = threading.Thread(target=lambda: (self.loop.run_until_complete(start()),
                                                       self.loop.run_forever()), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                path = lines[0].split()[1]
                length = next(int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length"))
                body = json.loads(await reader.readexactly(length))
                payload = json.dumps({"path": path, "echo": body, "host": next(
                    l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("host"))}).encode()
                if path.endswith("/chunked"):
                    half = len(payload) // 2
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" +
                                 b"%x;ext=1\r\n%s\r\n" % (half, payload[:half]) +
                                 b"%x\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (len(payload) - half, payload[half:]))
                elif path.endswith("/close"):
                    writer.write(b"HTTP/1.1 503 Busy\r\nretry-after: 2\r\nconnection: close\r\n\r\n" + payload)
                    await writer.drain()
                    return
                elif path.endswith("/garbage"):
                    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                    await writer.drain()
                    return
                elif path.endswith("/slow"):
                    await asyncio.sleep(2)
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                await writer.drain()
                if path.endswith("/drop"):   # answers, then closes the kept-alive connection behind the client
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def stop(self):
        async def shutdown():
            self.server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def raw():
    server = RawServer()
    yield server
    server.stop()


def test_framings_keep_alive_and_errors(raw):
    async def main():
        pool = ConnectionPool(f"http://127.0.0.1:{raw.port}/v1/")
        status, headers, body = await pool.post("/length", b'{"a": 1}', {"authorization": "Bearer k"}, timeout=5)
        assert status == 200 and json.loads(body) == {"path": "/v1/length", "echo": {"a": 1},
                                                      "host": f"127.0.0.1:{raw.port}"}
        for _ in range(5):   # kept alive: the same connection serves every request
            assert (await pool.post("/length", b"[]", {}, timeout=5))[0] == 200
        assert raw.connections == 1
        status, _, body = await pool.post("/chunked", b'"\xc3\xa9"', {}, timeout=5)
        assert status == 200 and json.loads(body)["echo"] == "\u00e9" and raw.connections == 1
        status, headers, body = await pool.post("/close", b"1", {}, timeout=5)   # framed by the close
        assert status == 503 and headers["retry-after"] == "2" and json.loads(body)["echo"] == 1
        assert (await pool.post("/length", b"2", {}, timeout=5))[0] == 200 and raw.connections == 2

        # The server drops the kept-alive connection after answering: the next request retries on a new one.
        assert (await pool.post("/drop", b"3", {}, timeout=5))[0] == 200
        await asyncio.sleep(0.1)
        assert (await pool.post("/length", b"4", {}, timeout=5))[0] == 200
        assert raw.connections == 3

        with pytest.raises(TransportError, match="not an HTTP/1.x response"):
            await pool.post("/garbage", b"5", {}, timeout=5)
        with pytest.raises(TimeoutError):
            await pool.post("/slow", b"6", {}, timeout=0.3)
        await pool.aclose()

        concurrent = ConnectionPool(f"http://127.0.0.1:{raw.port}/v1")
        before = raw.connections
        results = await asyncio.gather(*(concurrent.post("/length", b"%d" % i, {}, timeout=5) for i in range(20)))
        assert [json.loads(b)["echo"] for _, _, b in results] == list(range(20))
        assert raw.connections - before == 20   # one connection per request in flight, all kept for reuse
        await asyncio.gather(*(concurrent.post("/length", b"0", {}, timeout=5) for i in range(20)))
        assert raw.connections - before == 20
        await concurrent.aclose()

    asyncio.run(main())


def test_refused_connection_and_bad_urls():
    async def main():
        import socket
        with socket.socket() as s:   # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(TransportError, match=f"cannot connect to 127.0.0.1:{port}"):
            await ConnectionPool(f"http://127.0.0.1:{port}").post("/x", b"{}", {}, timeout=5)

    asyncio.run(main())
    for url in ("api.example.com/v1", "ftp://example.com/v1", "http:///v1"):
        with pytest.raises(ValueError, match="base_url"):
            ConnectionPool(url)


def test_a_pool_used_from_a_second_event_loop_opens_fresh_connections(raw):
    pool = ConnectionPool(f"http://127.0.0.1:{raw.port}")
    for _ in range(2):   # e.g. two asyncio.run calls of a script
        assert asyncio.run(pool.post("/length", b"1", {}, timeout=5))[0] == 200
    assert raw.connections == 2
