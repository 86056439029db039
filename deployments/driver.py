"""The ingress: composes the model deployments behind the JSON API and the Gradio UI (one FastAPI app).

The HTTP edge (request id, body cap, API key) is ``deployments.http``; the retry
policy is ``deployments.retries``; this module wires them to the model deployments.
"""

import asyncio
import logging
import os
import time
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.handle import DeploymentHandle

from deployments import metrics, tracing
from deployments.http.edge import OPEN_PATHS, EdgeMiddleware
from deployments.http.errors import RETRY_AFTER_S, Timeout, Unavailable, install_error_handlers
from deployments.http.parsing import PredictInput, read_predict_request
from deployments.http.schema import ERROR_RESPONSES, PREDICT_REQUEST_DOC, Limits, PredictResponse
from deployments.retries import RetryLog, check_output, with_retries
from model.audio import decode_audio
from model.audio_encoder import AudioEncoderFacts
from model.bundle import Bundle
from model.segments import Window, duration_weighted, joined_transcript, segment_entry, split_on_silence

logger = logging.getLogger("ray.serve")

# With audio, from a bundle whose audio branch learned synthesized speech (Bundle.synthetic_speech).
SYNTHETIC_SPEECH_WARNING = ("This model's audio branch was trained on SYNTHETIC speech: its reading of a real "
                            "voice is not meaningful (see the model card).")
# Speech without text, and no transcript to give the text branch (the UI shows these too).
CANNOT_TRANSCRIBE = ("No transcript was available: this model cannot transcribe speech; "
                     "type what was said for the text branch.")
TRANSCRIBE_OFF = ("No transcript was available: this bundle turns transcription off; "
                  "type what was said for the text branch.")
NO_WORDS_HEARD = "No transcript was available: no words were recognised in the speech, so the text branch was not used."
NO_ATTENTION_FOR_SEGMENTS = "explain: no attention map for a recording answered in segments."


class DriverSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limits: Limits = Limits()
    # Upper bound on one /v1/predict call inside the driver (queueing + models);
    # keep it below http_options.request_timeout_s so the client gets our 504.
    request_timeout_s: float = Field(30.0, gt=0)
    # The same for a recording answered in segments (Limits.segment_seconds): its windows
    # share the encoders with every other request. Keep http_options.request_timeout_s above it.
    long_request_timeout_s: float = Field(300.0, gt=0)
    retries: int = Field(2, ge=0, le=5)
    ui: bool = True
    # Name of the environment variable holding the API key; unset or empty = no auth.
    # When set, every route but /healthz needs it, the Gradio UI included.
    api_key_env: str = "SENTIMENT_API_KEY"


# NOTE: @serve.ingress pickles this app, and with it the Driver class, when the
# class is decorated: a global the class uses must be defined ABOVE the class, or
# the replica raises NameError. (The same pickling is why EdgeMiddleware reads
# scope["app"].state rather than this module's ``app``.)
app = FastAPI(
    title="Multimodal sentiment",
    description="Text + audio sentiment: BERT-family and Wav2Vec2-family encoders fused by cross-modal attention.",
    version="0.1.0",
    telemetry=tracing.FASTAPI_TELEMETRY,
)
install_error_handlers(app)
app.add_middleware(EdgeMiddleware)


