"""results.html: every query's results as a static, self-contained page that opens from disk in any browser."""

import html
import os
import urllib.parse
from collections.abc import Sequence

from prompt_search.index.keywords import matched_spans
from prompt_search.search.core import Hit, Query, details
from prompt_search.sources.image_files import path_from_text
from prompt_search.storage import atomic_path, is_http_url

FOUND_BY = {"keywords": "words", "clip": "CLIP"}  # a ranking (Hit.found_by) as a card names it

# The page runs nothing: prompts are arbitrary user text, so even if escaping ever missed, no script may execute.
CSP = "default-src 'none'; img-src * data: file:; style-src 'unsafe-inline'"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1em 2em; max-width: 1400px;
       background: #f4f4f5; color: #18181b; }
h2 { font-size: 1.15em; margin: 2em 0 .3em; }
.query-image { max-height: 160px; max-width: 100%; border-radius: 6px; display: block; }
.note { color: #a16207; margin: .3em 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 14px;
        list-style: none; padding: 0; margin: 1em 0; }
.card { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; overflow: hidden;
        display: flex; flex-direction: column; }
.card img, .no-image { width: 100%; aspect-ratio: 1; object-fit: cover; display: block; background: #e4e4e7; }
.no-image { display: flex; align-items: center; justify-content: center; color: #71717a; }
.meta { display: flex; justify-content: space-between; padding: 6px 10px 0; font-weight: 600; }
.score { font-variant-numeric: tabular-nums; color: #2563eb; }
.alike { margin: 2px 10px 0; font-size: .85em; color: #a16207; }
.prompt { margin: 4px 10px; max-height: 9.8em; overflow: auto; overflow-wrap: anywhere; white-space: pre-wrap; }
.prompt mark { background: #fde68a; color: inherit; border-radius: 2px; }
.found-by { margin: 2px 10px 0; font-size: .8em; color: #047857; }
.details { margin: 0 10px 4px; font-size: .85em; color: #52525b; }
.link { margin: auto 10px 8px; font-size: .85em; color: #71717a; overflow-wrap: anywhere; }
"""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _local_src(path: str, folder: str) -> str:
    """The image's path relative to the page's folder, so the page and its images can move together; a name's
    bytes that are not UTF-8 are quoted as they are, so the browser asks for the very file."""
    relative = os.path.relpath(os.path.abspath(path), folder)
    return urllib.parse.quote(os.fsencode(relative.replace(os.sep, "/")))


def _thumbnail_src(hit: Hit, folder: str) -> str:
    """The downloaded image when it is on disk, else the image's URL if it is http(s), else none."""
    path = path_from_text(hit.path) if hit.path else ""  # the item table holds paths as image_files.path_as_text wrote
    if path and os.path.isfile(path):
        return _local_src(path, folder)
    return hit.url if is_http_url(hit.url) else ""


def _details(hit: Hit) -> str:
    shown = details(hit)
    return f'<p class="details">{_text(shown)}</p>' if shown else ""


def marked_prompt(prompt: str, marked: Sequence[str]) -> str:
    """The prompt escaped, each run of it that reads as one of the marked words (keywords.py) in <mark>."""
    parts, done = [], 0
    for start, end in matched_spans(prompt, marked) if marked else []:
        parts += [_text(prompt[done:start]), f"<mark>{_text(prompt[start:end])}</mark>"]
        done = end
    return "".join(parts) + _text(prompt[done:])


def _found_by(hit: Hit) -> str:
    names = [FOUND_BY[name] for name in FOUND_BY if name in hit.found_by]
    return f'<p class="found-by">found by {" and ".join(names)}</p>' if names else ""


def card(hit: Hit, src: str, actions: str = "", marked: Sequence[str] = (), found_by: bool = False) -> str:
    """One result's card: thumbnail at src (none when ""), score, prompt (the marked words highlighted), link,
    details, and (found_by) which rankings found it; actions is trusted markup."""
    image = f'<img src="{_text(src)}" alt="result {hit.rank}">' if src else '<div class="no-image">no image</div>'
    link = ""
    if is_http_url(hit.url):
        link = f'<a class="link" href="{_text(hit.url)}" rel="noopener noreferrer">{_text(hit.url)}</a>'
    alike = f'<p class="alike">and {hit.alike} near-identical</p>' if hit.alike else ""
    alike += f'<p class="alike">and {hit.grouped} more of this prompt</p>' if hit.grouped else ""
    return (f'<li class="card" title="{_text(hit.id)}">{image}<div class="meta"><span>#{hit.rank}</span>'
            f'<span class="score">{hit.score:.4f}</span></div>{alike}{_found_by(hit) if found_by else ""}'
            f'<p class="prompt">{marked_prompt(hit.prompt, marked)}</p>{_details(hit)}{actions}{link}</li>')


def _section(query: Query, side: str, hits: list[Hit], folder: str) -> str:
    if query.kind == "image":
        shown = f'<img class="query-image" src="{_text(_local_src(query.value, folder))}" alt="query image">'
        heading = f"{side.capitalize()} similar to the image {_text(query.value)}"
    else:
        shown = ""
        heading = f"{side.capitalize()} similar to the text “{_text(query.value)}” ({_text(query.mode)})"
    note = f'<p class="note">The prompt is {_text(query.note)}.</p>' if query.note else ""
    marked = query.keywords.all_words() if query.mode != "semantic" else ()
    cards = "".join(card(hit, _thumbnail_src(hit, folder), "", marked, query.mode == "hybrid")
                    for hit in hits) or "<li>no results</li>"
    return f'<section class="{_text(side)}"><h2>{heading}</h2>{shown}{note}<ul class="grid">{cards}</ul></section>'


def write_gallery(queries: list[Query], path: str) -> None:
    """Write the page to `path`: one section per query and index, a card per result."""
    folder = os.path.dirname(os.path.abspath(path))
    sections = "\n".join(_section(query, side, hits, folder) for query in queries for side, hits in query.hits.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Prompt search results</title><style>{STYLE}</style></head>
<body><h1>Prompt search results</h1>
{sections}
</body></html>
"""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
