"""The benchmark's scenarios: each runs the load generator against targets and records figures."""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import asyncio as aioredis

from bench.loadgen import Outcome, Target, collector_paused, one_stream, run_concurrent
from bench.processes import cpu_seconds, rss_bytes

TTFT = ("gen?n=64&gap_ms=5&first_ms=20", 64)
BURST = ("gen?n=1024", 1024)
PACED = ("gen?n=64&gap_ms=20", 64)
SLOW = ("gen?n=14&gap_ms=500", 14)  # 7 s: every stream of the ramp below is still open when RSS is read
SLOW_LONG = ("gen?n=30&gap_ms=500", 30)  # 15 s: for 10,000, opened over 10 s
LONG_PACED = ("gen?n=250&gap_ms=20", 250)  # 5 s: every stream lives through two heartbeats or more
MODELS = (TTFT[0], BURST[0], PACED[0], SLOW[0], SLOW_LONG[0], LONG_PACED[0])


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    verdicts: list[tuple[bool, str]] = field(default_factory=list)

    def goal(self, ok: bool, text: str) -> None:
        self.verdicts.append((ok, text))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def failures(outcomes: list[Outcome]) -> list[str]:
    return [o.error for o in outcomes if not o.ok]


async def ttft(targets: list[Target], c: int, per_worker: int, rounds: int, out: Figures) -> None:
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            outcomes = await run_concurrent(target, TTFT[0], TTFT[1], c, per_worker)
            if bad := failures(outcomes):
                raise RuntimeError(f"{target.name}: {bad[0]}")
            samples[target.name] += [o.first_token for o in outcomes]
    direct = samples["direct"]
    for name, values in samples.items():
        for q in (0.5, 0.99):
            key = f"ttft_c{c}_{name}_p{round(q * 100)}_ms"
            out.values[key] = percentile(values, q) * 1000
            out.values[f"ttft_c{c}_{name}_p{round(q * 100)}_overhead_ms"] = (
                percentile(values, q) - percentile(direct, q)
            ) * 1000


async def throughput(
    targets: list[Target], rounds: int, scenario: str, model: tuple[str, int], *, concurrency: int, out: Figures
) -> None:
    """Tokens per second and the relay's CPU per token, `concurrency` streams of `model` at once, per round."""
    rates: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    for _ in range(rounds):
        for target in targets:
            before, began = cpu_seconds(target.pid), time.perf_counter()
            outcomes = await run_concurrent(target, model[0], model[1], concurrency, 1)
            elapsed = time.perf_counter() - began
            if bad := failures(outcomes):
                raise RuntimeError(f"{target.name}: {bad[0]}")
            tokens = model[1] * len(outcomes)
            rates[target.name].append(tokens / elapsed)
            cpu[target.name].append((cpu_seconds(target.pid) - before) / tokens)
    _ratios(out, scenario, rates, cpu)


async def no_stall(targets: list[Target], levels: tuple[int, ...], out: Figures) -> None:
    """The highest concurrency at which no paced stream stalls (a gap over 200 ms, or an error)."""
    for target in targets:
        best = 0
        for level in levels:
            outcomes = await run_concurrent(target, PACED[0], PACED[1], level, 1)
            if failures(outcomes) or max(o.longest_gap for o in outcomes) > 0.2:
                break
            best = level
        out.values[f"paced_{target.name}_no_stall_concurrency"] = best


def _ratios(out: Figures, scenario: str, rates: dict[str, list[float]], cpu: dict[str, list[float]]) -> None:
    for name, rate in rates.items():
        out.values[f"{scenario}_{name}_tok_s"] = statistics.median(rate)
        out.values[f"{scenario}_{name}_cpu_us_per_token"] = statistics.median(cpu[name]) * 1e6
        for base in ("direct", "floor"):
            per_round = [a / b for a, b in zip(rate, rates[base], strict=True)]
            out.values[f"{scenario}_{name}_to_{base}"] = statistics.median(per_round)
        if name != "direct":
            per_round = [a / b for a, b in zip(cpu[name], cpu["floor"], strict=True)]
            out.values[f"{scenario}_{name}_cpu_to_floor"] = statistics.median(per_round)


async def open_streams(target: Target, count: int, out: Figures) -> None:
    """`count` slow streams (7 s each) opened at 1,000 a second, so that all are open at once a second after.

    The ramp is the rate a load balancer hands one replica in a surge; opening thousands in the same instant
    would measure the listen backlog and the load generator's own core instead of the relay."""
    ramp = max(1.0, count / 1000)
    model = SLOW if ramp + 2 < SLOW[1] * 0.5 else SLOW_LONG

    async def launch(index: int) -> Outcome:
        await asyncio.sleep(index * ramp / count)
        return await one_stream(target, *model)

    rss_before = rss_bytes(target.pid)
    with collector_paused():
        tasks = [asyncio.ensure_future(launch(i)) for i in range(count)]
        await asyncio.sleep(ramp + 1.0)
        rss_open = rss_bytes(target.pid)
        outcomes = await asyncio.gather(*tasks)
    name = f"open{count}_{target.name}"
    out.values[f"{name}_errors"] = len(bad := failures(outcomes))
    for error, times in collections.Counter(bad).most_common(5):
        print(f"{target.name}, {count} open streams: {times} x {error}", file=sys.stderr)
    out.values[f"{name}_ttft_p99_ms"] = percentile([o.first_token for o in outcomes if o.ok], 0.99) * 1000
    if target.pid is not None:
        out.values[f"{name}_kib_per_stream"] = (rss_open - rss_before) / count / 1024


async def paced_command_calls(target: Target, redis_url: str, admin_key: str) -> tuple[dict[str, int], int, int, float]:
    """Every command Redis ran (INFO commandstats counts the scripts' own commands too) around 100 paced streams
    that each outlive two heartbeats, up to the last stream's release: (calls by command, streams, tokens,
    seconds of streaming)."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.config_resetstat()
        began = time.perf_counter()
        outcomes = await run_concurrent(target, LONG_PACED[0], LONG_PACED[1], 100, 1)
        elapsed = time.perf_counter() - began
        if bad := failures(outcomes):
            raise RuntimeError(f"{target.name}: {bad[0]}")
        # A stream's lease and record go just after its client got the last frame: count them too.
        async with asyncio.timeout(10):
            while (await replica_counters(target.port, admin_key))["open_streams"]:  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # another process's state: only a new read tells
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls.pop("config", None)
    calls.pop("info", None)
    tokens = LONG_PACED[1] * len(outcomes)
    print(f"Redis commands, {target.name}, {tokens:,} tokens: {dict(sorted(calls.items()))}", file=sys.stderr)
    return calls, len(outcomes), tokens, elapsed


async def replica_counters(port: int, admin_key: str) -> dict[str, Any]:
    """A tokenrelay replica's own counters (`GET /admin/replica`)."""
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.get(
            f"http://127.0.0.1:{port}/admin/replica", headers={"authorization": f"Bearer {admin_key}"}
        )
    reply.raise_for_status()
    counters: dict[str, Any] = reply.json()
    return counters


async def redis_commands(target: Target, redis_url: str, admin_key: str, out: Figures) -> None:
    """Redis commands per 1,000 relayed tokens and per stream (a per-token command would show as hundreds)."""
    calls, streams, tokens, _ = await paced_command_calls(target, redis_url, admin_key)
    out.values["redis_commands_per_1000_tokens"] = sum(calls.values()) / tokens * 1000
    out.values["redis_commands_per_stream"] = sum(calls.values()) / streams
    out.values["redis_evalsha_per_stream"] = calls.get("evalsha", 0) / streams
