"""Step 6's HTTP server (FastAPI): clip-retrieval's protocol, our richer query, thumbnails, the search page.

Every bad request is answered 4xx with a message; encoding and search run in the thread pool, so a slow or
aborted client holds only its own connection. Each route is one function over the app's state (the Searcher
and the ServerSettings).
"""

import datetime
import os
import socket
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from prompt_search import gallery
from prompt_search.access import allowed_hosts, host_refusal
from prompt_search.api_input import (
    INDICE_NAME,
    KnnRequest,
    SearchRequest,
    decode_base64,
    filter_ranges,
    read_json,
    validated,
)
from prompt_search.cli import UserError
from prompt_search.files import is_http_url
from prompt_search.query import Hit, combine
from prompt_search.service import Answer, BadInput, Searcher, split_negatives

STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_RESULT_DEPTH = 1000  # offset + num_results: deeper pages would search past MAX_CANDIDATES anyway
# The page's own script and style only (no inline script, no CDN); result images from here or the links' hosts.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class ServerSettings:
    """The settings of config.py the routes read (README: Search server)."""
    max_upload_bytes: int
    max_results: int
    dedupe_threshold: float
    max_negatives: int
    upload_timeout: float  # seconds a request's body may take
    hosts: frozenset[str] | None  # the Host names answered; None: any

    @classmethod
    def of(cls, cfg: SimpleNamespace) -> "ServerSettings":
        return cls(int(cfg.MAX_UPLOAD_MB * 2**20), cfg.MAX_NUM_RESULTS, cfg.DEDUPE_THRESHOLD, cfg.MAX_NEGATIVES,
                   cfg.UPLOAD_TIMEOUT, allowed_hosts(cfg.ALLOWED_HOSTS, cfg.SERVE_HOST))


def _state(request: Request) -> tuple[Searcher, ServerSettings]:
    return request.app.state.searcher, request.app.state.settings


def _result(hit: Hit, index: str) -> dict:
    extra = hit.extra
    date = extra.get("timestamp")
    return {"rank": hit.rank, "score": round(hit.score, 6), "id": hit.id, "prompt": hit.prompt, "url": hit.url,
            "alike": hit.alike, "index": index, "position": hit.position, "thumbnail": _thumbnail_url(hit, index),
            "width": extra.get("width"), "height": extra.get("height"), "seed": extra.get("seed"),
            "cfg_scale": extra.get("cfg_scale"), "steps": extra.get("num_steps"),
            "date": date.isoformat() if isinstance(date, datetime.datetime) else None}


def _thumbnail_url(hit: Hit, index: str) -> str:
    if hit.path:
        return f"/thumbnail/{index}/{hit.position}"
    return hit.url if is_http_url(hit.url) else ""


def _actions(hit: Hit, index: str) -> str:
    return (f'<div class="actions"><button type="button" class="copy">Copy prompt</button>'
            f'<button type="button" class="more" data-index="{index}" data-position="{hit.position}">'
            f'More like this</button></div>')


def _check_count(settings: ServerSettings, k: int, offset: int = 0) -> None:
    if not 1 <= k <= settings.max_results:
        raise BadInput(f"the number of results must be from 1 to {settings.max_results}, got {k}", 422)
    if offset + k > MAX_RESULT_DEPTH:
        raise BadInput(f"offset + num_results must be at most {MAX_RESULT_DEPTH}", 422)


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (0: a free port), for uvicorn to serve on; UserError when it cannot be had.

    Its proto is IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket whose proto says TCP,
    and without it each answer on a kept-alive connection waited ~40 ms (Nagle against the client's delayed ACK).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {error.strerror or error} (--SERVE_HOST, --SERVE_PORT; "
                        "port 0 takes a free one)") from None
    sock.listen(2048)  # connections wait in the backlog from now, while uvicorn starts
    return sock


async def guard_and_headers(request: Request, call_next):
    """Refuses a request to a name that is not the server's; adds the security and timing headers to every answer."""
    start = time.perf_counter()
    refusal = host_refusal(request, request.app.state.settings.hosts)
    response = JSONResponse({"error": refusal}, status_code=400) if refusal else await call_next(request)
    response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer"})
    app_ms = (time.perf_counter() - start) * 1e3  # the whole request inside the app, reading the body included
    response.headers["Server-Timing"] = ", ".join(filter(None, [response.headers.get("Server-Timing"),
                                                                f"app;dur={app_ms:.2f}"]))
    return response


async def user_error(request: Request, error: UserError) -> JSONResponse:
    return JSONResponse({"error": str(error)}, status_code=getattr(error, "status", 400))


async def http_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)


