"""Step 6's HTTP server (FastAPI): clip-retrieval's protocol, our richer query, thumbnails, the search page.

Every bad request is answered 4xx with a message; encoding and search run in the thread pool, so a slow or
aborted client holds only its own connection. Each route is one function over the app's state (the Searcher
and the ServerSettings).
"""

import os
import socket
import time
import urllib.parse

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from prompt_search.errors import UserError
from prompt_search.index.keywords import parse_query
from prompt_search.search import clip_protocol, gallery
from prompt_search.search.access import cors_headers, host_refusal, login_page, preflight
from prompt_search.search.answers import ServerSettings, check_count, picture, result, state
from prompt_search.search.api_input import (
    SearchRequest,
    decode_base64,
    filter_ranges,
    read_body,
    read_json,
    search_mode,
    validated,
)
from prompt_search.search.core import Hit, combine
from prompt_search.search.hybrid import SORT_DEPTH, Wanted
from prompt_search.search.service import Answer, BadInput, Searcher, split_negatives

STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_FORM_BYTES = 4096  # the login form: one token
# The page's own script and style only (no inline script, no CDN); result images from here or the links' hosts.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _actions(hit: Hit, index: str) -> str:
    return (f'<div class="actions"><button type="button" class="copy">Copy prompt</button>'
            f'<button type="button" class="more" data-index="{index}" data-position="{hit.position}">'
            f'More like this</button></div>')


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
    """Answers only the server's own host names, CORS preflights of the allowed origins, and (with SERVE_TOKEN) only
    clients that have the token; adds the CORS, security and timing headers to every answer."""
    start = time.perf_counter()
    settings: ServerSettings = request.app.state.settings
    refusal = host_refusal(request, settings.hosts)
    if refusal:
        response = JSONResponse({"error": refusal}, status_code=400)
    else:
        response = (preflight(request, settings.cors) or settings.gate.refusal(request)
                    or await call_next(request))
        response.headers.update(cors_headers(request, settings.cors))
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


async def api_search(request: Request) -> JSONResponse:
    """Our query (README: API): the weighted sum of its parts, ranked in its mode, filtered, paged, optionally as the
    page's cards."""
    searcher, settings = state(request)
    query = validated(SearchRequest, await read_json(request, settings.max_upload_bytes, settings.upload_timeout))
    check_count(settings, query.num_results, query.offset)
    if (query.sort != "relevance" or query.group != "none") and query.offset + query.num_results > SORT_DEPTH:
        raise BadInput(f"a sorted or grouped query orders the first {SORT_DEPTH} results by relevance: offset + "
                       f"num_results must be at most {SORT_DEPTH}", 422)
    positive, negatives = split_negatives(query.text)
    negatives += [text for text in query.negative if text.strip()]
    if len(negatives) > settings.max_negatives:  # each is one encoder run
        raise BadInput(f"at most {settings.max_negatives} negative phrases, got {len(negatives)}", 422)
    if not (positive or query.image or query.like):
        raise BadInput("give a text, an image or a result to search like")
    notes: list[str] = []
    keywords = parse_query(positive, negatives)
    mode = search_mode(query, keywords, searcher.side(query.index).keywords, notes)

    def run() -> Answer:
        answer = Answer([], notes)
        start = time.perf_counter()
        vector = None if mode == "keyword" else combine(_vector_parts(searcher, settings, query, positive, negatives,
                                                                      answer.notes))
        answer.timings["encode"] = (time.perf_counter() - start) * 1e3
        wanted = Wanted(query.num_results, query.offset, settings.dedupe_threshold if query.dedupe else 1.0, mode,
                        keywords)
        return searcher.search(query.index, vector, wanted, filter_ranges(query.filters), answer, query.sort,
                               query.group)

    answer = await run_in_threadpool(run)
    body = {"index": query.index, "mode": mode, "sort": query.sort, "group": query.group, "offset": query.offset,
            "notes": answer.notes,
            "negative": negatives, "timings_ms": {name: round(ms, 3) for name, ms in answer.timings.items()},
            "results": [result(searcher, settings, hit, query.index) for hit in answer.hits]}
    if query.cards:
        marked = keywords.all_words() if mode != "semantic" else ()
        body["cards"] = "".join(gallery.card(hit, picture(searcher, hit, query.index), _actions(hit, query.index),
                                             marked, found_by=mode == "hybrid") for hit in answer.hits)
    timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in answer.timings.items())
    return JSONResponse(body, headers={"Server-Timing": timing})


