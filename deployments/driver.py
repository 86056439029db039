"""The ingress: JSON API and Gradio UI on one FastAPI app, composing the model deployments."""

import asyncio
import base64
import binascii
import hmac
import logging
import math
import os
import re
import uuid
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle
from transformers import AutoConfig, AutoFeatureExtractor

from deployments import api
from deployments.request_parsing import PredictInput, read_predict_request
from model.audio import AudioLimits, decode_audio
from model.bundle import Bundle

logger = logging.getLogger("ray.serve")

# A replica that died or is unreachable. Encoders and fusion are pure functions of
# their input, so a request that hit one is safe to send again. ActorDiedError and
# ActorUnavailableError are RayActorError subclasses. Killing replicas under load
# (tests/test_reliability.py) showed the driver ActorDiedError itself and, for the
# audio features passed on to FusionHead, RayTaskError(ActorDiedError); Ray 2.60's
# router may also report a dead producer of an argument as a RayServeException
# whose __cause__ is the ActorDiedError. ``failure_in`` looks through all three.
# Serve's router resends many such requests on its own before the driver sees them.
RETRYABLE = (RayActorError,)

# Paths served without the API key: the liveness probe Kubernetes and Serve use.
OPEN_PATHS = frozenset({"/healthz"})

_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class DriverSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: api.Limits = api.Limits()
    # Upper bound on one /v1/predict call inside the driver (queueing + models);
    # keep it below http_options.request_timeout_s so the client gets our 504.
    request_timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(2, ge=0, le=5)
    ui: bool = True
    # Name of the environment variable holding the API key; unset or empty = no auth.
    # When set, every route but /healthz needs it, the Gradio UI included.
    api_key_env: str = "SENTIMENT_API_KEY"


def failure_in(exc: BaseException, kinds: tuple) -> Optional[BaseException]:
    """The first exception of ``kinds`` in ``exc``'s cause chain (see RETRYABLE)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def receptive_field(conv_kernel, conv_stride) -> int:
    """Samples a Wav2Vec2 feature encoder needs to produce one frame."""
    field, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def check_output(result: dict) -> None:
    """A model that has gone bad (NaN weights) answers NaN: refuse to serve it.

    Retryable (another replica may be healthy); the replica's health check fails
    on the same fault and Serve replaces it.
    """
    numbers = [result["sentiment"], *result["scores"].values()]
    for branch in result.get("modalities", {}).values():
        numbers += [branch["sentiment"], *branch["scores"].values()]
    if not all(math.isfinite(x) for x in numbers):
        raise api.ModelUnhealthy("the model produced an invalid (non-finite) output; retry shortly")


# NOTE: @serve.ingress pickles this app, and with it the Driver class, when the
# class is decorated: a global the class uses must be defined ABOVE the class, or
# the replica raises NameError. (The same pickling is why EdgeMiddleware reads
# scope["app"].state rather than the module's ``app``.)
app = FastAPI(
    title="Multimodal sentiment",
    description="Text + audio sentiment: BERT-family and Wav2Vec2-family encoders fused by cross-modal attention.",
    version="0.1.0",
)
api.install_error_handlers(app)


def _request_id(request: Request) -> str:
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


def _route_path(scope) -> str:
    """The path inside this app: without Serve's route prefix (scope["root_path"])."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


def _authorized(request: Request, expected: str) -> bool:
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


