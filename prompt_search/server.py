"""Step 6's HTTP server (FastAPI): clip-retrieval's protocol, our richer query, thumbnails, the search page.

Every bad request is answered 4xx with a message; encoding and search run in the thread pool, so a slow or
aborted client holds only its own connection.
"""

import base64
import binascii
import datetime
import json
import os
import socket
import time
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from prompt_search import gallery
from prompt_search.cli import UserError
from prompt_search.files import is_http_url
from prompt_search.query import Hit, combine
from prompt_search.service import FILTER_COLUMNS, Answer, BadInput, Bound, Searcher, split_negatives

STATIC = os.path.join(os.path.dirname(__file__), "static")
INDICE_NAME = "prompt-search"  # the one name /indices-list gives; clip-retrieval's modality picks images or prompts
MAX_RESULT_DEPTH = 1000  # offset + num_results: deeper pages would search past MAX_CANDIDATES anyway
# The page's own script and style only (no inline script, no CDN); result images from here or the links' hosts.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data: http: https:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body. Its other fields (num_result_ids, use_safety_model,
    use_violence_detector, aesthetic_score, aesthetic_weight) are accepted and ignored."""
    model_config = ConfigDict(extra="ignore")
    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: Literal["image", "text"] = "image"
    indice_name: str = INDICE_NAME
    num_images: int = 40
    deduplicate: bool = False
    use_mclip: bool = False


class Range(BaseModel):
    """Inclusive bounds: numbers, or decimal strings (as the answer gives seeds); integers are kept exact."""
    model_config = ConfigDict(extra="forbid")
    min: int | float | None = None
    max: int | float | None = None


class DateRange(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: datetime.date | None = Field(None, alias="from")
    to: datetime.date | None = None


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: Range | None = None
    height: Range | None = None
    steps: Range | None = None
    cfg_scale: Range | None = None
    seed: Range | None = None
    date: DateRange | None = None


class Like(BaseModel):
    index: Literal["images", "prompts"]
    position: int


class SearchRequest(BaseModel):
    """Our query: text (with "-negative" phrases), negative texts, an image (base64) and a result's vector
    ("more like this"), each weighted; the weighted sum is searched."""
    model_config = ConfigDict(extra="forbid")
    text: str = ""
    negative: list[str] = []
    image: str | None = None
    like: Like | None = None
    text_weight: float = 1.0
    image_weight: float = 1.0
    negative_weight: float = 1.0
    index: Literal["images", "prompts"] = "images"
    num_results: int = Field(20, ge=1)
    offset: int = Field(0, ge=0)
    dedupe: bool = True
    filters: Filters = Filters()
    cards: bool = False  # also the results as the page's card markup, escaped by gallery.card


def _filter_ranges(filters: Filters) -> dict[str, tuple[Bound, Bound]]:
    ranges = {name: (given.min, given.max) for name in FILTER_COLUMNS if name != "date"
              if (given := getattr(filters, name)) is not None}
    if filters.date is not None:  # whole days in UTC, as the item table's timestamps: "to" includes its day
        start, end = filters.date.from_, filters.date.to
        ranges["date"] = (_utc_seconds(start) if start else None,
                          _utc_seconds(end + datetime.timedelta(days=1)) - 1 if end else None)
    return ranges


def _utc_seconds(day: datetime.date) -> float:
    return datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()


def _decode_base64(text: str, limit: int) -> bytes:
    if len(text) > limit * 4 // 3 + 4:
        raise BadInput(f"the image is too large: a query image may be up to {limit / 2**20:g} MB", 413)
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("the image is not base64") from None


async def _read_json(request: Request, upload_limit: int) -> Any:
    """The body as JSON; 413 past what an image of upload_limit bytes needs, read chunk by chunk so that a huge body
    is never held whole."""
    limit = upload_limit * 4 // 3 + 65_536  # base64 inflates the image by 4/3; the rest is the query
    too_large = BadInput(f"the request is too large: a query image may be up to {upload_limit / 2**20:g} MB", 413)
    if not request.headers.get("content-length", "0").isdigit() or int(request.headers["content-length"]) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadInput("the body is not JSON") from None


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise BadInput(f"bad request: {problems}", 422) from None


def _result(hit: Hit, index: str) -> dict:
    extra = hit.extra
    date = extra.get("timestamp")
    return {"rank": hit.rank, "score": round(hit.score, 6), "id": hit.id, "prompt": hit.prompt, "url": hit.url,
            "alike": hit.alike, "index": index, "position": hit.position, "thumbnail": _thumbnail_url(hit, index),
            "width": extra.get("width"), "height": extra.get("height"), "seed": _decimal(extra.get("seed")),
            "cfg_scale": extra.get("cfg_scale"), "steps": extra.get("num_steps"),
            "date": date.isoformat() if isinstance(date, datetime.datetime) else None}


def _decimal(seed: int | None) -> str | None:
    """A seed as decimal text: JSON numbers above 2**53 are not exact in browsers (JSON.parse makes them doubles)."""
    return None if seed is None else str(seed)


def _thumbnail_url(hit: Hit, index: str) -> str:
    if hit.path:
        return f"/thumbnail/{index}/{hit.position}"
    return hit.url if is_http_url(hit.url) else ""


def _actions(hit: Hit, index: str) -> str:
    return (f'<div class="actions"><button type="button" class="copy">Copy prompt</button>'
            f'<button type="button" class="more" data-index="{index}" data-position="{hit.position}">'
            f'More like this</button></div>')


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (0: a free port), for uvicorn to serve on.

    Its proto is IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket whose proto says TCP,
    and without it each answer on a kept-alive connection waited ~40 ms (Nagle against the client's delayed ACK).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog from now, while uvicorn starts
    return sock


def create_app(searcher: Searcher, max_upload_bytes: int, max_results: int, dedupe_threshold: float) -> FastAPI:
    """The server's routes over an opened Searcher."""
    app = FastAPI(title="prompt-search", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers.update({"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})
        app_ms = (time.perf_counter() - start) * 1e3  # the whole request inside the app, reading the body included
        response.headers["Server-Timing"] = ", ".join(filter(None, [response.headers.get("Server-Timing"),
                                                                    f"app;dur={app_ms:.2f}"]))
        return response

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=getattr(error, "status", 400))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    def count(k: int, offset: int = 0) -> None:
        if not 1 <= k <= max_results:
            raise BadInput(f"the number of results must be from 1 to {max_results}, got {k}", 422)
        if offset + k > MAX_RESULT_DEPTH:
            raise BadInput(f"offset + num_results must be at most {MAX_RESULT_DEPTH}", 422)

    @app.post("/knn-service")
    async def knn_service(request: Request) -> JSONResponse:
        query = _validated(KnnRequest, await _read_json(request, max_upload_bytes))
        if query.indice_name != INDICE_NAME:
            raise BadInput(f"unknown indice_name {query.indice_name!r}: /indices-list has [{INDICE_NAME!r}]")
        if query.use_mclip:
            raise BadInput("use_mclip is not supported: the text is encoded by this index's own CLIP")
        if query.image_url:
            raise BadInput("image_url is refused: this server fetches no URL; send the image itself, base64, in image")
        given = [name for name in ("text", "image", "embedding_input") if getattr(query, name)]
        if len(given) != 1:
            raise BadInput("give exactly one of text, image and embedding_input")
        count(query.num_images)
        side = "images" if query.modality == "image" else "prompts"
        notes: list[str] = []

        def run() -> Answer:
            if query.text:
                vector = searcher.encode_text(query.text, notes)
            elif query.image:
                vector = searcher.encode_image(_decode_base64(query.image, max_upload_bytes))
            else:
                vector = combine([(np.asarray(query.embedding_input, dtype=np.float32), 1.0)])
            return searcher.search(side, vector, query.num_images, 0,
                                   dedupe_threshold if query.deduplicate else 1.0, {}, Answer([]))

        answer = await run_in_threadpool(run)
        return JSONResponse([{"id": hit.id, "similarity": hit.score, "url": hit.url, "caption": hit.prompt}
                             for hit in answer.hits])

    @app.post("/api/search")
    async def api_search(request: Request) -> JSONResponse:
        query = _validated(SearchRequest, await _read_json(request, max_upload_bytes))
        count(query.num_results, query.offset)
        positive, negatives = split_negatives(query.text)
        negatives += [text for text in query.negative if text.strip()]
        if not (positive or query.image or query.like):
            raise BadInput("give a text, an image or a result to search like")

        def run() -> Answer:
            answer = Answer([])
            start = time.perf_counter()
            parts = [(searcher.encode_text(positive, answer.notes), query.text_weight)] if positive else []
            parts += [(searcher.encode_text(text, answer.notes), -query.negative_weight) for text in negatives]
            if query.image:
                parts.append((searcher.encode_image(_decode_base64(query.image, max_upload_bytes)), query.image_weight))
            if query.like:
                parts.append((searcher.stored_vector(query.like.index, query.like.position), 1.0))
            vector = combine(parts)
            answer.timings["encode"] = (time.perf_counter() - start) * 1e3
            return searcher.search(query.index, vector, query.num_results, query.offset,
                                   dedupe_threshold if query.dedupe else 1.0, _filter_ranges(query.filters), answer)

        answer = await run_in_threadpool(run)
        body = {"index": query.index, "offset": query.offset, "notes": answer.notes,
                "negative": negatives, "timings_ms": {name: round(ms, 3) for name, ms in answer.timings.items()},
                "results": [_result(hit, query.index) for hit in answer.hits]}
        if query.cards:
            body["cards"] = "".join(gallery.card(hit, _thumbnail_url(hit, query.index), _actions(hit, query.index))
                                    for hit in answer.hits)
        timing = ", ".join(f"{name};dur={ms:.2f}" for name, ms in answer.timings.items())
        return JSONResponse(body, headers={"Server-Timing": timing})

    @app.get("/thumbnail/{index}/{position}")
    async def thumbnail(index: str, position: str) -> Response:
        data = await run_in_threadpool(searcher.thumbnail, index, position)
        if data is None:
            return JSONResponse({"error": "no such thumbnail"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/indices-list")
    async def indices_list() -> list[str]:
        return [INDICE_NAME]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": searcher.model,
                "indices": {side: searched.index.ntotal for side, searched in searcher.sides.items()},
                "filters": {side: sorted(columns) for side, columns in searcher.columns.items()}}

    @app.get("/gallery.css")
    async def gallery_css() -> PlainTextResponse:
        return PlainTextResponse(gallery.STYLE, media_type="text/css")  # results.html's card style, one copy

    @app.get("/")
    async def page() -> HTMLResponse:
        with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
            return HTMLResponse(f.read())

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
