"""The viewer's web application: `/` (the index), `/t/<key>` (one trace), `/compare?k=<key>&k=<key>` (traces side
by side), `/plot/<source>.png` (an RL run's curves)."""
from __future__ import annotations

import threading

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, Response

from experiments.view import pages, plots
from experiments.view.sources import Catalog


def create_app(catalog: Catalog) -> FastAPI:
    app = FastAPI(title="oresearcher trajectory viewer", docs_url=None, redoc_url=None, openapi_url=None)
    plot_cache: dict[int, tuple[tuple, bytes]] = {}
    plot_lock = threading.Lock()

    # Handlers are plain functions: FastAPI runs them in its thread pool, so reading a file never blocks the
    # event loop.
    @app.get("/", response_class=HTMLResponse)
    def index(q: str = "", outcome: str = "", start: str | None = Query(None, pattern=r"^\d+\.\d+\.\d+$")):
        for source in catalog.sources:   # an RL run still writing: pick up the lines it appended
            for part in source.parts:
                part.file.refresh()
        return pages.index_page(catalog, q, outcome, start)

    @app.get("/t/{key}", response_class=HTMLResponse)
    def trace(key: str):
        try:
            source, record = catalog.trace(key)
        except (KeyError, ValueError) as error:
            return _not_found(error)
        return pages.trace_page(catalog, source, record)

    @app.get("/compare", response_class=HTMLResponse)
    def compare(k: list[str] = Query(..., min_length=1, max_length=4)):
        try:
            traces = [catalog.trace(key)[1] for key in k]
        except (KeyError, ValueError) as error:
            return _not_found(error)
        return pages.compare_page(catalog, traces)

    @app.get("/plot/{index}.png")
    def plot(index: int):
        if not 0 <= index < len(catalog.sources) or catalog.sources[index].metrics_path is None:
            return Response(f"source {index} has no metrics.jsonl", status_code=404, media_type="text/plain")
        source = catalog.sources[index]
        stat = source.metrics_path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        with plot_lock:   # one drawing at a time; a run still writing gets a new plot when the file changes
            cached = plot_cache.get(index)
            if cached is None or cached[0] != stamp:
                png = plots.metrics_png(plots.read_metrics(source.metrics_path), source.name)
                cached = plot_cache[index] = (stamp, png)
        return Response(cached[1], media_type="image/png", headers={"Cache-Control": "no-cache"})

    return app


def _not_found(error: Exception) -> HTMLResponse:
    message = error.args[0] if error.args else str(error)   # a KeyError's str() would quote its message
    return HTMLResponse(pages.page("not found", f"<div class=wrap><p>{pages.escape(str(message))}</p>"
                                   '<p><a href="/">all records</a></p></div>'), status_code=404)
