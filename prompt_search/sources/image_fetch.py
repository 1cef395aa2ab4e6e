"""One image for a training set (search/export.py): fetched from its link by step 2's rules, img2dataset's user
agent, its X-Robots-Tag opt-out (a site's "noai", "noimageai", "noindex" or "noimageindex" is respected),
DOWNLOAD_TIMEOUT and DOWNLOAD_RETRIES; only http(s), redirects included (urllib would follow one to ftp); at most
MAX_IMAGE_BYTES, whole (a body cut short is refused), within 3 x DOWNLOAD_TIMEOUT in all (a trickle is cut), and an
image within MAX_PIXELS, read from its header. Formats kohya does not read are converted to PNG."""

import http.client
import io
import time
import urllib.request
from email.message import Message

from prompt_search.pixels import UNREADABLE, ImageTooLarge, open_image
from prompt_search.storage import is_http_url

# img2dataset's own user agent string and opt-out directives (its downloader's defaults, which step 2 keeps)
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
DISALLOWED = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
# directives whose value holds a colon: "unavailable_after: 25 Jun 2010" names no user agent
COLON_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
MAX_IMAGE_BYTES = 64 * 2**20  # larger than any generation's PNG; a bigger body is no image to train on
READ_BYTES = 1 << 20  # read a piece at a time, to see the whole fetch's deadline pass
# kohya's sd-scripts read these suffixes (IMAGE_EXTENSIONS); an image of another format is converted to PNG
KOHYA_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
# what a fetch can raise besides FetchFailed: the network's and the HTTP parser's errors (a bad status line, too many
# headers, a chunked body cut short), each tried again
NETWORK_ERRORS = (OSError, ValueError, http.client.HTTPException)


class FetchFailed(Exception):
    """Why an image was not had, in words (results.parquet's `skipped`)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        if not is_http_url(newurl):
            raise FetchFailed(f"redirected to {newurl[:200]!r}, which is not an http(s) link")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_image(url: str, timeout: float, retries: int) -> tuple[bytes, str]:
    """The image at url as kohya reads it, and its file suffix (".png"...); FetchFailed saying why not, after
    retries more tries."""
    if not is_http_url(url):
        raise FetchFailed(f"{url[:200]!r} is not an http(s) link")
    for attempt in range(retries + 1):
        try:
            return training_image(_fetch(url, timeout))
        except NETWORK_ERRORS as error:
            if attempt == retries:
                raise FetchFailed(str(getattr(error, "reason", None) or error) or type(error).__name__) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def _fetch(url: str, timeout: float) -> bytes:
    deadline = time.monotonic() + 3 * timeout
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _OPENER.open(request, timeout=timeout) as response:
        if opted_out(response.headers):
            raise FetchFailed("the site opts its images out of AI use (X-Robots-Tag)")
        body = bytearray()
        while piece := response.read(READ_BYTES):
            body += piece
            if len(body) > MAX_IMAGE_BYTES:
                raise FetchFailed(f"larger than {MAX_IMAGE_BYTES // 2**20} MB")
            if time.monotonic() > deadline:
                raise FetchFailed(f"still arriving after {3 * timeout:g} seconds")
        declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) != len(body):  # read() returns a body cut short without a word
        raise FetchFailed(f"cut short: {len(body)} of {declared} bytes came")
    return bytes(body)


def opted_out(headers: Message) -> bool:
    """Whether an X-Robots-Tag header for every crawler (or for img2dataset by name) disallows use."""
    for value in headers.get_all("X-Robots-Tag") or []:
        directives = [directive.strip().lower() for directive in value.split(",")]
        agent, colon, first = directives[0].partition(":")
        if colon and agent.strip() not in COLON_DIRECTIVES:  # "googlebot: noindex": for that crawler only
            if agent.strip() != "img2dataset":
                continue
            directives[0] = first.strip()
        if DISALLOWED & set(directives):
            return True
    return False


def training_image(body: bytes) -> tuple[bytes, str]:
    """body as kohya reads it (a format it does not read, its first frame as PNG), and its suffix; FetchFailed
    when body is no image, or one over MAX_PIXELS."""
    try:
        with open_image(io.BytesIO(body)) as image:
            if image.format in KOHYA_SUFFIX:
                return body, KOHYA_SUFFIX[image.format]
            converted = io.BytesIO()
            image.save(converted, "PNG")
            return converted.getvalue(), ".png"
    except ImageTooLarge as error:
        raise FetchFailed(str(error)) from None
    except UNREADABLE:
        raise FetchFailed("not an image") from None