async def knn_service(request: Request) -> JSONResponse:
    """clip-retrieval's search: one of text, image or embedding_input, over images (modality image) or prompts."""
    searcher, settings = _state(request)
    query = validated(KnnRequest, await read_json(request, settings.max_upload_bytes, settings.upload_timeout))
    if query.indice_name != INDICE_NAME:
        raise BadInput(f"unknown indice_name {query.indice_name!r}: /indices-list has [{INDICE_NAME!r}]")
    if query.use_mclip:
        raise BadInput("use_mclip is not supported: the text is encoded by this index's own CLIP")
    if query.image_url:
        raise BadInput("image_url is refused: this server fetches no URL; send the image itself, base64, in image")
    if len([name for name in ("text", "image", "embedding_input") if getattr(query, name)]) != 1:
        raise BadInput("give exactly one of text, image and embedding_input")
    _check_count(settings, query.num_images)
    side = "images" if query.modality == "image" else "prompts"

    def run() -> Answer:
        if query.text:
            vector = searcher.encode_text(query.text, [])
        elif query.image:
            vector = searcher.encode_image(decode_base64(query.image, settings.max_upload_bytes))
        else:
            vector = combine([(np.asarray(query.embedding_input, dtype=np.float32), 1.0)])
        return searcher.search(side, vector, query.num_images, 0,
                               settings.dedupe_threshold if query.deduplicate else 1.0, {}, Answer([]))

    answer = await run_in_threadpool(run)
    return JSONResponse([{"id": hit.id, "similarity": hit.score, "url": hit.url, "caption": hit.prompt}
                         for hit in answer.hits])


async def api_search(request: Request) -> JSONResponse:
    """Our query (README: API): the weighted sum of its parts, filtered, paged, optionally as the page's cards."""
    searcher, settings = _state(request)
    query = validated(SearchRequest, await read_json(request, settings.max_upload_bytes, settings.upload_timeout))
    _check_count(settings, query.num_results, query.offset)
    positive, negatives = split_negatives(query.text)
    negatives += [text for text in query.negative if text.strip()]
    if len(negatives) > settings.max_negatives:  # each is one encoder run
        raise BadInput(f"at most {settings.max_negatives} negative phrases, got {len(negatives)}", 422)
    if not (positive or query.image or query.like):
        raise BadInput("give a text, an image or a result to search like")

    def run() -> Answer:
        answer = Answer([])
        start = time.perf_counter()
        parts = [(searcher.encode_text(positive, answer.notes), query.text_weight)] if positive else []
        parts += [(searcher.encode_text(text, answer.notes), -query.negative_weight) for text in negatives]
        if query.image:
            image = decode_base64(query.image, settings.max_upload_bytes)
            parts.append((searcher.encode_image(image), query.image_weight))
        if query.like:
            parts.append((searcher.stored_vector(query.like.index, query.like.position), 1.0))
        vector = combine(parts)
        answer.timings["encode"] = (time.perf_counter() - start) * 1e3
        return searcher.search(query.index, vector, query.num_results, query.offset,
                               settings.dedupe_threshold if query.dedupe else 1.0, filter_ranges(query.filters), answer)

    answer = await run_in_threadpool(run)
    body = {"index": query.index, "offset": query.offset, "notes": answer.notes,
            "negative": negatives, "timings_ms": {name: round(ms, 3) for name, ms in answer.timings.items()},
            "results": [_result(hit, query.index) for hit in answer.hits]}
    if query.cards:
        body["cards"] = "".join(gallery.card(hit, _thumbnail_url(hit, query.index), _actions(hit, query.index))
                                for hit in answer.hits)
    timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in answer.timings.items())
    return JSONResponse(body, headers={"Server-Timing": timing})


async def thumbnail(request: Request, index: str, position: str) -> Response:
    searcher, _ = _state(request)
    data = await run_in_threadpool(searcher.thumbnail, index, position)
    if data is None:
        return JSONResponse({"error": "no such thumbnail"}, status_code=404)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


async def indices_list() -> list[str]:
    return [INDICE_NAME]


async def health(request: Request) -> dict:
    searcher, _ = _state(request)
    return {"status": "ok", "model": searcher.model,
            "indices": {side: searched.index.ntotal for side, searched in searcher.sides.items()},
            "filters": {side: sorted(columns) for side, columns in searcher.columns.items()}}


async def gallery_css() -> PlainTextResponse:
    return PlainTextResponse(gallery.STYLE, media_type="text/css")  # results.html's card style, one copy


async def page() -> HTMLResponse:
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        return HTMLResponse(f.read())


def create_app(searcher: Searcher, settings: ServerSettings) -> FastAPI:
    """The server's routes over an opened Searcher."""
    app = FastAPI(title="prompt-search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.searcher, app.state.settings = searcher, settings
    app.middleware("http")(guard_and_headers)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.post("/knn-service")(knn_service)
    app.post("/api/search")(api_search)
    app.get("/thumbnail/{index}/{position}")(thumbnail)
    app.get("/indices-list")(indices_list)
    app.get("/health")(health)
    app.get("/gallery.css")(gallery_css)
    app.get("/")(page)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
