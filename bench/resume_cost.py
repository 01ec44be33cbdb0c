"""The resume scenario of `python -m bench.run`: what a stream's log costs, against the same stream without one."""

from __future__ import annotations

import statistics
import time

from bench.loadgen import Target, run_concurrent
from bench.processes import cpu_seconds
from bench.scenarios import BURST, TTFT, Figures, failures, paced_command_calls, percentile, replica_counters

BURST_PAIRS_PER_ROUND = 12


async def resume_cost(
    off: Target, on: Target, on_redis: Target, *, redis_url: str, admin_key: str, rounds: int, out: Figures
) -> None:
    """What a log costs: resumable `/chat/stream` (its producer a task of its own, a log its watcher follows)
    against the same stream served straight to its client, interleaved; then, with Redis, what the flusher sends
    for 100 paced streams."""
    rates: dict[str, list[float]] = {off.name: [], on.name: []}
    cpu: dict[str, list[float]] = {off.name: [], on.name: []}
    firsts: dict[str, list[float]] = {off.name: [], on.name: []}
    # A burst round takes a fifth of a second, and this machine's noise (other tenants' steal time) moves a round
    # by 25 %: many short rounds, each pair run back to back (in alternating order), and the ratio judged is the
    # median of the pairs' ratios.
    for pair in range(BURST_PAIRS_PER_ROUND * rounds):
        for target in (off, on) if pair % 2 == 0 else (on, off):
            before, began = cpu_seconds(target.pid), time.perf_counter()
            outcomes = await run_concurrent(target, BURST[0], BURST[1], 64, 1)
            elapsed = time.perf_counter() - began
            if bad := failures(outcomes):
                raise RuntimeError(f"{target.name}: {bad[0]}")
            tokens = BURST[1] * len(outcomes)
            rates[target.name].append(tokens / elapsed)
            cpu[target.name].append((cpu_seconds(target.pid) - before) / tokens)
    for _ in range(rounds):
        for target in (off, on):
            timed = await run_concurrent(target, TTFT[0], TTFT[1], 1, 10)
            firsts[target.name] += [o.first_token for o in timed if o.ok]
    pairs = zip(rates[on.name], rates[off.name], strict=True)
    out.values["resume_burst_ratio"] = statistics.median(a / b for a, b in pairs)
    for name in (off.name, on.name):
        out.values[f"resume_burst_{name}_tok_s"] = statistics.median(rates[name])
        out.values[f"resume_burst_{name}_cpu_us_per_token"] = statistics.median(cpu[name]) * 1e6
        out.values[f"resume_ttft_c1_{name}_p50_ms"] = percentile(firsts[name], 0.5) * 1000
    before = (await replica_counters(on_redis.port, admin_key))["log_flusher"]["pipelines"]
    calls, _, tokens, elapsed = await paced_command_calls(on_redis, redis_url, admin_key)
    after = (await replica_counters(on_redis.port, admin_key))["log_flusher"]["pipelines"]
    out.values["resume_flusher_pipelines_per_second"] = (after - before) / elapsed
    out.values["resume_redis_commands_per_1000_tokens"] = sum(calls.values()) / tokens * 1000
    out.values["resume_redis_xadd_per_1000_tokens"] = calls.get("xadd", 0) / tokens * 1000
    out.values["resume_redis_xadd_per_second"] = calls.get("xadd", 0) / elapsed


def judge_resume(out: Figures) -> None:
    v = out.values
    ratio = v["resume_burst_ratio"]
    out.goal(ratio >= 0.95, f"chat-resume: burst tokens/s {ratio:.2f} x resume off (>= 0.95)")
    c1 = v["resume_ttft_c1_chat-resume_p50_ms"] - v["resume_ttft_c1_chat_p50_ms"]
    out.goal(c1 <= 0.3, f"chat-resume: TTFT p50 overhead at c=1 {c1:+.2f} ms beyond resume off (<= 0.3)")
    per_1000 = v["resume_redis_commands_per_1000_tokens"]
    out.goal(per_1000 < 1000, f"chat-resume-redis: {per_1000:.1f} Redis commands per 1,000 tokens (none per token)")
