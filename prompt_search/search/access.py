"""Who may talk to the server: the host names it answers to (against DNS rebinding), the origins whose pages may
call clip-retrieval's protocol (CORS), and the token a client logs in with when SERVE_TOKEN is set."""

import hashlib
import hmac
import html
import ipaddress
import os
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from prompt_search.errors import UserError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
PROTOCOL_PATHS = ("/indices-list", "/knn-service", "/metadata")  # what clip-retrieval's front calls
OPEN_PATHS = ("/health", "/login")  # answered without the token: a liveness probe, and the way to log in
COOKIE = "prompt_search_session"
FAILURES_ALLOWED = 5  # failed logins from one address within FAILURE_WINDOW_S before it must wait
FAILURE_WINDOW_S = 60.0
MAX_TRACKED = 10_000  # addresses remembered at most: a flood of addresses cannot grow the memory without bound
with open(os.path.join(os.path.dirname(__file__), "static", "login.html"), encoding="utf-8") as _page:
    LOGIN_PAGE = _page.read()  # the form SERVE_TOKEN's login shows; {message} says why it is shown again


def allowed_hosts(setting: str, serve_host: str) -> frozenset[str] | None:
    """The host names a request's Host header may carry (None: any, for "*"); "" = the loopback names and
    serve_host. A DNS-rebinding page reaches a loopback server under its own name: refused, it reads nothing."""
    names = [name.strip().lower() for name in setting.split(",") if name.strip()]
    if "*" in names:
        return None
    return frozenset(names or [*LOOPBACK_NAMES, serve_host.lower()])


def host_name(header: str) -> str:
    """The name in a Host header, without its port or an IPv6 address's brackets, lower-case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, _, port = header.rpartition(":")
    return name if name and port.isdigit() else header


def host_refusal(request: Request, hosts: frozenset[str] | None) -> str | None:
    """Why the request's Host is refused, or None when it is one of hosts."""
    if hosts is None:
        return None
    given = request.headers.get("host", "")
    if host_name(given) in hosts:
        return None
    return f"the Host {given!r} is not a name of this server: add it to the ALLOWED_HOSTS setting to use it"


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return False


def check_exposure(host: str, token: str, open_anyway: bool) -> None:
    """UserError when the server would listen beyond this machine with no token, unless SERVE_OPEN says so."""
    if not is_loopback(host) and not token and not open_anyway:
        raise UserError(f"SERVE_HOST={host} lets other machines search and view every generation, and no "
                        "SERVE_TOKEN is set: give one (--SERVE_TOKEN=<a long random text>), or --SERVE_OPEN=True "
                        "to serve without a login")


def cors_origins(setting: str) -> frozenset[str]:
    """The origins allowed to call the protocol's endpoints from their pages ("*": any); "" = none."""
    return frozenset(origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip())


def cors_headers(request: Request, origins: frozenset[str]) -> dict[str, str]:
    """The CORS headers for a protocol request from an allowed origin; {} otherwise (the browser then refuses)."""
    origin = request.headers.get("origin")
    if not origin or request.url.path not in PROTOCOL_PATHS or not ("*" in origins or origin in origins):
        return {}
    return {"Access-Control-Allow-Origin": "*" if "*" in origins else origin, "Vary": "Origin"}


def preflight(request: Request, origins: frozenset[str]) -> Response | None:
    """The answer to a CORS preflight (OPTIONS) of an allowed origin for a protocol endpoint, else None."""
    allowed = cors_headers(request, origins)
    if request.method != "OPTIONS" or not allowed or "access-control-request-method" not in request.headers:
        return None
    return Response(status_code=204, headers={**allowed, "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                              "Access-Control-Allow-Headers": "Content-Type",
                                              "Access-Control-Max-Age": "600"})


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


@dataclass
class TokenGate:
    """SERVE_TOKEN's check: a Bearer header or the login cookie, compared in constant time (digests of equal length,
    hmac.compare_digest), with failed attempts counted per client address and refused (429) past FAILURES_ALLOWED
    a minute, a right token included, so that guessing costs a minute per few tries."""
    token: str
    secure_cookie: bool = False  # Secure when the server is reached over https (SERVE_URL)
    failures: dict[str, deque] = field(default_factory=dict)

    @property
    def session(self) -> str:
        """The cookie's value: derived from the token, so the cookie never holds the token itself."""
        return hmac.new(_digest(self.token), b"prompt-search session", hashlib.sha256).hexdigest()

    def refusal(self, request: Request) -> Response | None:
        """None when the request may go on; else the answer: 429 while its address waits, 401 without the token
        (the login page for a page request), 401 and a failure counted for a wrong one."""
        if not self.token or request.url.path in OPEN_PATHS or request.method == "OPTIONS":
            return None
        given = _bearer(request)
        cookie = request.cookies.get(COOKIE)
        if given is None and cookie is None:
            return self._unauthorised(request, "")
        if self.waiting(request):
            return self._too_many(request)
        if given is not None and self.matches(given) or cookie is not None and _equal(cookie, self.session):
            return None
        self.failed(request)
        return self._unauthorised(request, "that token is not this server's")

    def matches(self, given: str) -> bool:
        return _equal(given, self.token)

    def admits(self, request: Request) -> bool:
        """Whether the request carries the token (or its cookie), on an open path too; nothing counted: an open
        path only says less to a client without it."""
        if not self.token:
            return True
        given, cookie = _bearer(request), request.cookies.get(COOKIE)
        return given is not None and self.matches(given) or cookie is not None and _equal(cookie, self.session)

    def waiting(self, request: Request) -> bool:
        recent = self.failures.get(_address(request))
        now = time.monotonic()
        while recent and now - recent[0] > FAILURE_WINDOW_S:
            recent.popleft()
        return bool(recent) and len(recent) >= FAILURES_ALLOWED

    def failed(self, request: Request) -> None:
        if len(self.failures) >= MAX_TRACKED:
            self.failures.pop(next(iter(self.failures)))  # the oldest address first
        self.failures.setdefault(_address(request), deque(maxlen=FAILURES_ALLOWED)).append(time.monotonic())

    def login(self, request: Request, token: str) -> Response:
        """The login form's answer: to the page with the session cookie, or the form again with why not."""
        if self.waiting(request):
            return self._too_many(request)
        if not self.matches(token):
            self.failed(request)
            return login_page("that token is not this server's", 401)
        response = Response(status_code=303, headers={"Location": "/"})
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", secure=self.secure_cookie,
                            path="/")
        return response

    def _unauthorised(self, request: Request, why: str) -> Response:
        if request.method == "GET" and request.url.path == "/":
            return login_page(why, 401)
        return JSONResponse({"error": why or "this server needs its token: an Authorization: Bearer header, or "
                                                "the login form on its page"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    def _too_many(self, request: Request) -> Response:
        why = f"too many wrong tokens from this address: try again in {FAILURE_WINDOW_S:g} seconds"
        response = login_page(why, 429) if request.url.path in ("/", "/login") else \
            JSONResponse({"error": why}, status_code=429)
        response.headers["Retry-After"] = f"{FAILURE_WINDOW_S:g}"
        return response


def login_page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(LOGIN_PAGE.format(message=html.escape(message)), status_code=status)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(_digest(given), _digest(expected))


def _address(request: Request) -> str:
    return request.client.host if request.client else ""
