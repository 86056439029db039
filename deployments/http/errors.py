"""The one error family of the service and its mapping to HTTP statuses.

Every failure the service can report is a ``ServiceError`` (or a model-layer
``ModelInputError``) and is turned into an HTTP status in exactly one place,
``error_response`` (used by the exception handlers and the edge
middleware). Handlers never pick status codes themselves.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import metrics
from model.errors import AudioTooLargeError, AudioTooLongError, ModelInputError, TextTooLongError

logger = logging.getLogger("ray.serve")


class ServiceError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


class ModelUnhealthy(Unavailable):
    """A replica answered with non-finite numbers: never served, retried elsewhere."""

    code = "model_unhealthy"


class Timeout(ServiceError):
    status, code = 504, "timeout"


# Model-layer input errors: too big is 413, anything else unusable is 422.
_MODEL_ERROR_STATUS = {AudioTooLargeError: 413, AudioTooLongError: 413, TextTooLongError: 413}
RETRY_AFTER_S = "1"


def error_body(code: str, message: str, request_id: str | None = None) -> dict:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def status_for(exc: Exception) -> tuple[int, str, str, dict]:
    """(status, code, message, headers) for any exception; the single mapping."""
    if isinstance(exc, ServiceError):
        headers = dict(exc.headers)
        if exc.status == 503:
            headers.setdefault("Retry-After", RETRY_AFTER_S)
        return exc.status, exc.code, exc.message, headers
    if isinstance(exc, ModelInputError):
        return _MODEL_ERROR_STATUS.get(type(exc), 422), exc.code, str(exc), {}
    return 500, "internal_error", "internal error; see the server log for the request id", {}


# Routing errors Starlette raises itself (unknown path, wrong method).
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_response(exc: Exception, request_id: str | None) -> JSONResponse:
    """The one place an exception becomes an HTTP response."""
    status, code, message, headers = status_for(exc)
    metrics.count_error(code, status)
    if status == 500:
        # A bug. Logged as its type and stack frames only: the text of an exception
        # from deep inside a tokenizer or decoder may quote the input, which must
        # never reach the logs.
        frames = "".join(traceback.format_tb(exc.__traceback__))
        logger.error("request %s failed: %s (message withheld)\n%s", request_id, type(exc).__name__, frames)
    elif status >= 500:
        logger.error("request %s failed: %s", request_id, message)
    # No X-Request-ID header here: Serve's proxy adds it to every response (same id).
    return JSONResponse(error_body(code, message, request_id), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc, getattr(request.state, "request_id", None))

    async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = ServiceError(str(exc.detail), _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}"),
                             dict(exc.headers or {}))
        error.status = exc.status_code
        return await handle(request, error)

    async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", []))
        return await handle(request, BadRequest(f"{where}: {first.get('msg', 'invalid request')}", "invalid_request"))

    app.add_exception_handler(ServiceError, handle)
    app.add_exception_handler(ModelInputError, handle)
    app.add_exception_handler(RequestValidationError, handle_validation)
    app.add_exception_handler(StarletteHTTPException, handle_http)
    app.add_exception_handler(Exception, handle)


async def not_found(scope, receive, send) -> None:
    """An ASGI app: the documented 404 for a path no route takes. It is the router default of
    the Gradio app mounted at "/", which takes every path the API's own routes do not:
    Gradio's own 404 body is ``{"detail": ...}``, not the API's error shape."""
    request = Request(scope, receive)
    response = error_response(NotFound("Not Found"), getattr(request.state, "request_id", None))
    await response(scope, receive, send)
