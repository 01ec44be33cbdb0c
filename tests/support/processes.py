"""`tokenrelay serve` as a real process: started on a free port with a config file, its log captured line by line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tokenrelay_command() -> list[str]:
    script = shutil.which("tokenrelay", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "app.cli"]


class ServedProcess:
    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_lines(self, predicate: Callable[[list[str]], bool], seconds: float = 15) -> list[str]:
        """Block until the log satisfies `predicate` (call it from a worker thread in async tests)."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.lines) or self.process.poll() is not None, seconds):
                raise TimeoutError(f"log condition not met within {seconds} s:\n{''.join(self.lines)}")
            if not predicate(self.lines):
                raise AssertionError(f"tokenrelay exited ({self.process.returncode}):\n{''.join(self.lines)}")
            return list(self.lines)

    def signal(self, sig: int) -> float:
        """Send `sig` to the whole process group (supervisor and workers alike); returns when it was sent."""
        os.killpg(self.process.pid, sig)
        return time.monotonic()

    def wait(self, seconds: float) -> int:
        code = self.process.wait(seconds)
        self._reader.join(5)
        return code

    def log(self) -> str:
        return "".join(self.lines)


@contextmanager
def served(config: Path, *, workers: int = 1, args: tuple[str, ...] = (), **popen: Any) -> Iterator[ServedProcess]:
    """Run `tokenrelay serve --config <config>` until every worker is ready; stopped (SIGKILL) on exit if alive."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENRELAY_CONFIG", "REDIS_URL")}
    command = [*tokenrelay_command(), "serve", "--port", str(port), "--config", str(config)]
    if workers > 1:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=popen.pop("env", env),
        start_new_session=True,
        **popen,
    )
    served_process = ServedProcess(process, port)
    try:
        served_process.wait_for_lines(lambda lines: sum("Application startup complete" in x for x in lines) >= workers)
        yield served_process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        served_process._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
