"""What both of the server's protocols answer with: its settings, a result as JSON, and where a result's picture
is (a thumbnail here, or the image's own http(s) link)."""

import datetime
from dataclasses import dataclass
from types import SimpleNamespace

from fastapi import Request

from prompt_search.search.access import TokenGate, allowed_hosts, cors_origins
from prompt_search.search.core import Hit
from prompt_search.search.query_run import QueryLimits
from prompt_search.search.service import BadInput, Searcher
from prompt_search.settings import ExportSettings
from prompt_search.storage import is_http_url

# What a folder of one's own generations also records (folder_metadata.SCHEMA); null for open-prompts' rows
GENERATION_TEXTS = ("negative_prompt", "sampler", "model", "model_hash", "tool")
MAX_RESULT_DEPTH = 1000  # offset + num_results: deeper pages would search past MAX_CANDIDATES anyway


@dataclass(frozen=True)
class ServerSettings:
    """The settings of config.py the routes read (README: Search server)."""
    max_upload_bytes: int
    max_results: int
    dedupe_threshold: float
    max_negatives: int
    upload_timeout: float  # seconds a request's body may take
    hosts: frozenset[str] | None  # the Host names answered; None: any
    cors: frozenset[str]  # origins whose pages may call clip-retrieval's protocol; "*": any
    public_url: str  # the server's address as its clients reach it, for absolute links: never from a request
    gate: TokenGate
    export: ExportSettings

    @classmethod
    def of(cls, cfg: SimpleNamespace, listening_url: str) -> "ServerSettings":
        public_url = (cfg.SERVE_URL or listening_url).rstrip("/")
        return cls(int(cfg.MAX_UPLOAD_MB * 2**20), cfg.MAX_NUM_RESULTS, cfg.DEDUPE_THRESHOLD, cfg.MAX_NEGATIVES,
                   cfg.UPLOAD_TIMEOUT, allowed_hosts(cfg.ALLOWED_HOSTS, cfg.SERVE_HOST), cors_origins(cfg.CORS_ORIGINS),
                   public_url, TokenGate(cfg.SERVE_TOKEN, secure_cookie=public_url.startswith("https://")),
                   ExportSettings.of(cfg))

    @property
    def limits(self) -> QueryLimits:
        return QueryLimits(self.dedupe_threshold, self.max_negatives, self.max_upload_bytes)


def state(request: Request) -> tuple[Searcher, ServerSettings]:
    return request.app.state.searcher, request.app.state.settings


def check_count(most: int, k: int, offset: int = 0) -> None:
    if not 1 <= k <= most:
        raise BadInput(f"the number of results must be from 1 to {most}, got {k}", 422)
    if offset + k > MAX_RESULT_DEPTH:
        raise BadInput(f"offset + num_results must be at most {MAX_RESULT_DEPTH}", 422)


def picture(searcher: Searcher, hit: Hit, index: str) -> str:
    """Where the hit's picture is shown from: the thumbnail of its local image (for a prompt, the image of the same
    id), else its http(s) link, else "" (none)."""
    position = searcher.picture(index, hit)
    if position is not None:
        return f"/thumbnail/images/{position}"
    return hit.url if is_http_url(hit.url) else ""


def absolute_url(settings: ServerSettings, src: str) -> str:
    """A picture's address for a client elsewhere (clip-retrieval's front): this server's thumbnails absolute."""
    return settings.public_url + src if src.startswith("/") else src


def link(searcher: Searcher, settings: ServerSettings, hit: Hit, index: str) -> str:
    """The hit's url for a client: its own http(s) link, else the absolute URL of its thumbnail here, else ""."""
    return hit.url if is_http_url(hit.url) else absolute_url(settings, picture(searcher, hit, index))


def described(searcher: Searcher, settings: ServerSettings, hit: Hit, index: str) -> dict:
    """The hit's own fields, as JSON: prompt, url (link) and the item table's settings."""
    extra = hit.extra
    date = extra.get("timestamp")
    return {"id": hit.id, "prompt": hit.prompt, "url": link(searcher, settings, hit, index),
            "width": extra.get("width"), "height": extra.get("height"), "seed": _decimal(extra.get("seed")),
            "cfg_scale": extra.get("cfg_scale"), "steps": extra.get("num_steps"),
            "date": date.isoformat() if isinstance(date, datetime.datetime) else None,
            "adherence": _rounded(extra.get("adherence")), "aesthetic": _rounded(extra.get("aesthetic")),
            **{name: extra.get(name) for name in GENERATION_TEXTS}}


def _rounded(score: float | None) -> float | None:
    return None if score is None else round(score, 4)


def _decimal(seed: int | None) -> str | None:
    """A seed as decimal text: JSON numbers above 2**53 are not exact in browsers (JSON.parse makes them doubles)."""
    return None if seed is None else str(seed)


def result(searcher: Searcher, settings: ServerSettings, hit: Hit, index: str) -> dict:
    """One /api/search result: described, with its rank, score (the mode's: cosine, BM25, or fused), the score of
    each ranking that found it, index position and thumbnail."""
    group = hit.extra.get("prompt_group")
    return {"rank": hit.rank, "score": round(hit.score, 6), "alike": hit.alike, "index": index,
            "grouped": hit.grouped, "prompt_group": None if group is None else str(group),
            "found_by": {name: round(score, 6) for name, score in hit.found_by.items()},
            "position": hit.position, "thumbnail": picture(searcher, hit, index),
            **described(searcher, settings, hit, index)}
