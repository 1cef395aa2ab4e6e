"""What the server reads from a request: its body (bounded in size and time), the JSON models of both protocols,
and the values derived from them. Every fault here is a BadInput, answered 4xx with its message."""

import asyncio
import base64
import binascii
import datetime
import json
import logging
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect

from prompt_search.index.keyword_index import KeywordIndex
from prompt_search.index.keywords import KeywordQuery
from prompt_search.search.filters import FILTER_COLUMNS, Bound
from prompt_search.search.service import BadInput

INDICE_NAME = "prompt-search"  # the one name /indices-list gives; clip-retrieval's modality picks images or prompts
DAY_SECONDS = 86_400
LOG = logging.getLogger("uvicorn.error")  # uvicorn's own log: one line each, as its other warnings


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
    adherence: Range | None = None
    aesthetic: Range | None = None
    prompt_group: Range | None = None  # a result's prompt_group as min and max: the images of its prompt


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
    mode: Literal["hybrid", "semantic", "keyword"] | None = None  # None: hybrid for a text, semantic without one
    sort: Literal["relevance", "adherence", "aesthetic", "date"] = "relevance"
    group: Literal["none", "prompt"] = "none"  # "prompt": one result per prompt, its best by the sort
    num_results: int = Field(20, ge=1)
    offset: int = Field(0, ge=0)
    dedupe: bool = True
    filters: Filters = Filters()
    cards: bool = False  # also the results as the page's card markup, escaped by gallery.card


class ExportRequest(SearchRequest):
    """POST /api/export: a query as /api/search takes it, its results a training set (README: Triage)."""
    strip_weights: bool | None = None  # captions without weights and LoRA tags; None: EXPORT_STRIP_WEIGHTS


def search_mode(query: SearchRequest, keywords: KeywordQuery, index: KeywordIndex | None, notes: list[str]) -> str:
    """The mode a request is ranked in: its own, else hybrid for a text with words, else semantic. A side without a
    keyword index (built before step 4 made one) answers a text semantically, and says so; so does a side whose
    rows have no prompt (images of one's own without metadata)."""
    if query.mode == "keyword":
        if query.image or query.like:
            raise BadInput("the keyword mode searches by words only: send no image or result to search like, or use "
                           "the hybrid mode", 422)
        if not keywords:
            raise BadInput("the text has no words to search for (the keyword mode reads words, not punctuation)", 422)
    elif query.mode == "semantic" or not keywords:
        return "semantic"
    elif index is not None and not index.documents:
        notes.append(f"the {query.index} index has no prompts to search by words: searched by CLIP only")
        return "semantic"
    if index is None:
        if query.mode:
            raise BadInput(f"the {query.index} index has no keyword index: rebuild it with step 4, or use the "
                           "semantic mode", 409)
        notes.append(f"the {query.index} index has no keyword index (rebuild it with step 4): searched by CLIP only")
        return "semantic"
    return query.mode or "hybrid"


def filter_ranges(filters: Filters) -> dict[str, tuple[Bound, Bound]]:
    ranges = {name: (given.min, given.max) for name in FILTER_COLUMNS if name != "date"
              if (given := getattr(filters, name)) is not None}
    if filters.date is not None:  # whole days in UTC, as the item table's timestamps: "to" includes its day
        start, end = filters.date.from_, filters.date.to
        # the day after "to" is never made: after 9999-12-31 there is no date
        ranges["date"] = (_utc_seconds(start) if start else None, _utc_seconds(end) + DAY_SECONDS - 1 if end else None)
    return ranges


def _utc_seconds(day: datetime.date) -> float:
    return datetime.datetime.combine(day, datetime.time(), datetime.timezone.utc).timestamp()


def decode_base64(text: str, limit: int) -> bytes:
    if len(text) > limit * 4 // 3 + 4:
        raise BadInput(f"the image is too large: a query image may be up to {limit / 2**20:g} MB", 413)
    try:
        return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("the image is not base64") from None


async def read_json(request: Request, upload_limit: int, timeout: float) -> Any:
    """The body as JSON, up to what an image of upload_limit bytes needs (read_body)."""
    limit = upload_limit * 4 // 3 + 65_536  # base64 inflates the image by 4/3; the rest is the query
    body = await read_body(request, limit, timeout,
                           f"the request is too large: a query image may be up to {upload_limit / 2**20:g} MB")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadInput("the body is not JSON") from None


async def read_body(request: Request, limit: int, timeout: float, too_large: str) -> bytes:
    """The body, 413 (too_large) past limit bytes, read chunk by chunk so that a huge body is never held whole (a
    chunked body too, which has no length); 408 when it takes more than timeout seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit() and int(declared) <= limit):
        raise BadInput(too_large, 413)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise BadInput(too_large, 413)
    except TimeoutError:
        raise BadInput(f"the request's body did not arrive within {timeout:g} seconds", 408) from None
    except ClientDisconnect:  # the client is gone: nobody reads the answer, the log says it in one line
        client = request.client.host if request.client else "a client"
        LOG.warning("%s went away while sending %s (%d bytes came)", client, request.url.path, len(body))
        raise BadInput("the client went away before its request's body came", 400) from None
    return bytes(body)


def validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in error.errors())
        raise BadInput(f"bad request: {problems}", 422) from None
