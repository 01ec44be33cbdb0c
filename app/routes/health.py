"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: it takes new streams) for load balancers,
Kubernetes probes and the Dockerfile's HEALTHCHECK."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from app.sessions import SKIP_SESSION
from app.shutdown import ShutdownDrain


@get("/healthz", sync_to_thread=False, opt={SKIP_SESSION: True})
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False, opt={SKIP_SESSION: True})
def readyz(drain: NamedDependency[ShutdownDrain]) -> Response[dict[str, str]]:
    # While draining the process is alive (liveness holds) but must get no new traffic.
    if drain.draining:
        return Response({"status": "draining"}, status_code=503, headers={"retry-after": "1"})
    return Response({"status": "ready"})