# The defaults equal serve_config.yaml's Driver entry (tests/test_cluster_manifests.py).
@serve.deployment(
    name="Driver",
    ray_actor_options={"num_cpus": 0.15},
    # Bounded: past 64 running + 128 waiting, Serve's proxy answers 503 with
    # Retry-After at once instead of letting the queue (and memory) grow.
    max_ongoing_requests=64,
    max_queued_requests=128,
    backpressure_config=BackpressureConfig(status_code=503, retry_after_s=1),
    # A replica being replaced (redeploy, scale-down) drains its requests first.
    # Longer than request_timeout_s (30 s), so draining never cuts one short: the
    # default 20 s did, when a redeploy also replaced the models it was waiting on.
    graceful_shutdown_timeout_s=45,
    # A redeploy starts each replacement before it stops the replica it replaces (serve_config.yaml).
    max_surge_percent=25,
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
        # Config and feature extractor only, no weights: the driver runs no model.
        facts = AudioEncoderFacts.from_pretrained(self.bundle.resolve(self.bundle.audio_encoder),
                                                  transcribe=self.bundle.transcribe)
        self.sampling_rate, self.frame_seconds = facts.sampling_rate, facts.frame_seconds
        # The AudioEncoder replicas load the same checkpoint with the same bundle flag, so they agree.
        self.can_transcribe = facts.can_transcribe
        # Never below the encoder's receptive field: a shorter clip cannot be encoded.
        self.audio_limits = self.settings.limits.audio_limits(min_seconds=facts.min_seconds)
        self.long_audio_limits = self.settings.limits.long_audio_limits(min_seconds=facts.min_seconds)
        # In the replica, ``app`` here is the copy Serve actually serves (checked:
        # the same object as request.app), so the edge middleware reads this state.
        app.state.settings = self.settings
        app.state.api_key = os.environ.get(self.settings.api_key_env, "")
        metrics.publish_bundle(self.bundle.name, self.bundle.version)
        if app.state.api_key:
            logger.info("API key required on every route but %s", ", ".join(sorted(OPEN_PATHS)))
        from deployments.http.oip import mount_oip  # the Open Inference Protocol (/v2) routes

        mount_oip(app, self)
        if self.settings.ui:
            from deployments.ui import mount_ui

            mount_ui(app, self)

    # ---- the request path ----------------------------------------------------

    async def _run_models(self, text: str | None, waveform, explain: bool,
                          transcribe: bool) -> tuple[dict, dict | None, str | None]:
        # Text and audio encoding run concurrently; fusion starts when both are done. A
        # text-only request is fused by the text encoder itself: one hop, not two.
        # Both results are awaited here rather than handed to FusionHead unresolved: over
        # Serve's gRPC transport a DeploymentResponse argument is resolved by this
        # process's router anyway (the features pass through here either way), and when
        # its replica has died that router retries the resolution until the request
        # times out instead of failing it (docs/architecture.md, "Why the driver awaits").
        # Speech without text, on a model that can transcribe: the audio encoder goes first,
        # since its transcript (same forward pass as its features) is the text encoder's input.
        calls = []
        try:
            audio_result, transcript = None, None
            if text is None and waveform is not None and transcribe:
                calls = [self.audio_encoder.encode.remote(waveform, True)]
                audio_result = await calls[0]
                calls = []
                transcript = audio_result["transcript"]
                text = transcript or None  # nothing heard: no text branch
            if text is not None and waveform is None:
                # Nothing to combine: the text encoder fuses it in the same call (text_encoder.py).
                calls = [self.text_encoder.encode.remote(text, explain, True)]
                text_result = await calls[0]
                calls = []
                return text_result.pop("fused"), text_result, transcript
            if text is not None:
                calls.append(self.text_encoder.encode.remote(text, explain, False))
            if waveform is not None and audio_result is None:
                calls.append(self.audio_encoder.encode.remote(waveform, False))
            encoded = await asyncio.gather(*calls)
            text_result = encoded[0] if text is not None else None
            if waveform is not None and audio_result is None:
                audio_result = encoded[-1]
            fused = self.fusion_head.fuse.remote(text_result["hidden"] if text_result else None,
                                                 audio_result["hidden"] if audio_result else None, explain)
            calls = [fused]
            result = await fused
            calls = []
            return result, text_result, transcript
        finally:
            # Reached with calls left only on an error, a timeout or a client that
            # went away (Serve cancels this coroutine): stop the work downstream too.
            for call in calls:
                call.cancel()

    async def _attempt(self, text, waveform, explain, transcribe) -> tuple[dict, dict | None, str | None]:
        result, text_result, transcript = await self._run_models(text, waveform, explain, transcribe)
        check_output(result)
        return result, text_result, transcript

    async def _predict_windows(self, text: str | None, waveform, windows: list[Window], transcribe: bool,
                               request_id: str, log: RetryLog) -> tuple[dict, dict | None, str | None]:
        """Each window as a request of its own (with the request's text, if any), at most
        ``max_segments_in_flight`` at once: they join the encoders' batches beside every
        other request's items, never more than that many of this request's in one batch."""
        gate = asyncio.Semaphore(self.settings.limits.max_segments_in_flight)

        async def one(window: Window):
            async with gate:
                # A copy, not a view: a view would carry the whole recording's storage to the
                # encoder (over the 4 MiB a Serve replica's gRPC accepts: a long request failed).
                clip = waveform[window.start:window.end].clone()
                return await with_retries(lambda: self._attempt(text, clip, False, transcribe),
                                          self.settings.retries, request_id, log)

        tasks = [asyncio.ensure_future(one(window)) for window in windows]
        try:
            outcomes = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # one window failed: the others' work is not needed
                task.cancel()
        labels = self.bundle.labels
        durations = [(w.end - w.start) / self.sampling_rate for w in windows]
        fused = [result for result, _, _ in outcomes]
        overall = duration_weighted(fused, durations, labels)
        modalities = {"fused": dict(overall)}
        for branch in ("text", "audio"):
            if all(branch in result["modalities"] for result in fused):
                modalities[branch] = duration_weighted([r["modalities"][branch] for r in fused], durations, labels)
        segments = [segment_entry(*window.seconds(self.sampling_rate), result, heard)
                    for window, (result, _, heard) in zip(windows, outcomes)]
        transcript = joined_transcript([heard for _, _, heard in outcomes])
        result = {**overall, "modalities": modalities, "segments": segments, "aggregation": "duration_weighted_mean"}
        return result, outcomes[0][1], transcript

    def _windows(self, request: PredictInput, waveform) -> list[Window] | None:
        """The windows of a recording answered in segments, or None for one answered whole."""
        if waveform is None or not request.long_audio:
            return None
        limits = self.settings.limits
        windows = split_on_silence(waveform, self.sampling_rate, limits.segment_seconds,
                                   min_seconds=max(0.5, self.audio_limits.min_seconds))
        return windows if len(windows) > 1 else None

    async def predict(self, request: PredictInput, request_id: str) -> dict:
        metrics.note_modality(request.text, request.audio)
        waveform = None
        if request.audio is not None:
            # Decoding is CPU work: keep it off the event loop. It is bounded by the
            # audio limits, so it needs no timeout of its own.
            began = time.perf_counter()
            limits = self.long_audio_limits if request.long_audio else self.audio_limits
            with tracing.span("decode_audio", {"audio_bytes": len(request.audio)}):
                waveform = await asyncio.to_thread(decode_audio, request.audio, self.sampling_rate, limits)
            metrics.record_decode(waveform.shape[-1] / self.sampling_rate, time.perf_counter() - began)
        windows = self._windows(request, waveform)
        log = RetryLog()
        transcribe = request.transcribe and self.can_transcribe
        deadline = self.settings.long_request_timeout_s if windows else self.settings.request_timeout_s
        try:
            if windows:
                answer = self._predict_windows(request.text, waveform, windows, transcribe, request_id, log)
            else:
                answer = with_retries(lambda: self._attempt(request.text, waveform, request.explain, transcribe),
                                      self.settings.retries, request_id, log)
            result, text_result, transcript = await asyncio.wait_for(answer, timeout=deadline)
        except asyncio.TimeoutError:
            if log.replica_failures:
                raise Unavailable("a model replica failed and its replacement did not answer in time; "
                                  "retry shortly") from None
            raise Timeout(f"no answer within {deadline:g} s") from None
        warnings = []
        if windows and request.explain:
            warnings.append(NO_ATTENTION_FOR_SEGMENTS)
        if not self.bundle.trained:
            warnings.append("This model is UNTRAINED: its predictions are meaningless.")
        if waveform is not None and self.bundle.synthetic_speech:
            warnings.append(SYNTHETIC_SPEECH_WARNING)
        if text_result is not None and text_result["truncated"]:
            warnings.append(f"Text was truncated to {self.bundle.text_max_length} tokens.")
        if "text" in result["modalities"]:
            result["modalities"]["text"]["source"] = "request" if request.text is not None else "transcript"
        if request.text is None and waveform is not None and request.transcribe and not transcript:
            # The client left transcription on; say why the text branch got no words.
            warnings.append(NO_WORDS_HEARD if transcript == "" else
                            CANNOT_TRANSCRIBE if self.bundle.transcribe else TRANSCRIBE_OFF)
        result["transcript"] = transcript
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
        response_model=PredictResponse,
        responses=ERROR_RESPONSES,
        openapi_extra=PREDICT_REQUEST_DOC,
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
                                headers={"Retry-After": RETRY_AFTER_S})
        return JSONResponse({"status": "ok", "model": self.bundle.name, "version": self.bundle.version})

