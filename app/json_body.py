"""Request bodies: a JSON object or a 4xx naming what is wrong, and pydantic errors turned into that 4xx."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import msgspec
from litestar import Request
from pydantic import BaseModel, ValidationError

from app.errors import InvalidRequest, RequestTimeout

ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_body(request: Request[Any, Any, Any], seconds: float) -> bytes:
    """The whole body, or `RequestTimeout` (408) if it has not arrived within `seconds` (a stalled or trickling
    upload would otherwise hold its connection and its task for ever)."""
    try:
        async with asyncio.timeout(seconds):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {seconds:g} s") from None


def json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        # Requiring JSON also keeps cross-site HTML forms (which cannot send it without CORS) from starting streams.
        raise InvalidRequest(
            "the body must be JSON sent as `Content-Type: application/json`", field="content-type", status=415
        )
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    return data


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