def _vector_parts(searcher: Searcher, settings: ServerSettings, query: SearchRequest, positive: str,
                  negatives: list[str], notes: list[str]) -> list[tuple[np.ndarray, float]]:
    """The query's weighted unit vectors: its text, its negative texts (subtracted), its image, its liked result."""
    parts = [(searcher.encode_text(positive, notes), query.text_weight)] if positive else []
    parts += [(searcher.encode_text(text, notes), -query.negative_weight) for text in negatives]
    if query.image:
        parts.append((searcher.encode_image(decode_base64(query.image, settings.max_upload_bytes)), query.image_weight))
    if query.like:
        parts.append((searcher.stored_vector(query.like.index, query.like.position), 1.0))
    return parts


async def thumbnail(request: Request, index: str, position: str) -> Response:
    searcher, _ = state(request)
    data = await run_in_threadpool(searcher.thumbnail, index, position)
    if data is None:
        return JSONResponse({"error": "no such thumbnail"}, status_code=404)
    # A live index's fold renumbers positions: the browser asks again each time (the server's own cache is by file)
    cache = "no-cache" if searcher.live else "max-age=3600"
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})


async def health(request: Request) -> dict:
    searcher, _ = state(request)
    view = searcher.view
    return {"status": "ok", "model": searcher.model,
            "indices": {side: opened.searched.index.ntotal for side, opened in view.items()},
            "filters": {side: sorted(opened.columns) for side, opened in view.items()},
            **({"watch": _watch_state(request)} if getattr(request.app.state, "watch", None) else {})}


def _watch_state(request: Request) -> dict:
    """serve.py --WATCH's state: its folder, files and errors only for a client the token lets in (/health is open)."""
    settings: ServerSettings = request.app.state.settings
    return request.app.state.watch(private=settings.gate.admits(request))


async def gallery_css() -> PlainTextResponse:
    return PlainTextResponse(gallery.STYLE, media_type="text/css")  # results.html's card style, one copy


async def page() -> HTMLResponse:
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        return HTMLResponse(f.read())


async def login(request: Request) -> Response:
    """The login form's POST (token=...): the session cookie and back to the page, or the form again."""
    form = await _read_form(request)
    return request.app.state.settings.gate.login(request, form.get("token", [""])[0])


async def login_form() -> HTMLResponse:
    return login_page("", 200)


async def _read_form(request: Request) -> dict[str, list[str]]:
    """A small form body (application/x-www-form-urlencoded), bounded in size and time as any request's."""
    settings: ServerSettings = request.app.state.settings
    raw = await read_body(request, MAX_FORM_BYTES, settings.upload_timeout, "the login form is too large")
    try:
        return urllib.parse.parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
    except ValueError:  # more fields than a login form has
        raise BadInput("the login form has one field, token") from None


def create_app(searcher: Searcher, settings: ServerSettings) -> FastAPI:
    """The server's routes over an opened Searcher."""
    app = FastAPI(title="prompt-search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.searcher, app.state.settings = searcher, settings
    app.middleware("http")(guard_and_headers)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.get("/indices-list")(clip_protocol.indices_list)
    app.post("/knn-service")(clip_protocol.knn_service)
    app.post("/metadata")(clip_protocol.metadata)
    app.post("/api/search")(api_search)
    app.get("/thumbnail/{index}/{position}")(thumbnail)
    app.post("/login")(login)
    app.get("/login")(login_form)
    app.get("/health")(health)
    app.get("/gallery.css")(gallery_css)
    app.get("/")(page)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
