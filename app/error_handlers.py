"""Exceptions raised before a response starts, turned into `{"error":{...}}` JSON with the request id.

After a stream's response has started no handler can run (Litestar would try to start a second response);
`StreamRun` writes its own terminal `error` frame instead.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException
from litestar.exceptions.http_exceptions import (
    MethodNotAllowedException,
    NotAuthorizedException,
    PermissionDeniedException,
    RequestEntityTooLarge,
)
from litestar.types import ExceptionHandlersMap

from app.errors import (
    Forbidden,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RequestTooLarge,
    RouteNotFound,
    Unauthorized,
    error_body,
)
from app.replies import Reply
from app.request_context import request_id_of

logger = logging.getLogger("tokenrelay.errors")


def client_error(exc: Exception, method: str, path: str) -> ProxyError:
    """What the client is told about `exc`, raised before its response started; an unexpected one is logged."""
    if isinstance(exc, ProxyError):
        return exc
    if isinstance(exc, HTTPException):
        return _from_http_exception(exc, method, path)
    logger.exception("unhandled error on %s %r", method, path, exc_info=exc)
    return InternalError("tokenrelay failed to handle the request")


def _from_http_exception(exc: HTTPException, method: str, path: str) -> ProxyError:
    error: ProxyError
    if isinstance(exc, NotFoundException):
        error = RouteNotFound(f"no route for {method} {path}")
    elif isinstance(exc, MethodNotAllowedException):
        error = MethodNotAllowed(f"{method} is not allowed on {path}")
        error.extra_headers.update(exc.headers or {})  # Allow
    elif isinstance(exc, RequestEntityTooLarge):
        error = RequestTooLarge("the request body is larger than this server accepts")
    elif isinstance(exc, NotAuthorizedException):
        error = Unauthorized(exc.detail)
    elif isinstance(exc, PermissionDeniedException):
        error = Forbidden(exc.detail)
    elif exc.status_code < 500:
        error = InvalidRequest(exc.detail, field="request", status=exc.status_code)
    else:
        logger.error("HTTP %d raised by the framework: %s", exc.status_code, exc.detail)
        error = InternalError("tokenrelay failed to handle the request")
    return error


def error_reply(error: ProxyError, request_id: str) -> Reply:
    """`error` as a raw ASGI answer, for what is served outside Litestar (`app.hot_routes`)."""
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in error.response_headers().items()]
    return Reply.json_bytes(error.status, error_body(error, request_id), headers)


def _respond(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    error = client_error(exc, request.method, request.url.path)
    return Response(
        content=error_body(error, request_id_of(request.scope)),
        status_code=error.status,
        media_type=MediaType.JSON,
        headers=error.response_headers(),
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: _respond}
