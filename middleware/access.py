"""Who may talk to the proxy at all, decided before any routing, body read or upstream work.

- Protected mode (as Redis has it): with no `auth.keys` and no explicit `auth.open: true`, only loopback clients
  are served, so that a proxy started on a public address, or a container image run with `-p`, is not an open
  proxy spending the operator's upstream key. A request relayed by a proxy (`X-Forwarded-For`, `Forwarded`,
  `X-Real-IP`) counts as loopback only if every address it names is.
- Origin: a request with an `Origin` header that is neither this server's own origin nor listed in
  `security.cors.allow_origins` is refused. CORS only hides the answer from the page; without this check the
  generation would still run, and be billed, for any site a user visits.

Both answer 403 JSON. Health endpoints stay open to load balancers and probes. Pure ASGI, and nothing is wrapped
once a request is let through, so it costs nothing per response message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Iterable
from urllib.parse import urlsplit

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import Forbidden, error_body
from app.request_context import request_id_of

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
_FORWARDING = (b"x-forwarded-for", b"forwarded", b"x-real-ip")

PROTECTED_MODE_MESSAGE = (
    "tokenrelay is in protected mode: no auth.keys are configured, so only clients on this machine (loopback) are "
    "served. Configure auth.keys (see the README, Keys) or, to serve everyone without a key, set auth.open: true"
)


class AccessPolicyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        loopback_only: bool,
        allowed_origins: Iterable[str],
        trusted_proxies: Iterable[str],
    ) -> None:
        self._app = app
        self._loopback_only = loopback_only
        origins = {o.rstrip("/").lower() for o in allowed_origins}
        self._any_origin = "*" in origins
        self._origins = frozenset(origins)
        self._trusted = frozenset(trusted_proxies)

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: what it lets through is the next app's own awaitable, so no frame of this layer stays
        # in the chain for the whole life of a stream (300 bytes of each open one).
        if scope["type"] != ScopeType.HTTP or scope["path"] in OPEN_PATHS:
            return self._app(scope, receive, send)
        refusal: str | None = None
        if self._loopback_only and not _is_local(scope):
            refusal = PROTECTED_MODE_MESSAGE
        else:
            origin = _header(scope, b"origin")
            if origin is not None and not self._origin_allowed(origin, scope):
                refusal = f"the origin {origin[:200]!r} may not use this proxy: list it in security.cors.allow_origins"
        if refusal is None:
            return self._app(scope, receive, send)
        return _refuse(refusal, scope, send)

    def _origin_allowed(self, origin: str, scope: Scope) -> bool:
        normalized = origin.rstrip("/").lower()
        if self._any_origin or normalized in self._origins:
            return True
        try:
            parts = urlsplit(normalized)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file: pages) and anything else odd
        hosts = [_header(scope, b"host")]
        client = scope.get("client")
        if client is not None and client[0] in self._trusted:
            hosts.append(_header(scope, b"x-forwarded-host"))
        return any(host is not None and host.lower() == parts.netloc for host in hosts)


async def _refuse(refusal: str, scope: Scope, send: Send) -> None:
    body = error_body(Forbidden(refusal), request_id_of(scope))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 403, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _is_local(scope: Scope) -> bool:
    client = scope.get("client")
    if client is not None and not _is_loopback(client[0]):
        return False
    for key, value in scope["headers"]:
        if key in _FORWARDING and not all(_is_loopback(a) for a in _forwarded_addresses(key, value.decode("latin-1"))):
            return False
    return True  # a loopback peer (or a unix socket) relaying nothing but loopback


def _forwarded_addresses(name: bytes, value: str) -> list[str]:
    if name != b"forwarded":
        return [hop.strip() for hop in value.split(",")]
    found = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, _, address = pair.strip().partition("=")
            if key.lower() == "for":
                address = address.strip('"')
                if address.startswith("["):
                    address = address[1:].partition("]")[0]  # [v6]:port
                elif address.count(":") == 1:
                    address = address.partition(":")[0]  # v4:port
                found.append(address)
    return found or [""]


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address == "localhost"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
