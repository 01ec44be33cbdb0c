"""Liveness for load balancers and the Dockerfile's HEALTHCHECK."""

from __future__ import annotations

from litestar import get


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}
