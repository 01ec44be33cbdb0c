"""The benchmark's processes: started pinned to a core, waited for, and read for CPU time and memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int | None) -> int:
    """The resident memory of `pid` and its children (the worker processes of `--workers`)."""
    if pid is None:
        return 0
    total = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1]) * 1024
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError):
            total += rss_bytes(int(child))
    return total


@contextlib.contextmanager
def process(args: list[str], env: dict[str, str], cpu: int | None) -> Iterator[subprocess.Popen[bytes]]:
    """`args` running on core `cpu`, or (None) on every core of the machine.

    The child starts with it, so the processes it starts (`--workers`) have it too. None is said outright: a
    child inherits its parent's mask, and the bench pins itself to the load generator's core, so "anywhere" had
    put two workers on that core with the upstream, Redis and the load generator, and left the other idle.
    """
    cores = {cpu} if cpu is not None else set(range(os.cpu_count() or 1))
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)  # this thread's mask, which the child starts with
    try:
        # Output to /dev/null: a pipe nobody reads would fill and stall the process's logging.
        proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        os.sched_setaffinity(0, own)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_serving(port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return
