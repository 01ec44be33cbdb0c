"""Capture the proxy's log records (it runs in a thread of this process) and wait for them without sleeping."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio


class RecordCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def messages(self, containing: str = "") -> list[str]:
        return [m for r in list(self.records) if containing in (m := r.getMessage())]

    async def wait_for(self, predicate: Callable[[list[str]], bool], seconds: float = 5.0) -> list[str]:
        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(lambda: predicate(self.messages()), seconds)

        if not await anyio.to_thread.run_sync(wait):
            raise TimeoutError(f"log condition not met within {seconds} s; saw {self.messages()}")
        return self.messages()


@contextmanager
def collect_logs(name: str = "tokenrelay") -> Iterator[RecordCollector]:
    logger = logging.getLogger(name)
    collector = RecordCollector()
    previous = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(previous)
