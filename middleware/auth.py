"""API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, or a session a key opened (POST /auth/session).

Keys are kept only as SHA-256 digests; a presented key is hashed and compared with every configured digest in
constant time (`hmac.compare_digest`, no early exit), so neither timing nor logs reveal a key. Browsers' EventSource
cannot send headers: it authenticates with the HttpOnly session cookie instead.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import Forbidden, Unauthorized
from app.settings import AuthSettings, KeyLimitSettings


@dataclass(frozen=True, slots=True)
class Identity:
    key_id: str
    models: tuple[str, ...] | None
    limits: KeyLimitSettings


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._keys: list[tuple[bytes, Identity]] = []
        for key in settings.keys:
            if key.key is not None:
                digest = hashlib.sha256(key.key.get_secret_value().encode()).digest()
            else:
                digest = bytes.fromhex(key.sha256 or "")
            self._keys.append((digest, Identity(key.id, key.models, key.limits)))
        self._by_id = {identity.key_id: identity for _, identity in self._keys}

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str], session: Mapping[str, object] | None) -> Identity | None:
        """The caller's identity, or None when auth is off. Raises `Unauthorized`."""
        if not self.enabled:
            return None  # clients such as the openai SDK always send some key: with auth off it means nothing
        presented = presented_key(headers)
        if presented is not None:
            identity = self.check(presented)
            if identity is None:
                raise Unauthorized("the API key is not valid")
            return identity
        key_id = (session or {}).get("key_id")
        if isinstance(key_id, str) and key_id in self._by_id:
            return self._by_id[key_id]
        raise Unauthorized("an API key is required: Authorization: Bearer <key>, X-API-Key, or POST /auth/session")

    def check(self, presented: str) -> Identity | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: Identity | None = None
        for expected, identity in self._keys:  # every digest is compared: no early exit
            if hmac.compare_digest(digest, expected):
                found = identity
        return found


def presented_key(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


def check_model(identity: Identity | None, public_model: str) -> None:
    if identity is not None and identity.models is not None and public_model not in identity.models:
        raise Forbidden(f"the key {identity.key_id!r} may not use the model {public_model!r}")
