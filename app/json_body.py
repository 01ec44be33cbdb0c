"""Request bodies: a JSON object or a 4xx naming what is wrong, and pydantic errors turned into that 4xx."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn, TypeVar

import msgspec
from pydantic import BaseModel, ValidationError

from app.errors import ClientClosed, InvalidRequest, RequestTimeout, RequestTooLarge
from app.incoming import Incoming

ModelT = TypeVar("ModelT", bound=BaseModel)

# Deeper than any real request (a tool's JSON schema included); bounded so that nothing downstream recurses far.
MAX_DEPTH = 64
# Integers an upstream can take as they are: JSON's safe range (IEEE doubles).
MAX_SAFE_INTEGER = 2**53 - 1


async def read_body(connection: Incoming, *, max_bytes: int, seconds: float) -> bytes:
    """The whole body, read from `receive` itself so that it needs no route handler (`app.hot_routes` has none):
    `RequestTooLarge` (413) past `max_bytes`, declared or counted, and `RequestTimeout` (408) if it has not
    arrived within `seconds` (a stalled or trickling upload would otherwise hold its connection and its task for
    ever). A client gone before its body was whole raises `ClientClosed`: there is no one left to answer."""
    declared = connection.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge("the request body is larger than this server accepts")
    receive = connection.receive
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - a request is always served by a task
    # A timer that cancels the task, not `asyncio.timeout`: its context manager was 27k instructions (callgrind)
    # on the way to the first token, for a body that is nearly always there already.
    deadline = _Deadline(task)
    timer = asyncio.get_running_loop().call_later(seconds, deadline.expire)
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientClosed("the client closed the connection before its request body was whole")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise RequestTooLarge("the request body is larger than this server accepts")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except asyncio.CancelledError:
        # Ours only if nothing else cancelled the task too (as `asyncio.timeout` decides).
        if deadline.expired and task.uncancel() <= deadline.cancelling:
            raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


class _Deadline:
    __slots__ = ("_task", "cancelling", "expired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self.cancelling = task.cancelling()
        self.expired = False

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()


def json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        # Requiring JSON also keeps cross-site HTML forms (which cannot send it without CORS) from starting streams.
        raise InvalidRequest(
            "the body must be JSON sent as `Content-Type: application/json`", field="content-type", status=415
        )
    try:
        data = msgspec.json.decode(body)
    except RecursionError:
        raise InvalidRequest(f"the body nests deeper than {MAX_DEPTH} levels", field="body", status=400) from None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:  # ValidationError: a number out of range
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    check_shape(data)
    return data


def check_shape(data: dict[str, Any]) -> None:
    """Refuse nesting past `MAX_DEPTH` (400) and integers past `MAX_SAFE_INTEGER` (422), naming where they are.

    One pass over the decoded value, iterative (a hostile body must not make this recurse either), that carries
    no paths: every request pays for this pass, and only a refused one needs to know where (`_refuse`, a second
    pass in the same order). Decoded JSON holds exact types, so `type(...) is` tells a bool from an int.
    """
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= MAX_DEPTH:
            _refuse(data)
        for child in value.values() if type(value) is dict else value:
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
            elif kind is int and abs(child) > MAX_SAFE_INTEGER:
                _refuse(data)


def _refuse(data: dict[str, Any]) -> NoReturn:
    """Raise the refusal for the first fault `check_shape` meets, with the path to it."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
                raise InvalidRequest(f"{path}: integer out of range (at most {MAX_SAFE_INTEGER})", field=path)
            continue
        if depth >= MAX_DEPTH:
            raise InvalidRequest(f"{path}: nests deeper than {MAX_DEPTH} levels", field=path or "body", status=400)
        for key, child in children:
            stack.append((child, depth + 1, f"{path}.{key}" if path else str(key)))
    raise AssertionError("check_shape found a fault that _refuse did not")


def validated(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """`model` from `data`, or an `InvalidRequest` naming the first offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        if not first["loc"]:
            field = "messages" if "messages" in message else "body"
        raise InvalidRequest(f"{field}: {message}", field=field) from None
