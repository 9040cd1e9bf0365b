"""The page reader: HTML main content, PDF text and plain text over real HTTP on loopback (reached through a
test allow-list in the config; the guard's defaults stay closed), and the Jina-style reader backend."""
import asyncio

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from scripted_openai import LocalServer

from synth.tools import Tools

CLUTTERED = """<html><head><title>How coral reefs grow - Reef Site</title></head><body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop our store</a></li><li>Login</li></ul></nav>
<div class="cookie">We use cookies to improve your experience. Accept all cookies</div>
<main><article><h1>How coral reefs grow</h1>
<p>Coral reefs are built by colonies of tiny animals called polyps, which secrete calcium carbonate skeletons
over thousands of years.</p>
<p>Reef-building corals live in symbiosis with zooxanthellae algae that photosynthesise and feed the polyps,
which is why reefs need clear, sunlit water.</p>
<p>Rising sea temperatures cause bleaching, when the polyps expel their algae and turn white.</p>
</article></main>
<aside><h3>Related</h3><ul><li>Top 10 beaches</li><li>Subscribe to our newsletter</li></ul></aside>
<footer>Copyright 2026 Reef Site. All rights reserved. Privacy policy | Terms</footer></body></html>"""
CLUTTER = ("Shop our store", "Accept all cookies", "Subscribe to our newsletter", "All rights reserved")


def pdf_bytes(title: str, lines: list[str]) -> bytes:
    """A one-page PDF with `lines` in Helvetica and `title` in its metadata, written by hand (exact xref)."""
    text = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
               "/Contents 5 0 R >>",
               "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
               f"<< /Length {len(text)} >>\nstream\n{text}\nendstream",
               f"<< /Title ({title}) >>"]
    out, offsets = "%PDF-1.4\n", []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n" + "".join(f"{o:010d} 00000 n \n" for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 6 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    return out.encode("latin-1")


def site() -> FastAPI:
    app = FastAPI()

    @app.get("/reef")
    async def reef():
        return HTMLResponse(CLUTTERED)

    @app.get("/paper.pdf")
    async def paper():
        return Response(pdf_bytes("Tidal forces", ["Tides are caused by the gravity of the Moon.",
                                                   "Spring tides occur at new and full moon."]),
                        media_type="application/pdf")

    @app.get("/broken.pdf")
    async def broken():
        return Response(b"%PDF-1.4 this is not really a pdf", media_type="application/pdf")

    @app.get("/notes.txt")
    async def notes():
        return PlainTextResponse("Plain notes: neap tides are weaker.")

    return app


def crawl(urls, config, goal=""):
    async def main():
        tools = Tools.from_config(config)
        try:
            return await tools.crawl_page(urls, goal=goal)
        finally:
            await tools.aclose()
    return asyncio.run(main())


def test_html_main_content_pdf_and_plain_text_through_the_guard(tmp_path):
    with LocalServer(site()) as server:
        config = {"cache": False, "cache_dir": str(tmp_path),
                  "crawl": {"backend": "http", "allow": [f"127.0.0.1:{server.port}"], "summary_chars": 5000}}
        result = crawl([f"{server.url}/reef", f"{server.url}/paper.pdf", f"{server.url}/notes.txt"], config)
        # Without the allow-list entry the same loopback server is refused by the guard's defaults.
        refused = crawl([f"{server.url}/reef"], {"cache": False, "cache_dir": str(tmp_path),
                                                "crawl": {"backend": "http"}})
        broken = crawl([f"{server.url}/broken.pdf"], config)
    assert result.ok, result.error
    reef, paper, notes = result.pages
    assert "secrete calcium carbonate skeletons" in reef.text and "bleaching" in reef.text
    assert not [c for c in CLUTTER if c in reef.text], reef.text
    assert reef.title == "How coral reefs grow - Reef Site"
    assert paper.title == "Tidal forces"
    assert "Tides are caused by the gravity of the Moon." in paper.text and "Spring tides" in paper.text
    assert notes.text == "Plain notes: neap tides are weaker."
    assert "## [Tidal forces]" in result.observation
    assert not refused.ok and "loopback" in refused.error.lower()
    assert not broken.ok and "broken.pdf" in broken.error


def reader_service(seen: list) -> FastAPI:
    app = FastAPI()

    @app.get("/{target:path}")
    async def read(target: str, request: Request):
        seen.append((target, request.headers.get("authorization", ""), request.headers.get("accept", "")))
        if target.endswith("/text"):
            return PlainTextResponse("Title: Rendered app\n\nURL Source: x\n\nMarkdown Content:\nShown by script.")
        return JSONResponse({"code": 200, "data": {"title": "Coral app", "url": target,
                                                   "content": "Reefs are rendered by JavaScript here."}})

    return app


def test_reader_backend_sends_the_key_and_the_guard_vets_the_page_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_READER_KEY", "reader-secret")
    seen = []
    with LocalServer(reader_service(seen)) as reader, LocalServer(site()) as page_host:
        config = {"cache": False, "cache_dir": str(tmp_path),
                  "crawl": {"backend": "reader", "reader_url": reader.url, "reader_key_env": "TEST_READER_KEY",
                            "allow": [f"127.0.0.1:{page_host.port}"]}}
        page = f"{page_host.url}/reef"
        result = crawl([page, f"{page_host.url}/text"], config)
        blocked = crawl(["http://169.254.169.254/latest/meta-data/"], config)
    assert result.ok, result.error
    assert [p.title for p in result.pages] == ["Coral app", "Rendered app"]
    assert result.pages[0].text == "Reefs are rendered by JavaScript here."
    assert result.pages[1].text == "Shown by script."
    assert (page, "Bearer reader-secret", "application/json") in seen   # the page URL appended to the reader's
    assert not blocked.ok and len(seen) == 2   # the metadata address never reached the reader


def test_reader_config_errors_name_the_key():
    with pytest.raises(ValueError, match="tools.crawl.reader_url='ftp://x'"):
        Tools.from_config({"crawl": {"backend": "reader", "reader_url": "ftp://x"}})
    with pytest.raises(ValueError, match="'local', 'http' or 'reader'"):
        Tools.from_config({"crawl": {"backend": "browser"}})
