"""Step 6's HTTP server (FastAPI): clip-retrieval's protocol, our richer query, thumbnails, the search page.

Every bad request is answered 4xx with a message; encoding and search run in the thread pool, so a slow or
aborted client holds only its own connection. Each route is one function over the app's state (the Searcher
and the ServerSettings).
"""

import inspect
import os
import socket
import time
import urllib.parse
import weakref
from dataclasses import replace

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from prompt_search.errors import UserError
from prompt_search.search import clip_protocol, gallery
from prompt_search.search.access import cors_headers, host_refusal, login_page, preflight
from prompt_search.search.answers import ServerSettings, check_count, picture, result, state
from prompt_search.search.api_input import ExportRequest, SearchRequest, read_body, read_json, validated
from prompt_search.search.core import Hit
from prompt_search.search.export import exported_files, zip_stream
from prompt_search.search.query_run import run_query
from prompt_search.search.service import BadInput, Searcher

STATIC = os.path.join(os.path.dirname(__file__), "static")
MAX_FORM_BYTES = 4096  # the login form: one token
EXPORT_NAME = "prompt-search-export.zip"
# The page's own script and style only (no inline script, no CDN); result images from here or the links' hosts.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _actions(hit: Hit, index: str) -> str:
    group = hit.extra.get("prompt_group")
    # one result per prompt: its prompt's images, by its group (a number: nothing of the data goes in as markup)
    images = (f'<button type="button" class="prompt-images" data-group="{int(group)}">All {hit.grouped + 1} images'
              "</button>" if hit.grouped and group is not None else "")
    return (f'<div class="actions"><button type="button" class="copy">Copy prompt</button>'
            f'<button type="button" class="more" data-index="{index}" data-position="{hit.position}">'
            f'More like this</button>{images}</div>')


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
    check_count(settings.max_results, query.num_results, query.offset)
    ran = await run_in_threadpool(run_query, searcher, query, settings.limits)
    answer = ran.answer
    body = {"index": query.index, "mode": ran.mode, "sort": query.sort, "group": query.group, "offset": query.offset,
            "notes": answer.notes,
            "negative": ran.negatives, "timings_ms": {name: round(ms, 3) for name, ms in answer.timings.items()},
            "results": [result(searcher, settings, hit, query.index) for hit in answer.hits]}
    if query.cards:
        marked = ran.keywords.all_words() if ran.mode != "semantic" else ()
        body["cards"] = "".join(gallery.card(hit, picture(searcher, hit, query.index), _actions(hit, query.index),
                                             marked, found_by=ran.mode == "hybrid") for hit in answer.hits)
    timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in answer.timings.items())
    return JSONResponse(body, headers={"Server-Timing": timing})


async def api_export(request: Request) -> StreamingResponse:
    """A query's results as a training set (README: Triage): kohya's layout as a zip, streamed as it is made."""
    searcher, settings = state(request)
    # JSON only: a page elsewhere may post a form or text/plain to a server on loopback without asking (no CORS
    # preflight), and an export spends the server's time fetching images
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise BadInput("an export's body is JSON: send Content-Type: application/json", 415)
    query = validated(ExportRequest, await read_json(request, settings.max_upload_bytes, settings.upload_timeout))
    check_count(settings.export.max_export, query.num_results, query.offset)
    _one_export_at_a_time(request)  # before the query, and again after it
    ran = await run_in_threadpool(run_query, searcher, query, settings.limits)
    _one_export_at_a_time(request)  # and set with no await between, by the event loop's one thread
    export = settings.export if query.strip_weights is None else replace(settings.export,
                                                                          export_strip_weights=query.strip_weights)
    stream = zip_stream(exported_files(searcher, query.index, ran.answer, export))
    request.app.state.export = weakref.ref(stream)
    return StreamingResponse(stream, media_type="application/zip",
                             headers={"Content-Disposition": f'attachment; filename="{EXPORT_NAME}"'})


def _one_export_at_a_time(request: Request) -> None:
    """A 429 while an export is being streamed: one whose stream (a generator) still exists and has not ended. A
    stream its client left unread is dropped with its response."""
    running = request.app.state.export and request.app.state.export()
    if running is not None and inspect.getgeneratorstate(running) != inspect.GEN_CLOSED:
        raise BadInput("an export is being made: the server makes one at a time; ask again when it has ended", 429)


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
    app.state.export = None  # a weak reference to the export being streamed (api_export)
    app.middleware("http")(guard_and_headers)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(HTTPException, http_error)
    app.get("/indices-list")(clip_protocol.indices_list)
    app.post("/knn-service")(clip_protocol.knn_service)
    app.post("/metadata")(clip_protocol.metadata)
    app.post("/api/search")(api_search)
    app.post("/api/export")(api_export)
    app.get("/thumbnail/{index}/{position}")(thumbnail)
    app.post("/login")(login)
    app.get("/login")(login_form)
    app.get("/health")(health)
    app.get("/gallery.css")(gallery_css)
    app.get("/")(page)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