class EdgeMiddleware:
    """What every request passes, API and Gradio alike: an id, a body cap, the key.

    Plain ASGI rather than ``@app.middleware``: Starlette's BaseHTTPMiddleware
    raises "No response returned" whenever a client hangs up, which would log an
    error for every abandoned request. Its refusals are rendered by the same
    ``api.error_response`` the exception handlers use.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        request.state.request_id = request_id = _request_id(request)
        # scope["app"] (not the module's ``app``): Serve serves a pickled copy of the
        # app, and this class's globals may belong to another copy. Outside the
        # Gradio mount, scope["app"] is the served app whose state __init__ filled.
        state = scope["app"].state
        refusal = self._refusal(request, state.settings, state.api_key)
        if refusal is not None:
            return await api.error_response(refusal, request_id)(scope, receive, send)

        if "content-length" not in request.headers and scope["method"] in ("POST", "PUT", "PATCH"):
            # A chunked body has no length to refuse up front. Read it here, up to the
            # cap, so every route (Gradio's included) gets the same clean 413; an app
            # that streams a body has no way to answer one once it has started.
            receive = await self._buffered(receive, state.settings.limits.max_body_bytes)
            if receive is None:
                cap = state.settings.limits.max_body_bytes
                too_large = api.PayloadTooLarge(f"request body exceeds the limit of {cap} bytes")
                return await api.error_response(too_large, request_id)(scope, receive, send)

        # Serve's proxy adds the X-Request-ID response header itself (the same id).
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            # A bug (bad input never gets here). Answered here, rather than by
            # Starlette's last-resort handler that re-raises it for Serve to log
            # with its message, which could quote the input.
            if started:
                raise
            await api.error_response(exc, request_id)(scope, receive, send)

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
    def _refusal(request: Request, settings: "DriverSettings", expected: str) -> Optional[api.ServiceError]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.limits.max_body_bytes:
            return api.PayloadTooLarge(f"request body is {declared} bytes; the limit is {settings.limits.max_body_bytes}")
        path = _route_path(request.scope)
        if expected and path not in OPEN_PATHS and not _authorized(request, expected):
            # Browsers get a Basic challenge (their native login prompt); API clients a Bearer one.
            browser = not path.startswith("/v1/")
            challenge = 'Basic realm="sentiment", charset="UTF-8"' if browser else "Bearer"
            return api.Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'",
                                    headers={"WWW-Authenticate": challenge})
        return None


app.add_middleware(EdgeMiddleware)


@serve.deployment(
    name="Driver",
    ray_actor_options={"num_cpus": 0.25},
    # Bounded: past 64 running + 128 waiting, Serve's proxy answers 503 with
    # Retry-After at once instead of letting the queue (and memory) grow.
    max_ongoing_requests=64,
    max_queued_requests=128,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    # A replica being replaced (redeploy, scale-down) drains its requests first.
    # Longer than request_timeout_s (30 s), so draining never cuts one short: the
    # default 20 s did, when a redeploy also replaced the models it was waiting on.
    graceful_shutdown_timeout_s=45,
)
@serve.ingress(app)
class Driver:
    def __init__(
        self,
        text_encoder: DeploymentHandle,
        audio_encoder: DeploymentHandle,
        fusion_head: DeploymentHandle,
        bundle_path: str,
        settings: Optional[dict] = None,
    ):
        self.text_encoder, self.audio_encoder, self.fusion_head = text_encoder, audio_encoder, fusion_head
        self.settings = DriverSettings(**(settings or {}))
        self.bundle = Bundle.load(bundle_path)
        audio_path = self.bundle.resolve(self.bundle.audio_encoder)
        self.sampling_rate = int(AutoFeatureExtractor.from_pretrained(audio_path, trust_remote_code=False).sampling_rate)
        audio_config = AutoConfig.from_pretrained(audio_path, trust_remote_code=False)
        self.frame_seconds = math.prod(audio_config.conv_stride) / self.sampling_rate
        limits = self.settings.limits
        # Never below the encoder's receptive field: a shorter clip cannot be encoded.
        min_seconds = max(limits.min_audio_seconds,
                          receptive_field(audio_config.conv_kernel, audio_config.conv_stride) / self.sampling_rate)
        self.audio_limits = AudioLimits(
            max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds, min_seconds=min_seconds,
            min_sample_rate=limits.min_sample_rate, max_sample_rate=limits.max_sample_rate,
            sample_rates=frozenset(limits.sample_rates), max_channels=limits.max_channels,
        )
        # In the replica, ``app`` here is the copy Serve actually serves (checked:
        # the same object as request.app), so the edge middleware reads this state.
        app.state.settings = self.settings
        app.state.api_key = os.environ.get(self.settings.api_key_env, "")
        if app.state.api_key:
            logger.info("API key required on every route but %s", ", ".join(sorted(OPEN_PATHS)))
        if self.settings.ui:
            from deployments.ui import mount_ui

            mount_ui(app, self)

    # ---- the request path ----------------------------------------------------

    async def _run_models(self, text: str | None, waveform, explain: bool) -> tuple[dict, dict | None]:
        # Text and audio encoding run concurrently; fusion starts when both are done.
        calls = []
        try:
            text_out = self.text_encoder.encode.remote(text) if text is not None else None
            audio_out = self.audio_encoder.encode.remote(waveform) if waveform is not None else None
            calls = [c for c in (text_out, audio_out) if c is not None]
            text_result = await text_out if text_out is not None else None
            fused = self.fusion_head.fuse.remote(text_result, audio_out, explain)
            calls.append(fused)
            result = await fused
            calls = []
            return result, text_result
        finally:
            # Reached with calls left only on an error, a timeout or a client that
            # went away (Serve cancels this coroutine): stop the work downstream too.
            for call in calls:
                call.cancel()

    async def _run_with_retries(self, text, waveform, explain, request_id):
        for attempt in range(self.settings.retries + 1):
            try:
                result, text_result = await self._run_models(text, waveform, explain)
                check_output(result)
                return result, text_result
            except Exception as exc:
                if failure_in(exc, (BackPressureError,)):
                    raise api.Overloaded("the service is at capacity; retry shortly") from None
                if failure_in(exc, (DeploymentUnavailableError,)):
                    raise api.Unavailable("a model deployment is unavailable; retry shortly") from None
                failure = failure_in(exc, RETRYABLE + (api.ModelUnhealthy,))
                if failure is None:
                    raise
                logger.warning("request %s: %s (attempt %d of %d)", request_id, type(failure).__name__,
                               attempt + 1, self.settings.retries + 1)
                if attempt == self.settings.retries:
                    if isinstance(failure, api.ModelUnhealthy):
                        raise failure from None
                    raise api.Unavailable("a model replica failed; retry shortly") from None
                await asyncio.sleep(0.2 * (attempt + 1))

    async def predict(self, request: PredictInput, request_id: str) -> dict:
        waveform = None
        if request.audio is not None:
            # Decoding is CPU work: keep it off the event loop. It is bounded by the
            # audio limits, so it needs no timeout of its own.
            waveform = await asyncio.to_thread(decode_audio, request.audio, self.sampling_rate, self.audio_limits)
        try:
            result, text_result = await asyncio.wait_for(
                self._run_with_retries(request.text, waveform, request.explain, request_id),
                timeout=self.settings.request_timeout_s,
            )
        except asyncio.TimeoutError:
            raise api.Timeout(f"no answer within {self.settings.request_timeout_s:g} s") from None
        warnings = []
        if not self.bundle.trained:
            warnings.append("This model is UNTRAINED: its predictions are meaningless.")
        if text_result is not None and text_result["truncated"]:
            warnings.append(f"Text was truncated to {self.bundle.text_max_length} tokens.")
        attention = result.pop("attention", None)
        if attention is not None:
            tokens = text_result["tokens"]
            result["attention"] = {"tokens": tokens, "frame_seconds": self.frame_seconds, "weights": attention}
        result["model"] = {"name": self.bundle.name, "version": self.bundle.version, "trained": self.bundle.trained}
        result["request_id"] = request_id
        result["warnings"] = warnings
        return result

    # ---- routes ----------------------------------------------------------------

    @app.post(
        "/v1/predict",
        response_model=api.PredictResponse,
        responses=api.ERROR_RESPONSES,
        openapi_extra=api.PREDICT_REQUEST_DOC,
        summary="Predict sentiment from text, audio or both",
    )
    async def predict_route(self, request: Request) -> dict:
        parsed = await read_predict_request(request, self.settings.limits)
        request_id = request.state.request_id
        # Sizes only: text and audio never reach the logs.
        logger.info("request %s: text_chars=%d audio_bytes=%d", request_id,
                    len(parsed.text or ""), len(parsed.audio or b""))
        return await self.predict(parsed, request_id)

    @app.get("/v1/model", summary="Bundle metadata (model card)")
    async def model_info(self) -> dict:
        return self.bundle.metadata() | {"path": str(self.bundle.path)}

    @app.get("/v1/stats", summary="Batch sizes formed by one replica of each deployment")
    async def stats(self) -> dict:
        names = ("TextEncoder", "AudioEncoder", "FusionHead")
        handles = (self.text_encoder, self.audio_encoder, self.fusion_head)
        snapshots = await asyncio.gather(*(h.batch_stats.remote() for h in handles))
        return dict(zip(names, snapshots))

    @app.get("/healthz", summary="200 only when every deployment answers")
    async def healthz(self) -> JSONResponse:
        handles = {"TextEncoder": self.text_encoder, "AudioEncoder": self.audio_encoder,
                   "FusionHead": self.fusion_head}
        try:
            await asyncio.wait_for(asyncio.gather(*(h.ping.remote() for h in handles.values())), timeout=5.0)
        except Exception as exc:
            return JSONResponse({"status": "unhealthy", "reason": type(exc).__name__}, status_code=503,
                                headers={"Retry-After": api.RETRY_AFTER_S})
        return JSONResponse({"status": "ok", "model": self.bundle.name, "version": self.bundle.version})

