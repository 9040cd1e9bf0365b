"""A small keep-alive HTTP/1.1 client on asyncio streams, for the LLM client's JSON POSTs.

    pool = ConnectionPool("https://api.example.com/v1", tls=ssl.create_default_context())
    status, headers, body = await pool.post("/chat/completions", b'{"model": ...}',
                                            {"authorization": "Bearer ..."}, timeout=120.0)
    await pool.aclose()

Why not httpx here: with 64 questions in flight the synthesizer makes hundreds of concurrent chat calls, and
httpx's stack (httpcore's pool, anyio streams, h11) costs about 1 ms of CPU per call, more than everything else
the synthesizer does per call together; this client costs a fraction of that. It does only what an
OpenAI-compatible endpoint needs: POST with a Content-Length body over http or https, responses framed by
Content-Length, chunked transfer coding or connection close, keep-alive reuse (a reused connection the server
has meanwhile closed is retried once on a fresh one), no redirects, no proxies, no compression.

Errors: `TransportError` (connection refused/reset, malformed response) and `TimeoutError` (the whole exchange
exceeded `timeout` seconds). The tools' crawler and search backends keep httpx (redirect checks, streaming).
"""
from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

MAX_HEADER_BYTES = 65536
MAX_BODY_BYTES = 64 * 1024 * 1024


class TransportError(Exception):
    """The exchange failed below HTTP (connection, framing); `reason` says how."""


class _Stale(Exception):
    """A reused keep-alive connection was closed by the server before it answered."""


class ConnectionPool:
    """Keep-alive connections to one origin (scheme://host:port), reused most recent first."""

    def __init__(self, base_url: str, *, tls: ssl.SSLContext | None = None, max_idle: int = 256):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint base_url={base_url!r}: use an http:// or https:// URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        default_port = 443 if parts.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if self.port == default_port else f"{host}:{self.port}"
        self.max_idle = max_idle
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._loop = None   # the event loop the idle connections belong to

    async def post(self, path: str, body: bytes, headers: dict[str, str], *, timeout: float
                   ) -> tuple[int, dict[str, str], bytes]:
        """POST `body` to prefix + path -> (status, lower-cased headers, body bytes)."""
        head = [f"POST {self.prefix}{path} HTTP/1.1", f"host: {self.host_header}",
                "content-type: application/json", f"content-length: {len(body)}", "accept-encoding: identity",
                "connection: keep-alive"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        if self._loop is not asyncio.get_running_loop():   # connections of an earlier loop cannot be used here
            self._idle.clear()
            self._loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while self._idle:
                reader, writer = self._idle.pop()
                if reader.at_eof() or writer.is_closing():
                    writer.close()
                    continue
                try:
                    return await self._exchange(reader, writer, request, reused=True)
                except _Stale:
                    continue
            try:
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None,
                    limit=MAX_HEADER_BYTES)
            except (OSError, ssl.SSLError) as error:
                raise TransportError(f"cannot connect to {self.host}:{self.port} ({type(error).__name__})") from None
            try:
                return await self._exchange(reader, writer, request, reused=False)
            except _Stale:
                raise TransportError("the server closed the connection without answering") from None

    async def _exchange(self, reader, writer, request: bytes, reused: bool):
        """Send one request and read its response; the connection goes back to the pool when it stays open."""
        keep = False
        try:
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
            except (ConnectionError, OSError, ssl.SSLError) as error:
                raise _Stale() if reused else TransportError(f"connection lost ({type(error).__name__})") from None
            if not status_line:
                raise _Stale() if reused else TransportError("the server closed the connection without answering")
            status, headers = await self._head(reader, status_line)
            body = await self._body(reader, headers)
            keep = headers.get("connection", "").lower() != "close" and not status_line.startswith(b"HTTP/1.0")
            return status, headers, body
        except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) \
                as error:
            raise TransportError(f"connection lost mid-response ({type(error).__name__})") from None
        finally:
            if keep and len(self._idle) < self.max_idle:
                self._idle.append((reader, writer))
            else:
                writer.close()

    @staticmethod
    async def _head(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, dict[str, str]]:
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP/1.x response: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        size = 0
        while True:
            line = await reader.readline()
            size += len(line)
            if size > MAX_HEADER_BYTES:
                raise TransportError("response headers larger than 64 KiB")
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks, total = [], 0
            while True:
                size_line = await reader.readline()
                try:
                    size = int(size_line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise TransportError(f"bad chunk size line {size_line[:40]!r}") from None
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):   # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise TransportError("response body larger than 64 MiB")
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise TransportError(f"bad content-length {headers['content-length'][:40]!r}") from None
            if not 0 <= length <= MAX_BODY_BYTES:
                raise TransportError(f"response content-length {length} out of range")
            return await reader.readexactly(length)
        headers["connection"] = "close"   # framed by the end of the connection
        body = await reader.read(MAX_BODY_BYTES + 1)
        rest = body
        while rest and len(body) <= MAX_BODY_BYTES:
            rest = await reader.read(MAX_BODY_BYTES + 1 - len(body))
            body += rest
        if len(body) > MAX_BODY_BYTES:
            raise TransportError("response body larger than 64 MiB")
        return body

    async def aclose(self) -> None:
        while self._idle:
            _, writer = self._idle.pop()
            writer.close()
