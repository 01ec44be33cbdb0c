"""Log setup for a server process: every record carries its request's id, and no log write blocks the loop.

Records go to a writer thread that formats and writes them in batches (`BatchingHandler`): measured in bench/,
formatting and writing one line per stream on the event loop cost about as much as the rest of a stream's
bookkeeping, and waking a listener thread per record (the stdlib's QueueListener) about a quarter of it.
"""

from __future__ import annotations

import atexit
import collections
import logging
import sys
import threading
from typing import TextIO

from app.redaction import Redactor
from app.request_context import REQUEST_ID


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Read here, in the request's own task: the writer thread does not see its context.
        record.request_id = REQUEST_ID.get() or "-"
        return True


class RedactingFormatter(logging.Formatter):
    """The last line of defence: no configured secret or credential-shaped text is written, tracebacks included.
    It runs in the writer thread, off the event loop."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__(fmt)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.clean(super().format(record))


class BatchingHandler(logging.Handler):
    """Records are handed to a writer thread that formats and writes them in batches, every `interval` seconds.

    Handing over is an append to a deque: no lock, no wake-up. The stdlib's QueueHandler wakes its listener
    thread for every record, and at one access line and one stream line per request those wake-ups, and the
    thread taking the GIL in the middle of the next request, cost a quarter of a short stream's CPU (bench/).
    Nothing here blocks the loop: a stalled log reader stalls only the writer thread, and past `max_pending`
    records are dropped (and counted in the log) rather than held without bound.
    """

    def __init__(
        self, stream: TextIO, formatter: logging.Formatter, *, interval: float = 0.05, max_pending: int = 100_000
    ) -> None:
        super().__init__()
        self._stream = stream
        self._formatter = formatter
        self._interval = interval
        self._max_pending = max_pending
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self._dropped = 0
        self._reported = 0
        self._stopping = threading.Event()
        self._writer = threading.Thread(target=self._write_batches, name="tokenrelay-log", daemon=True)
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        # The base class takes the handler's lock around emit; a deque's append needs none.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
        else:
            self._pending.append(record)

    def flush(self) -> None:
        """Write what is pending now (from the writer thread, or once it has stopped)."""
        lines: list[str] = []
        while True:
            try:
                record = self._pending.popleft()
            except IndexError:
                break
            try:
                lines.append(self._formatter.format(record))
            except Exception:
                self.handleError(record)
        if (dropped := self._dropped) > self._reported:
            lines.append(f"tokenrelay: {dropped - self._reported} log records dropped: the log output fell behind")
            self._reported = dropped
        if lines:
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the log's reader is gone: there is nowhere left to say so

    def close(self) -> None:
        self._stopping.set()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join(5)
        self.flush()  # what came in after the writer's last batch
        super().close()

    def _write_batches(self) -> None:
        while not self._stopping.wait(self._interval):
            self.flush()


def configure_logging(redactor: Redactor, level: str = "INFO") -> None:
    # Fields the format never shows are not gathered for each record (the Logging HOWTO's "Optimization"): the
    # caller's file and line (a walk up the stack), the thread, the process. Two records a request: ~2 µs each.
    # These are the logging module's own, process-wide: no handler of this process shows those fields either.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    formatter = RedactingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", redactor)
    handler = BatchingHandler(sys.stderr, formatter)
    handler.addFilter(RequestIdFilter())
    atexit.register(handler.close)  # write what is pending when the process ends
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, BatchingHandler):
            previous.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
