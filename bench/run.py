"""tokenrelay's benchmark: the proxy against a direct connection to the same fake upstream, in one run.

    python -m bench.run [--client aiohttp|httpx|httpx-aiohttp] [--quick]

Starts the fake OpenAI-compatible upstream (bench/fake_upstream.py) and the proxy under uvicorn (uvloop + httptools,
one worker) as processes of their own, pinned apart when there are two cores (proxy on CPU 0, upstream and load
client on CPU 1), then measures, direct and through the proxy, interleaved:

  (a) time to first token, p50 and p99, at concurrency 1 and 32 (64 tokens 5 ms apart, first token at 20 ms);
  (b) relayed tokens per second at concurrency 64 (1024 tokens, no delay);
  (c) the proxy's CPU time per relayed token (during b);
  (d) 1,000 concurrent streams of one token per 500 ms: first-token p99 and the proxy's memory per open stream.

The load client speaks raw HTTP/1.1 over asyncio streams, one connection per request, so its own cost is small and
the same on both paths.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvloop

ROOT = Path(__file__).resolve().parents[1]
FIRST_TOKEN = b" t0"


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str
    end_marker: bytes

    def request(self, model: str) -> bytes:
        if self.name == "direct":
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        else:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        payload = json.dumps(body).encode()
        head = (
            f"POST {self.path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
        )
        return head.encode() + payload


@dataclass(frozen=True)
class StreamTiming:
    first_token: float
    total: float


async def one_stream(target: Target, model: str, on_first: Callable[[], None] | None = None) -> StreamTiming:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(target.request(model))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{target.name}: {head.splitlines()[0]!r}")
        first = 0.0
        tail = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise RuntimeError(f"{target.name}: the stream ended without {target.end_marker!r}")
            window = tail + chunk
            if not first and FIRST_TOKEN in window:
                first = time.perf_counter() - started
                if on_first is not None:
                    on_first()
            if target.end_marker in window:
                return StreamTiming(first, time.perf_counter() - started)
            tail = window[-32:]
    finally:
        writer.close()


async def run_concurrent(target: Target, model: str, concurrency: int, per_worker: int) -> list[StreamTiming]:
    results: list[StreamTiming] = []

    async def worker() -> None:
        for _ in range(per_worker):
            results.append(await one_stream(target, model))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def many_streams(target: Target, proxy_pid: int, count: int) -> tuple[list[float], int]:
    """Open `count` streams 2 ms apart; return their first-token times and the proxy's RSS growth with all open."""
    all_open = asyncio.Event()
    seen = 0

    def first_seen() -> None:
        nonlocal seen
        seen += 1
        if seen == count:
            all_open.set()

    async def launch(index: int) -> StreamTiming:
        await asyncio.sleep(index * 0.002)
        return await one_stream(target, MANY_MODEL, first_seen)

    rss_before = rss_bytes(proxy_pid)
    tasks = [asyncio.ensure_future(launch(i)) for i in range(count)]
    await asyncio.wait_for(all_open.wait(), 60)
    rss_open = rss_bytes(proxy_pid)
    timings = await asyncio.gather(*tasks)
    return [t.first_token for t in timings], rss_open - rss_before


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], cpu: int | None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_until_serving(host: str, port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


def proxy_config(upstream_port: int, client: str, models: list[str]) -> str:
    model_lines = "".join(f'  "{m}": {{provider: fake, model: "{m}"}}\n' for m in models)
    return (
        "providers:\n  fake:\n    type: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        f"    http_client: {client}\n"
        "    timeouts: {connect: 5, first_byte: 30, read: 30, pool: 30}\n"
        # Limits on (so admission is measured) but high enough never to refuse the load generator.
        "limits: {requests_per_minute: 10000000, concurrent_streams: 100000}\n"
        f'default_model: "{models[0]}"\nmodels:\n{model_lines}'
    )


TTFT_MODEL = "gen?n=64&gap_ms=5&first_ms=20"
THROUGHPUT_MODEL = "gen?n=1024"
MANY_MODEL = "gen?n=10&gap_ms=500"  # a token at once, then one per 500 ms: 5 s per stream


async def measure(direct: Target, proxy: Target, proxy_pid: int, quick: bool) -> dict[str, float]:
    out: dict[str, float] = {}
    sequential = 15 if quick else 40
    rounds = 1 if quick else 2

    # warm up both paths (connection pools, imports, JIT-free but cache-warm)
    for target in (direct, proxy):
        await run_concurrent(target, TTFT_MODEL, 4, 2)

    # (a) TTFT, interleaved per round
    for concurrency, per_worker in ((1, sequential), (32, 3 if quick else 12)):
        samples: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(rounds):
            for target in (direct, proxy):
                timings = await run_concurrent(target, TTFT_MODEL, concurrency, per_worker)
                samples[target.name] += [t.first_token for t in timings]
        for name, values in samples.items():
            out[f"ttft_c{concurrency}_{name}_p50_ms"] = percentile(values, 0.5) * 1000
            out[f"ttft_c{concurrency}_{name}_p99_ms"] = percentile(values, 0.99) * 1000
        for q in ("p50", "p99"):
            out[f"ttft_c{concurrency}_overhead_{q}_ms"] = (
                out[f"ttft_c{concurrency}_proxy_{q}_ms"] - out[f"ttft_c{concurrency}_direct_{q}_ms"]
            )

    # (b) throughput and (c) CPU per token
    rates: dict[str, list[float]] = {"direct": [], "proxy": []}
    cpu_per_token: list[float] = []
    for _ in range(rounds + 1):
        for target in (direct, proxy):
            cpu_before = cpu_seconds(proxy_pid)
            began = time.perf_counter()
            timings = await run_concurrent(target, THROUGHPUT_MODEL, 64, 1)
            elapsed = time.perf_counter() - began
            tokens = 1024 * len(timings)
            rates[target.name].append(tokens / elapsed)
            if target is proxy:
                cpu_per_token.append((cpu_seconds(proxy_pid) - cpu_before) / tokens)
    out["throughput_direct_tok_s"] = statistics.median(rates["direct"])
    out["throughput_proxy_tok_s"] = statistics.median(rates["proxy"])
    out["throughput_ratio"] = out["throughput_proxy_tok_s"] / out["throughput_direct_tok_s"]
    out["cpu_us_per_token"] = statistics.median(cpu_per_token) * 1e6

    # (d) 1,000 concurrent slow streams, opened over two seconds so that all are open at once
    streams = 300 if quick else 1000
    for target in (direct, proxy):
        firsts, rss_delta = await many_streams(target, proxy_pid, streams)
        out[f"many_{target.name}_ttft_p50_ms"] = percentile(firsts, 0.5) * 1000
        out[f"many_{target.name}_ttft_p99_ms"] = percentile(firsts, 0.99) * 1000
        if target is proxy:
            out["many_streams"] = streams
            out["many_proxy_kib_per_stream"] = rss_delta / streams / 1024
    return out


def report(client: str, figures: dict[str, float]) -> str:
    f = figures
    lines = [
        f"tokenrelay bench (upstream client: {client}; ratios are proxy / direct in the same run)",
        "(a) time to first token, 64 tokens 5 ms apart, first at 20 ms:",
        f"    c=1   direct p50 {f['ttft_c1_direct_p50_ms']:.2f} ms p99 {f['ttft_c1_direct_p99_ms']:.2f} ms | "
        f"proxy p50 {f['ttft_c1_proxy_p50_ms']:.2f} ms p99 {f['ttft_c1_proxy_p99_ms']:.2f} ms | "
        f"overhead p50 {f['ttft_c1_overhead_p50_ms']:+.2f} ms (target <= 1.0), p99 {f['ttft_c1_overhead_p99_ms']:+.2f}",
        f"    c=32  direct p50 {f['ttft_c32_direct_p50_ms']:.2f} ms p99 {f['ttft_c32_direct_p99_ms']:.2f} ms | "
        f"proxy p50 {f['ttft_c32_proxy_p50_ms']:.2f} ms p99 {f['ttft_c32_proxy_p99_ms']:.2f} ms | "
        f"overhead p50 {f['ttft_c32_overhead_p50_ms']:+.2f} ms, p99 {f['ttft_c32_overhead_p99_ms']:+.2f} ms "
        "(target <= 10)",
        f"(b) throughput at c=64, 1024 tokens: direct {f['throughput_direct_tok_s']:,.0f} tok/s, "
        f"proxy {f['throughput_proxy_tok_s']:,.0f} tok/s, ratio {f['throughput_ratio']:.2f} (target >= 0.6)",
        f"(c) proxy CPU per relayed token: {f['cpu_us_per_token']:.2f} us",
        f"(d) {f['many_streams']:.0f} concurrent streams, one token per 500 ms: first token p99 direct "
        f"{f['many_direct_ttft_p99_ms']:.1f} ms, proxy {f['many_proxy_ttft_p99_ms']:.1f} ms (target <= 150); "
        f"proxy memory {f['many_proxy_kib_per_stream']:.1f} KiB per open stream (target <= 40)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", default="httptools", choices=["httptools", "aiohttp", "httpx", "httpx-aiohttp"])
    parser.add_argument("--quick", action="store_true", help="fewer samples and 300 slow streams")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    two_cores = (os.cpu_count() or 1) >= 2
    if two_cores:
        os.sched_setaffinity(0, {1})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream_cmd = [sys.executable, "-m", "bench.fake_upstream"]
    with process(upstream_cmd, env, 1 if two_cores else None) as upstream:
        assert upstream.stdout is not None
        upstream_port = int(upstream.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "bench.yaml"
            config.write_text(proxy_config(upstream_port, args.client, [TTFT_MODEL, THROUGHPUT_MODEL, MANY_MODEL]))
            proxy_port = 18_000 + os.getpid() % 1000
            proxy_cmd = [
                sys.executable, "-m", "uvicorn", "app.factory:create_app_from_environment", "--factory",
                "--loop", "uvloop", "--http", "httptools", "--host", "127.0.0.1", "--port", str(proxy_port),
                "--no-access-log", "--log-level", "warning", "--backlog", "4096", "--no-proxy-headers",
            ]  # fmt: skip
            with process(proxy_cmd, {**env, "TOKENRELAY_CONFIG": str(config)}, 0 if two_cores else None) as proxy:
                direct = Target("direct", "127.0.0.1", upstream_port, "/v1/chat/completions", b"[DONE]")
                via = Target("proxy", "127.0.0.1", proxy_port, "/chat/stream", b"event: done")

                async def bench() -> dict[str, float]:
                    await wait_until_serving("127.0.0.1", proxy_port)
                    return await measure(direct, via, proxy.pid, args.quick)

                figures = _run(bench)
    print(report(args.client, figures))
    if args.json:
        args.json.write_text(json.dumps({"client": args.client, **figures}, indent=2))


def _run(bench: Callable[[], Awaitable[dict[str, float]]]) -> dict[str, float]:
    async def wrapped() -> dict[str, float]:
        return await bench()

    return uvloop.run(wrapped())


if __name__ == "__main__":
    main()
