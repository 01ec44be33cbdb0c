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

from app.request_context import REQUEST_ID


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Read here, in the request's own task: the listener thread does not see its context.
        record.request_id = REQUEST_ID.get() or "-"
        return True


def configure_logging(level: str = "INFO") -> None:
    output = logging.StreamHandler()
    output.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    handler.addFilter(RequestIdFilter())
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    atexit.register(listener.stop)  # flush what is queued when the process ends
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
