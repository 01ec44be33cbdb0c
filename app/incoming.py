"""What the stream routes read of a request, and `HotRequest`, the plain form the hot routes give them.

Litestar's `Request` builds a case-insensitive multidict of every header, decoded, in the scope's state, plus a
scope-state object and an address tuple per access: under callgrind 53k instructions a request, all of it before
the upstream call. `HotRequest` is a dict of the headers, made in one pass. A session cookie is the exception:
Litestar's session backend reads it from a Litestar connection, which `SessionReader` then makes itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from litestar.datastructures import Address
from litestar.types import Receive, Scope


class Incoming(Protocol):
    """A request as the stream routes and `ChatService` read it: Litestar's `Request`, or a `HotRequest`."""

    @property
    def scope(self) -> Scope: ...

    @property
    def receive(self) -> Receive: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def client(self) -> Address | None: ...


class HotRequest:
    __slots__ = ("headers", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        # Names are lower case in an ASGI scope. Reversed, so that a repeated header reads as its first value,
        # as Litestar's multidict reads it.
        self.headers: dict[str, str] = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in reversed(list(scope["headers"]))
        }

    @property
    def client(self) -> Address | None:
        client = self.scope.get("client")
        return Address(*client) if client else None
