"""A resume on another replica: the time from the reconnect to the first replayed frame.

    python -m bench.resume_latency [--resumes N]

Two tokenrelay processes share a redis-server, before the fake upstream. Each round opens a stream on replica A
(200 tokens 10 ms apart), reads 10 frames, drops the connection, and at once reconnects to replica B with
`Last-Event-ID`; what is timed is from sending that request to the first frame B sends. B has never seen the
stream: it answers from the Redis Stream that A's flusher writes.

Two cases: the client comes back at once (the frame after its last one is not produced yet, so the figure is the
live tail through the flusher: the 10 ms token gap plus up to one flush interval, 50 ms), and the client comes
back 300 ms later (a backlog waits in Redis: the figure is the replay itself).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import quote

import httpx

from bench.processes import ROOT, free_port, process, wait_until_serving
from bench.scenarios import percentile
from tests.support.redis_server import RedisServer

MODEL = "gen?n=200&gap_ms=10"


def _config(upstream_port: int, redis_url: str) -> str:
    return (
        "providers:\n  fake:\n    type: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        f'models:\n  "{MODEL}": {{provider: fake, model: "{MODEL}"}}\n'
        "limits: {requests_per_minute: 0, concurrent_streams: 0}\n"
        f"state: {{redis_url: '{redis_url}', key_prefix: 'lat-{secrets.token_hex(4)}:'}}\n"
    )


async def _first_frame(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> float:
    began = time.perf_counter()
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise RuntimeError(f"resume answered {response.status_code}")
        async for chunk in response.aiter_raw():
            if b"\n\n" in chunk:
                return time.perf_counter() - began
    raise RuntimeError("the resumed stream ended before its first frame")


async def _measure(a: str, b: str, resumes: int, away: float) -> list[float]:
    url = f"/chat/stream?model={quote(MODEL, safe='')}&prompt=hi"
    samples = []
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(resumes):
            last, frames = "", 0
            async with client.stream("GET", a + url) as response:
                async for chunk in response.aiter_raw():
                    for line in chunk.split(b"\n"):
                        if line.startswith(b"id: "):
                            last, frames = line[4:].decode(), frames + 1
                    if frames >= 10:
                        break
            if not last:
                raise RuntimeError(f"replica A answered {response.status_code} with no frame")
            if away:
                await asyncio.sleep(away)  # the scenario itself: a client that stays away this long
            samples.append(await _first_frame(client, b + url, {"last-event-id": last}))
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resumes", type=int, default=200)
    args = parser.parse_args()
    redis = RedisServer().start()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tokenrelay = str(Path(sys.executable).parent / "tokenrelay")
    try:
        with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
            upstream_port, a_port, b_port = free_port(), free_port(), free_port()
            stack.enter_context(
                process([sys.executable, "-m", "bench.fake_upstream", "--port", str(upstream_port)], env, None)
            )
            config = Path(tmp) / "resume.yaml"
            config.write_text(_config(upstream_port, redis.url))
            for port in (a_port, b_port):
                stack.enter_context(
                    process([tokenrelay, "serve", "--config", str(config), "--port", str(port)], env, None)
                )

            async def run() -> dict[float, list[float]]:
                for port in (upstream_port, a_port, b_port):
                    await wait_until_serving(port)
                a, b = f"http://127.0.0.1:{a_port}", f"http://127.0.0.1:{b_port}"
                return {away: await _measure(a, b, args.resumes, away) for away in (0.0, 0.3)}

            by_away = asyncio.run(run())
    finally:
        redis.stop()
    for away, samples in by_away.items():
        ms = [s * 1000 for s in samples]
        print(
            f"resume on another replica {away * 1000:.0f} ms after the drop, {len(ms)} resumes: first frame after "
            f"p50 {percentile(ms, 0.5):.2f} ms, p99 {percentile(ms, 0.99):.2f} ms, mean {statistics.mean(ms):.2f} ms"
        )


if __name__ == "__main__":
    main()
