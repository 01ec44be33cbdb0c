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
from app.request_context import request_id_of

logger = logging.getLogger("tokenrelay.errors")


def _respond(request: Request[Any, Any, Any], error: ProxyError) -> Response[bytes]:
    return Response(
        content=error_body(error, request_id_of(request.scope)),
        status_code=error.status,
        media_type=MediaType.JSON,
        headers=error.response_headers(),
    )


def _proxy_error(request: Request[Any, Any, Any], exc: ProxyError) -> Response[bytes]:
    return _respond(request, exc)


def _http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    error: ProxyError
    if isinstance(exc, NotFoundException):
        error = RouteNotFound(f"no route for {request.method} {request.url.path}")
    elif isinstance(exc, MethodNotAllowedException):
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
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
    response = _respond(request, error)
    if isinstance(exc, MethodNotAllowedException) and exc.headers:
        response.headers.update(exc.headers)
    return response


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return _respond(request, InternalError("tokenrelay failed to handle the request"))


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProxyError: _proxy_error,
    HTTPException: _http_exception,
    Exception: _unexpected,
}
