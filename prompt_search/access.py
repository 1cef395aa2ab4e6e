"""Who may talk to the server: the host names it answers to (against DNS rebinding)."""

from starlette.requests import Request

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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
