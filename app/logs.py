"""Log setup for a server process: every record carries its request's id, and no log write blocks the loop.

Records go through a queue to a listener thread that formats and writes them (the stdlib's QueueHandler /
QueueListener, as Litestar's own logging config does): measured in bench/, formatting and writing one line per
stream on the event loop cost about as much as the rest of a stream's bookkeeping.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue

from app.redaction import Redactor
from app.request_context import REQUEST_ID


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Read here, in the request's own task: the listener thread does not see its context.
        record.request_id = REQUEST_ID.get() or "-"
        return True


class WithoutQueryString(logging.Filter):
    """uvicorn's access log writes the path with its query string, which holds EventSource prompts and whatever a
    user pasted into a URL: keep the path only."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (args[0], args[1], args[2].partition("?")[0], args[3], args[4])
        return True


class RedactingFormatter(logging.Formatter):
    """The last line of defence: no configured secret or credential-shaped text is written, tracebacks included.
    It runs in the listener thread, off the event loop."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__(fmt)
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.clean(super().format(record))


class ThreadQueueHandler(logging.handlers.QueueHandler):
    """Hands the record itself to the listener thread, which formats it. The stdlib's `prepare` formats and copies
    every record on the event loop first, so that it can be pickled onto a process queue; a thread's queue needs
    neither. (tokenrelay's log calls pass immutable arguments: nothing changes under the listener's feet.)"""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure_logging(redactor: Redactor, level: str = "INFO") -> None:
    output = logging.StreamHandler()
    output.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", redactor))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = ThreadQueueHandler(records)
    handler.addFilter(RequestIdFilter())
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    atexit.register(listener.stop)  # flush what is queued when the process ends
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, WithoutQueryString) for f in access.filters):
        access.addFilter(WithoutQueryString())
