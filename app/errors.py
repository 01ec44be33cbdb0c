"""The error tree: every failure a client can see, with its code, HTTP status and who is at fault.

    ProxyError
    ├── CallerError                      fault: caller (the request itself is wrong)
    │   ├── InvalidRequest               400/415/422 invalid_request (names the field)
    │   ├── ModelNotFound                404 model_not_found
    │   ├── RouteNotFound                404/405 not_found / method_not_allowed
    │   ├── RequestTooLarge              413 request_too_large
    │   ├── RequestTimeout               408 request_timeout (the body did not arrive in time)
    │   ├── ClientClosed                 499 client_closed (gone before its body was whole; for the log)
    │   ├── StreamNotFound               404 stream_not_found (unknown, expired or another principal's)
    │   └── StreamTruncated              410 stream_truncated (a resume from frames the log has dropped)
    ├── PolicyError                      fault: policy (the request is fine, a rule refused it)
    │   ├── Unauthorized                 401 unauthorized
    │   ├── Forbidden                    403 forbidden
    │   └── RateLimited                  429 rate_limited (+ Retry-After)
    ├── UpstreamError                    fault: upstream; 502 upstream_error
    │   ├── UpstreamUnavailable          502 upstream_unavailable (refused, reset, 5xx)
    │   ├── UpstreamTimeout              504 upstream_timeout (connect, first byte, idle gap)
    │   ├── UpstreamRateLimited          429 upstream_rate_limited (+ Retry-After)
    │   ├── UpstreamModelNotFound        404 model_not_found (the upstream does not know the model)
    │   └── UpstreamRejectedRequest      400 invalid_request (the upstream refused the parameters)
    └── InternalError                    fault: proxy; 500 internal
        ├── LimitsUnavailable            503 internal (limits store down, fail_closed)
        ├── ServerShutdown               503 server_shutdown
        ├── StoreUnavailable             503 internal (the stream logs' store is down)
        └── StreamLost                   stream_lost (the replica producing a stream died; a frame only)

Before a stream's 200 is committed an error becomes its HTTP status and a JSON body; after it, an `error`
frame carrying the same code. Transport exceptions are translated to this tree in one place per HTTP client
(`providers/http_client.py`), never at the call sites.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

Fault = Literal["caller", "policy", "upstream", "proxy"]


class ProxyError(Exception):
    """Base of every error tokenrelay reports to a client."""

    code: ClassVar[str] = "internal"
    status: int = 500  # an instance may narrow it (InvalidRequest: 400, 415 or 422)
    fault: ClassVar[Fault] = "proxy"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.extra_headers: dict[str, str] = {}

    def response_headers(self) -> dict[str, str]:
        """Headers the HTTP error response must carry besides its JSON body."""
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return headers


class CallerError(ProxyError):
    fault = "caller"
    status = 400
    code = "invalid_request"


class InvalidRequest(CallerError):
    status = 422

    def __init__(self, message: str, *, field: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


class ModelNotFound(CallerError):
    status = 404
    code = "model_not_found"


class RouteNotFound(CallerError):
    status = 404
    code = "not_found"


class StreamCancelled(CallerError):
    """The stream was stopped by an operator or by its own client (DELETE), not by a failure."""

    status = 409
    code = "cancelled"


class MethodNotAllowed(CallerError):
    status = 405
    code = "method_not_allowed"


class RequestTooLarge(CallerError):
    status = 413
    code = "request_too_large"


class RequestTimeout(CallerError):
    """The client did not send its request in time; the connection is closed after the answer."""

    status = 408
    code = "request_timeout"

    def response_headers(self) -> dict[str, str]:
        return {**super().response_headers(), "connection": "close"}


class ClientClosed(CallerError):
    """The client left before its request body was whole. Nothing can reach it; nginx's 499 tells the log why."""

    status = 499
    code = "client_closed"


class StreamNotFound(CallerError):
    """No stream by that id for this caller: unknown, expired and another principal's look the same."""

    status = 404
    code = "stream_not_found"


class StreamTruncated(CallerError):
    """A resume from frames older than the stream's log still holds."""

    status = 410
    code = "stream_truncated"


class PolicyError(ProxyError):
    fault = "policy"
    status = 403
    code = "forbidden"


class Unauthorized(PolicyError):
    status = 401
    code = "unauthorized"

    def response_headers(self) -> dict[str, str]:
        # RFC 9110: a 401 says how to authenticate.
        return {**super().response_headers(), "www-authenticate": 'Bearer realm="tokenrelay"'}


class Forbidden(PolicyError):
    pass


class RateLimited(PolicyError):
    status = 429
    code = "rate_limited"
    retryable = True


class UpstreamError(ProxyError):
    fault = "upstream"
    status = 502
    code = "upstream_error"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "upstream_rate_limited"


class UpstreamModelNotFound(UpstreamError):
    status = 404
    code = "model_not_found"
    retryable = False


class UpstreamRejectedRequest(UpstreamError):
    status = 400
    code = "invalid_request"
    retryable = False


class InternalError(ProxyError):
    pass


class LimitsUnavailable(InternalError):
    """The shared rate-limit store is down and the proxy is configured to fail closed."""

    status = 503
    retryable = True


class ServerShutdown(InternalError):
    status = 503
    code = "server_shutdown"
    retryable = True


class StoreUnavailable(InternalError):
    """The shared store of stream logs did not answer, so a resume cannot be served now."""

    status = 503
    retryable = True


class StreamLost(InternalError):
    """The replica producing a stream died before its end: what the log holds was replayed, no more will come."""

    status = 502
    code = "stream_lost"
    retryable = True


# OpenAI's error `type` for each code, so that OpenAI clients classify tokenrelay's errors as they would OpenAI's.
_OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "model_not_found": "invalid_request_error",
    "not_found": "invalid_request_error",
    "method_not_allowed": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "request_timeout": "invalid_request_error",
    "unauthorized": "authentication_error",
    "forbidden": "permission_error",
    "rate_limited": "rate_limit_error",
    "upstream_rate_limited": "rate_limit_error",
}


def error_type(code: str) -> str:
    return _OPENAI_TYPES.get(code, "api_error")


class _ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str
    request_id: str | None
    field: str | None = None


class _ErrorBody(msgspec.Struct, omit_defaults=True):
    error: _ErrorDetail


_encoder = msgspec.json.Encoder()


def error_body(error: ProxyError, request_id: str | None) -> bytes:
    """The JSON body of an error response, one shape everywhere, readable by OpenAI clients:
    `{"error":{"message","type","param","code","request_id"[,"field"]}}` (`field` and `param` name the input).
    """
    field = error.field if isinstance(error, InvalidRequest) else None
    detail = _ErrorDetail(error.message, error_type(error.code), field, error.code, request_id, field)
    return _encoder.encode(_ErrorBody(detail))
