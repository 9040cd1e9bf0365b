"""LLMClient's HTTP transport against a raw asyncio HTTP/1.1 server on loopback, which frames each answer as
its path says: Content-Length, chunked (with an extension and a trailer), read-to-close, keep-alive connections
the server drops behind the client, answers over the size limit, non-HTTP replies and silence."""
import asyncio
import json
import socket
import threading

import pytest

from synth.llm import Accounting, Endpoint, LLMClient, LLMError


def _chat(text: str) -> bytes:
    return json.dumps({"model": "raw", "choices": [{"message": {"role": "assistant", "content": text},
                                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()


class RawServer:
    """Answers POST /MODE/v1/chat/completions by MODE; counts accepted connections."""

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

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                mode = head[0].split()[1].split("/")[1]
                length = next(int(l.split(":")[1]) for l in head if l.lower().startswith("content-length"))
                request = json.loads(await reader.readexactly(length))
                payload = _chat(f"{mode} \u00e9 {request['messages'][-1]['content']}")
                if mode == "chunked":
                    half = len(payload) // 2
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 + b"%x;ext=1\r\n%s\r\n" % (half, payload[:half])
                                 + b"%x\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (len(payload) - half, payload[half:]))
                elif mode == "toclose":   # no length, no chunks: the body ends with the connection
                    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + payload)
                    await writer.drain()
                    return
                elif mode == "busy":
                    writer.write(b"HTTP/1.1 503 Busy\r\nretry-after: 0\r\nconnection: close\r\n\r\nbusy")
                    await writer.drain()
                    return
                elif mode in ("huge", "hugechunked"):
                    body = _chat("x" * 5000)
                    framing = b"content-length: %d\r\n\r\n%s" % (len(body), body) if mode == "huge" else \
                        b"transfer-encoding: chunked\r\n\r\n" + b"400\r\n%s\r\n" % (b"y" * 1024) * 5 + b"0\r\n\r\n"
                    writer.write(b"HTTP/1.1 200 OK\r\n" + framing)
                elif mode == "garbage":
                    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
                    await writer.drain()
                    return
                elif mode == "silent":
                    await asyncio.sleep(3)
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                await writer.drain()
                if mode == "drop":   # answered; now the kept-alive connection is closed behind the client
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass   # the client went away, or the server is stopping
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


def _client(url: str, **kw) -> LLMClient:
    return LLMClient([Endpoint(url, "m")], max_retries=kw.pop("max_retries", 0), backoff=0.01, **kw)


async def _ask(client: LLMClient, text: str, acct=None) -> str:
    return (await client.chat([{"role": "user", "content": text}], accounting=acct)).text


def test_framings_and_keep_alive(raw):
    async def main():
        client = _client(raw.url("length"))
        for i in range(6):   # kept alive: one connection serves every request
            assert await _ask(client, f"q{i}") == f"length \u00e9 q{i}"
        assert raw.connections == 1
        await client.aclose()

        for mode in ("chunked", "toclose"):
            client = _client(raw.url(mode))
            assert await _ask(client, "x") == f"{mode} \u00e9 x"
            await client.aclose()

        # The server drops the kept-alive connection after answering: the next call opens a new one and succeeds
        # at its first attempt.
        client = _client(raw.url("drop"))
        before = raw.connections
        assert await _ask(client, "a") == "drop \u00e9 a"
        await asyncio.sleep(0.1)
        acct = Accounting()
        assert await _ask(client, "b", acct) == "drop \u00e9 b"
        assert raw.connections - before == 2 and acct.retries == 0 and acct.calls == 1
        await client.aclose()

        # 20 calls in flight: one connection each, all kept for the next 20.
        client = LLMClient([Endpoint(raw.url("length"), "m", max_concurrency=20)], max_retries=0)
        before = raw.connections
        for _ in range(2):
            answers = await asyncio.gather(*(_ask(client, str(i)) for i in range(20)))
            assert answers == [f"length \u00e9 {i}" for i in range(20)]
        assert raw.connections - before == 20
        await client.aclose()

    asyncio.run(main())


def test_transport_failures_are_failed_attempts_with_their_reason(raw):
    async def main():
        # A 503 that closes the connection is retried on the (only) endpoint, which then answers the same way.
        acct = Accounting()
        with pytest.raises(LLMError, match="HTTP 503 busy") as error:
            await _ask(_client(raw.url("busy"), max_retries=2), "x", acct)
        assert error.value.attempts == 3 and acct.retries == 2 and acct.failures == 1
        for mode in ("huge", "hugechunked"):   # 5 KiB bodies against a 4 KiB limit, declared or not
            with pytest.raises(LLMError, match="over the 4096-byte limit"):
                await _ask(_client(raw.url(mode), max_response_bytes=4096), "x")
        assert await _ask(_client(raw.url("huge"), max_response_bytes=8192), "x") == "x" * 5000   # under it
        with pytest.raises(LLMError, match=r"connection error \(RemoteProtocolError"):
            await _ask(_client(raw.url("garbage")), "x")
        with pytest.raises(LLMError, match=r"timed out after 0.3 s"):
            await _ask(_client(raw.url("silent"), timeout=0.3), "x")
        with socket.socket() as s:   # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(LLMError, match=r"connection error \(ConnectError"):
            await _ask(_client(f"http://127.0.0.1:{port}/v1"), "x")

    asyncio.run(main())


def test_a_client_used_from_a_second_event_loop_opens_fresh_connections(raw):
    client = _client(raw.url("length"))
    for i in range(2):   # e.g. two asyncio.run calls of a script
        assert asyncio.run(_ask(client, str(i))) == f"length \u00e9 {i}"
    assert raw.connections == 2


@pytest.mark.parametrize("url", ["api.example.com/v1", "ftp://example.com/v1", "http:///v1"])
def test_a_base_url_that_is_not_http_is_refused_at_construction(url):
    with pytest.raises(ValueError, match="use an http:// or https:// URL"):
        Endpoint(url, "m")
