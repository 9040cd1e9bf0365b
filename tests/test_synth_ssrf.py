"""SSRF guard of the http crawl backend, over real sockets: a loopback canary must never be reached."""
import asyncio
import ipaddress

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from scripted_openai import LocalServer

from synth.tools import Tools
from synth.tools.ssrf import BlockedURL, Guard, blocked_reason


@pytest.fixture()
def canary():
    """A loopback server that records every request it receives."""
    app = FastAPI()
    app.state.hits = []

    @app.api_route("/{path:path}", methods=["GET", "POST", "HEAD"])
    async def record(path: str, request: Request):
        app.state.hits.append(path)
        return HTMLResponse("<html><body>CANARY SECRET</body></html>")

    with LocalServer(app) as server:
        server.hits = app.state.hits
        yield server


@pytest.fixture()
def redirector(canary):
    """An allow-listed site: a normal page, redirects into loopback/metadata, and slow/binary/huge answers."""
    app = FastAPI()
    app.state.hits = []

    @app.get("/page")
    async def page():
        app.state.hits.append("page")
        return HTMLResponse("<html><head><title>Test page</title><style>p{}</style></head><body>"
                            "<script>var secret = 1;</script><p>Visible text about tides.</p>"
                            "<p>Second paragraph.</p></body></html>")

    @app.get("/to-canary")
    async def to_canary():
        app.state.hits.append("to-canary")
        return RedirectResponse(f"{canary.url}/secret", status_code=302)

    @app.get("/to-metadata")
    async def to_metadata():
        return RedirectResponse("http://169.254.169.254/latest/meta-data/", status_code=301)

    @app.get("/hop")
    async def hop():
        return RedirectResponse("/page", status_code=307)

    @app.get("/binary")
    async def binary():
        return Response(b"\x00\x01" * 100, media_type="application/octet-stream")

    @app.get("/huge")
    async def huge():
        return Response("<p>" + "word " * 200_000 + "</p>", media_type="text/html")

    @app.get("/slow")
    async def slow():
        await asyncio.sleep(5)
        return HTMLResponse("<p>late</p>")

    with LocalServer(app) as server:
        server.hits = app.state.hits
        yield server


def _crawl(urls, allow=(), tmp_path=None, **crawl):
    async def main():
        tools = Tools.from_config({"cache": False, "cache_dir": str(tmp_path),
                                   "crawl": {"backend": "http", "allow": list(allow), **crawl}})
        try:
            return [await tools.crawl_page([url], goal="tides") for url in urls]
        finally:
            await tools.aclose()

    return asyncio.run(main())


def test_loopback_private_metadata_ipv6_and_file_urls_are_refused(canary, tmp_path):
    port = canary.port
    urls = [
        f"http://127.0.0.1:{port}/a", f"http://localhost:{port}/b", f"http://[::1]:{port}/c",
        f"http://0.0.0.0:{port}/d", f"http://[::ffff:127.0.0.1]:{port}/e", f"http://2130706433:{port}/f",
        "http://10.0.0.1/", "http://192.168.1.10/admin", "http://172.16.0.5/",
        "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://[fe80::1]/",
        "file:///etc/passwd", "gopher://127.0.0.1:70/", "ftp://example.org/x",
    ]
    results = _crawl(urls, tmp_path=tmp_path)
    for url, result in zip(urls, results):
        assert not result.ok and result.error, url
        assert result.pages == [], url
        assert "CANARY" not in result.observation, url
        assert "refused" in result.error or "not allowed" in result.error, (url, result.error)
    assert canary.hits == []


def test_redirect_from_an_allow_listed_server_to_loopback_is_refused(canary, redirector, tmp_path):
    allow = [f"127.0.0.1:{redirector.port}"]  # exactly the redirector, not the canary on another port
    page, to_canary, to_metadata, direct, hop = _crawl(
        [f"{redirector.url}/page", f"{redirector.url}/to-canary", f"{redirector.url}/to-metadata",
         f"{canary.url}/direct", f"{redirector.url}/hop"], allow=allow, tmp_path=tmp_path)
    # The allow-listed server is reachable, and its HTML becomes text without script/style.
    assert page.ok and page.pages[0].title == "Test page"
    assert "Visible text about tides." in page.pages[0].text and "secret" not in page.pages[0].text
    assert hop.ok and hop.pages[0].url == f"{redirector.url}/page"  # a relative redirect hop, re-vetted
    # The hop to the canary is refused after the redirector answered.
    assert redirector.hits.count("to-canary") == 1
    assert not to_canary.ok and f"127.0.0.1:{canary.port}" not in allow
    assert "refused" in to_canary.error and "loopback" in to_canary.error
    assert not to_metadata.ok and "169.254.169.254" in to_metadata.error
    assert not direct.ok
    assert canary.hits == []


def test_size_time_and_content_type_limits(redirector, tmp_path):
    allow = [f"127.0.0.1:{redirector.port}"]
    binary, huge, slow = _crawl([f"{redirector.url}/binary", f"{redirector.url}/huge", f"{redirector.url}/slow"],
                                allow=allow, tmp_path=tmp_path, max_bytes=10_000, timeout=1.0)
    assert not binary.ok and "application/octet-stream" in binary.error
    assert huge.ok and len(huge.pages[0].text) <= 10_000
    assert not slow.ok and "longer than 1 s" in slow.error


def test_guard_rules_and_allow_list_entries():
    assert blocked_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert blocked_reason(ipaddress.ip_address("2606:4700:4700::1111")) is None
    assert "metadata" in blocked_reason(ipaddress.ip_address("169.254.169.254"))
    assert "loopback" in blocked_reason(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert "multicast" in blocked_reason(ipaddress.ip_address("224.0.0.1"))
    assert blocked_reason(ipaddress.ip_address("100.64.1.1")) is not None
    guard = Guard(["127.0.0.1:8080", "10.1.0.0/16"])

    async def vet(url):
        try:
            return (await guard.vet(url)).ip
        except BlockedURL as error:
            return str(error)

    async def main():
        return [await vet(u) for u in ("http://127.0.0.1:8080/", "http://127.0.0.1:8081/",
                                       "http://10.1.2.3:9/", "http://10.2.0.1/")]

    allowed, other_port, in_network, outside = asyncio.run(main())
    assert allowed == "127.0.0.1" and in_network == "10.1.2.3"
    assert "refused" in other_port and "refused" in outside
    with pytest.raises(ValueError, match="allow-list entry"):
        Guard(["127.0.0.1:notaport"])
