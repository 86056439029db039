"""The ingress: JSON API and Gradio UI on one FastAPI app, composing the model deployments."""


import asyncio
import hmac
import logging
import math
import os
import uuid
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from transformers import AutoConfig, AutoFeatureExtractor

from deployments import api
from deployments.request_parsing import PredictInput, read_predict_request
from model.audio import AudioLimits, decode_audio
from model.bundle import Bundle

logger = logging.getLogger("ray.serve")

# Encoders and fusion are pure functions of their input, so a request whose
# replica died mid-flight is safe to send again.
RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError)


class DriverSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: api.Limits = api.Limits()
    request_timeout_s: float = Field(30.0, gt=0)
    retries: int = Field(2, ge=0, le=5)
    ui: bool = True
    # Name of the environment variable holding the API key; unset or empty = no auth.
    api_key_env: str = "SENTIMENT_API_KEY"


app = FastAPI(
    title="Multimodal sentiment",
    description="Text + audio sentiment: BERT-family and Wav2Vec2-family encoders fused by cross-modal attention.",
    version="0.1.0",
)
api.install_error_handlers(app)


@app.middleware("http")
async def request_id_middleware(request: Request, call_next):
    # Only the id, method, path and status are logged: never text or audio.
    request.state.request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request.state.request_id
    return response


def require_api_key(request: Request) -> None:
    expected = request.app.state.api_key
    if not expected:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
        raise api.Unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")


@serve.deployment(name="Driver", ray_actor_options={"num_cpus": 0.25})
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
        self.sampling_rate = int(AutoFeatureExtractor.from_pretrained(audio_path).sampling_rate)
        stride = math.prod(AutoConfig.from_pretrained(audio_path).conv_stride)
        self.frame_seconds = stride / self.sampling_rate
        limits = self.settings.limits
        self.audio_limits = AudioLimits(
            max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds,
            min_sample_rate=limits.min_sample_rate, max_sample_rate=limits.max_sample_rate,
            max_channels=limits.max_channels,
        )
        app.state.api_key = os.environ.get(self.settings.api_key_env, "")
        if self.settings.ui:
            from deployments.ui import mount_ui

            mount_ui(app, self)

    # ---- the request path ----------------------------------------------------

    async def _run_models(self, text: str | None, waveform, explain: bool) -> tuple[dict, dict | None]:
        # Text and audio encoding run concurrently; fusion starts when both are done.
        text_out = self.text_encoder.encode.remote(text) if text is not None else None
        audio_out = self.audio_encoder.encode.remote(waveform) if waveform is not None else None
        text_result = await text_out if text_out is not None else None
        result = await self.fusion_head.fuse.remote(text_result, audio_out, explain)
        return result, text_result

    async def _run_with_retries(self, text, waveform, explain, request_id):
        for attempt in range(self.settings.retries + 1):
            try:
                return await self._run_models(text, waveform, explain)
            except BackPressureError:
                raise api.Overloaded("the service is at capacity; retry shortly") from None
            except RETRYABLE as exc:
                logger.warning("request %s: replica failed (%s), attempt %d", request_id, type(exc).__name__, attempt + 1)
                if attempt == self.settings.retries:
                    raise api.Unavailable("a model replica failed; retry shortly") from None
                await asyncio.sleep(0.2 * (attempt + 1))

    async def predict(self, request: PredictInput, request_id: str) -> dict:
        waveform = None
        if request.audio is not None:
            # Decoding is CPU work: keep it off the event loop.
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
        dependencies=[Depends(require_api_key)],
        summary="Predict sentiment from text, audio or both",
    )
    async def predict_route(self, request: Request) -> dict:
        parsed = await read_predict_request(request, self.settings.limits)
        request_id = request.state.request_id
        logger.info("request %s: text=%s audio_bytes=%d", request_id,
                    parsed.text is not None, len(parsed.audio or b""))
        return await self.predict(parsed, request_id)

    @app.get("/v1/model", dependencies=[Depends(require_api_key)], summary="Bundle metadata (model card)")
    async def model_info(self) -> dict:
        return self.bundle.metadata() | {"path": str(self.bundle.path)}

    @app.get("/v1/stats", dependencies=[Depends(require_api_key)], summary="Batch sizes formed by one replica of each deployment")
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
            return JSONResponse({"status": "unhealthy", "reason": type(exc).__name__}, status_code=503)
        return JSONResponse({"status": "ok", "model": self.bundle.name, "version": self.bundle.version})
