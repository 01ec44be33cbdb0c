"""Liveness for load balancers and the Dockerfile's HEALTHCHECK."""

from __future__ import annotations

from litestar import get

from app.sessions import SKIP_SESSION


@get("/healthz", sync_to_thread=False, opt={SKIP_SESSION: True})
def healthz() -> dict[str, str]:
    return {"status": "ok"}
