"""One image fetched from its link by step 2's rules, for an export (search/export.py): img2dataset's user agent,
its X-Robots-Tag opt-out (a site's "noai", "noimageai", "noindex" or "noimageindex" is respected), DOWNLOAD_TIMEOUT
and DOWNLOAD_RETRIES. Only http(s) is fetched, redirects included (urllib would follow one to ftp), at most
MAX_IMAGE_BYTES, and the body must be an image within MAX_PIXELS, read from its header."""

import io
import urllib.error
import urllib.request
from email.message import Message

from prompt_search.pixels import UNREADABLE, ImageTooLarge, open_image
from prompt_search.storage import is_http_url

# img2dataset's own user agent string and opt-out directives (its downloader's defaults, which step 2 keeps)
USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"
DISALLOWED = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
MAX_IMAGE_BYTES = 64 * 2**20  # larger than any generation's PNG; a bigger body is no image to train on
FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
                 "MPO": ".jpg", "AVIF": ".avif"}


class FetchFailed(Exception):
    """Why an image was not fetched, in words (results.parquet's `skipped`)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        if not is_http_url(newurl):
            raise FetchFailed(f"redirected to {newurl[:200]!r}, which is not an http(s) link")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_image(url: str, timeout: float, retries: int) -> tuple[bytes, str]:
    """The image at url and its file suffix (".png"...); FetchFailed saying why not, after retries more tries."""
    if not is_http_url(url):
        raise FetchFailed(f"{url[:200]!r} is not an http(s) link")
    for attempt in range(retries + 1):
        try:
            return _fetch(url, timeout)
        except (OSError, ValueError) as error:  # the network's errors: tried again
            if attempt == retries:
                raise FetchFailed(str(getattr(error, "reason", None) or error)) from None
    raise AssertionError("unreachable")  # the loop returns or raises


def _fetch(url: str, timeout: float) -> tuple[bytes, str]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with _OPENER.open(request, timeout=timeout) as response:
        if opted_out(response.headers):
            raise FetchFailed("the site opts its images out of AI use (X-Robots-Tag)")
        body = response.read(MAX_IMAGE_BYTES + 1)
    if len(body) > MAX_IMAGE_BYTES:
        raise FetchFailed(f"larger than {MAX_IMAGE_BYTES // 2**20} MB")
    return body, image_suffix(body)


def opted_out(headers: Message) -> bool:
    """Whether an X-Robots-Tag header for every crawler (or for img2dataset by name) disallows use."""
    for value in headers.get_all("X-Robots-Tag") or []:
        agent, _, directives = value.partition(":") if ":" in value else ("", "", value)
        if agent.strip() and agent.strip().lower() != "img2dataset":
            continue
        if {directive.strip().lower() for directive in directives.split(",")} & DISALLOWED:
            return True
    return False


def image_suffix(body: bytes) -> str:
    """The suffix of an image file's format; FetchFailed when body is no image, or one over MAX_PIXELS."""
    try:
        with open_image(io.BytesIO(body)) as image:
            return FORMAT_SUFFIX.get(image.format or "", ".img")
    except ImageTooLarge as error:
        raise FetchFailed(str(error)) from None
    except UNREADABLE:
        raise FetchFailed("not an image") from None
