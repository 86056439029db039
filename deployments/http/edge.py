"""The edge every request passes, API and Gradio alike: a request id, a body cap, the API key.

``EdgeMiddleware`` reads its settings from ``scope["app"].state`` (filled by the
driver's ``__init__``), never from a module global: Serve serves a pickled copy of
the FastAPI app, and a global here could belong to another copy.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import uuid
from typing import Optional

from fastapi import Request

from deployments import metrics, tracing
from deployments.http.errors import PayloadTooLarge, ServiceError, Unauthorized, error_response
from deployments.http.oip import protocol_error
from deployments.ray_env import AFFINITY_COOKIE

# Paths served without the API key: the liveness probe Kubernetes and Serve use.
OPEN_PATHS = frozenset({"/healthz", "/v2/health/live", "/v2/health/ready"})  # + the V2 probes (oip.py)

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Routes that keep no per-session state: they need no affinity cookie.
STATELESS_PREFIXES = ("/v1/", "/v2/", "/healthz", "/docs", "/openapi.json")


def affinity_header(request: Request) -> Optional[tuple[bytes, bytes]]:
    """A ``Set-Cookie`` that pins this UI session to one Driver replica, for a UI
    request that has none yet. The front door hashes the cookie (``deployments.ray_env``);
    ``gradio_client`` keeps the cookies of its first response for all later calls."""
    if AFFINITY_COOKIE in request.cookies or route_path(request.scope).startswith(STATELESS_PREFIXES):
        return None
    cookie = f"{AFFINITY_COOKIE}={uuid.uuid4().hex}; Path=/; HttpOnly; SameSite=Lax"
    return b"set-cookie", cookie.encode()


def request_id_for(request: Request) -> str:
    # Serve's proxy already picked one (the client's X-Request-ID, else a fresh
    # uuid) and stamps it on every Serve log line; using the same one keeps our
    # lines, the access log and the response header in agreement.
    try:
        from ray.serve.context import _get_serve_request_context

        candidate = _get_serve_request_context().request_id
    except Exception:  # outside a Serve replica
        candidate = request.headers.get("x-request-id", "")
    # Client-chosen ids end up in logs and JSON: anything unusual is replaced.
    return candidate if _SAFE_REQUEST_ID.fullmatch(candidate or "") else uuid.uuid4().hex


def route_path(scope) -> str:
    """The path inside this app: without Serve's route prefix (scope["root_path"])."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def authorized(request: Request, expected: str) -> bool:
    """``Authorization: Bearer <key>`` (API clients) or HTTP Basic with the key as
    password (browsers: the native login prompt, then sent on every UI request)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), expected.encode())


def refusal_response(request: Request, refusal: ServiceError, request_id: str):
    """The edge's refusal in the form its route's API speaks: the Open Inference Protocol's
    ``{"error": "..."}`` under /v2, the service's error body everywhere else."""
    if route_path(request.scope).startswith("/v2/"):
        return protocol_error(refusal, request_id)
    return error_response(refusal, request_id)


class EdgeMiddleware:
    """What every request passes, API and Gradio alike: an id, a body cap, the key.

    Plain ASGI rather than ``@app.middleware``: Starlette's BaseHTTPMiddleware
    raises "No response returned" whenever a client hangs up, which would log an
    error for every abandoned request. Its refusals are rendered by the same
    ``error_response`` the exception handlers use.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # Every answer below, refusals included, is counted once its status is known.
        with metrics.observe_request(scope, send) as send, tracing.span("edge", {"http.method": scope["method"]}):
            await self._handle(scope, receive, send)

    async def _handle(self, scope, receive, send):
        request = Request(scope)
        request.state.request_id = request_id = request_id_for(request)
        # Kept for a Gradio event, which runs later in the queue's task (deployments/ui/event_scope.py).
        request.state.trace_context = tracing.current_context()
        # scope["app"] (not the driver module's ``app``): Serve serves a pickled copy of
        # the app, and a module global may belong to another copy. Outside the Gradio
        # mount, scope["app"] is the served app whose state the driver's __init__ filled.
        state = scope["app"].state
        refusal = self._refusal(request, state.settings, state.api_key)
        if refusal is not None:
            return await refusal_response(request, refusal, request_id)(scope, receive, send)

        if "content-length" not in request.headers and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no length to refuse up front. Read it here, up to the
            # cap, so every route (Gradio's included) gets the same clean 413; an app
            # that streams a body has no way to answer one once it has started.
            cap = state.settings.limits.body_cap(route_path(scope))
            receive = await self._buffered(receive, cap)
            if receive is None:
                too_large = PayloadTooLarge(f"request body exceeds the limit of {cap} bytes")
                return await refusal_response(request, too_large, request_id)(scope, receive, send)

        # Serve's proxy adds the X-Request-ID response header itself (the same id).
        started = False
        affinity = affinity_header(request)

        async def send_tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if affinity is not None:
                    message = {**message, "headers": [*message.get("headers", []), affinity]}
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            # A bug (bad input never gets here). Answered here, rather than by
            # Starlette's last-resort handler that re-raises it for Serve to log
            # with its message, which could quote the input.
            if started:
                raise
            await error_response(exc, request_id)(scope, receive, send)

    @staticmethod
    async def _buffered(receive, cap: int):
        """A ``receive`` replaying the whole body, or None once it passes ``cap`` bytes."""
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away: the app will see that on its next receive
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > cap:
                return None
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        return replay

    @staticmethod
    def _refusal(request: Request, settings, expected: str) -> Optional[ServiceError]:
        """``settings`` is the driver's ``DriverSettings`` (its ``limits`` are used here)."""
        declared = request.headers.get("content-length", "")
        path = route_path(request.scope)
        cap = settings.limits.body_cap(path)
        if declared.isdigit() and int(declared) > cap:
            return PayloadTooLarge(f"request body is {declared} bytes; the limit is {cap}")
        if expected and path not in OPEN_PATHS and not authorized(request, expected):
            # Browsers get a Basic challenge (their native login prompt); API clients a Bearer one.
            browser = not path.startswith(("/v1/", "/v2/"))
            challenge = 'Basic realm="sentiment", charset="UTF-8"' if browser else "Bearer"
            return Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": challenge})
        return None
