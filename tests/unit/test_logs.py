"""The log writer: every record reaches the output, in order and redacted, without the logging call waiting."""

from __future__ import annotations

import io
import logging
import threading

from app.logs import BatchingHandler, RedactingFormatter
from app.redaction import Redactor


class Output(io.StringIO):
    """Log output that tells when a write has landed."""

    def __init__(self) -> None:
        super().__init__()
        self.written = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        self.written.set()
        return count


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("tokenrelay.test", logging.INFO, __file__, 1, message, args, None)


def test_records_are_written_in_order_and_redacted() -> None:
    output = Output()
    handler = BatchingHandler(output, RedactingFormatter("%(message)s", Redactor(["configured-secret"])))
    try:
        for i in range(500):
            handler.handle(record("line %d key configured-secret", i))
        assert output.written.wait(5), "the writer thread wrote nothing"
    finally:
        handler.close()
    lines = output.getvalue().splitlines()
    assert lines == [f"line {i} key [redacted]" for i in range(500)]


def test_close_writes_what_is_still_pending() -> None:
    output = Output()
    handler = BatchingHandler(output, logging.Formatter("%(message)s"), interval=3600)
    handler.handle(record("the last words"))
    handler.close()
    assert output.getvalue() == "the last words\n"


def test_a_stalled_output_drops_records_past_the_bound_and_says_how_many() -> None:
    output = Output()
    handler = BatchingHandler(output, logging.Formatter("%(message)s"), interval=3600, max_pending=10)
    for i in range(25):
        handler.handle(record("line %d", i))
    handler.close()
    lines = output.getvalue().splitlines()
    assert lines[:10] == [f"line {i}" for i in range(10)]
    assert lines[10:] == ["tokenrelay: 15 log records dropped: the log output fell behind"]
