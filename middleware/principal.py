"""Who a request is, for limits: an API key's id, else the client's address.

A browser session adds no capacity: anyone can mint sessions, so counting one apart from its address would let an
address multiply its own limits. A session that carries a key (POST /auth/session) counts as that key.

`X-Forwarded-For` is believed only when the connection comes from a configured trusted proxy, and then only up to
the first address that is not itself a trusted proxy (the rightmost untrusted hop), so a client cannot choose its
own address by sending the header.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping


def client_address(peer: str | None, forwarded_for: str | None, trusted: frozenset[str]) -> str:
    address = peer or "unknown"
    if forwarded_for and address in trusted:
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if _valid_ip(hop):
                address = hop
                if hop not in trusted:
                    break
            else:
                break
    return address


def principal_key(
    *,
    api_key_id: str | None,
    peer: str | None,
    headers: Mapping[str, str],
    trusted: Iterable[str],
) -> str:
    if api_key_id:
        return f"key:{api_key_id}"
    return f"ip:{client_address(peer, headers.get('x-forwarded-for'), frozenset(trusted))}"


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
