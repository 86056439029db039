"""The HTTP contract's data: request limits, response models and their OpenAPI docs."""

from __future__ import annotations

import dataclasses
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from model.audio import STANDARD_SAMPLE_RATES, AudioLimits

# Where a long recording may arrive: the JSON API's predict and Gradio's file upload (the
# Predict tab's recording reaches its predict event through it).
LONG_AUDIO_PATHS = frozenset({"/v1/predict", "/gradio_api/upload"})


class Limits(BaseModel):
    """Request limits. Defaults are the documented service defaults (README).

    ``max_body_bytes`` caps every request body (Gradio routes too); the others
    apply to ``/v1/predict``, the UI's predict call and every row of a batch job.
    A long recording (longer than ``max_audio_seconds``) is accepted where one
    prediction per request is made from it, ``/v1/predict`` and the UI's Predict
    tab, up to the ``max_long_*`` limits, and is answered with a timeline: one
    prediction per window of about ``segment_seconds``. The Open Inference Protocol
    rows and the UI's batch tab keep the short limits.
    """

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(15 * 1024 * 1024, ge=1024)
    max_text_chars: int = Field(2_000, ge=1)
    max_audio_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_audio_seconds: float = Field(30.0, gt=0)
    # Raised to the audio encoder's receptive field if that is longer.
    min_audio_seconds: float = Field(0.1, ge=0)
    # Odd rates are refused: resampling from them can cost minutes of CPU (model/audio.py).
    sample_rates: list[int] = Field(default_factory=lambda: sorted(STANDARD_SAMPLE_RATES), min_length=1)
    min_sample_rate: int = Field(8_000, ge=1)
    max_sample_rate: int = Field(192_000, ge=1)
    max_channels: int = Field(2, ge=1)
    # Long recordings (a call, a voice note): cut into windows cut in pauses (model/segments.py).
    max_long_audio_seconds: float = Field(600.0, gt=0)
    max_long_audio_bytes: int = Field(48 * 1024 * 1024, ge=1024)
    # The body cap of the routes that take a long recording (base64 in JSON adds a third).
    max_long_body_bytes: int = Field(72 * 1024 * 1024, ge=1024)
    segment_seconds: float = Field(10.0, gt=0)
    # Windows of one long request in flight at once: they join the same batches as every
    # other request, so this bounds the share of a batch one long request can take.
    max_segments_in_flight: int = Field(4, ge=1)
    # Rows of one Open Inference Protocol ``infer`` request (deployments/http/oip.py); each row
    # is one prediction, so this bounds the work one request can ask for.
    max_batch_rows: int = Field(64, ge=1)
    # Of those rows, how many are in flight at once: enough to fill the encoders' batches
    # (TextEncoder's is 16), few enough that one request cannot overrun a model deployment's
    # queue by itself (AudioEncoder admits 16 running + 32 queued per replica; past that, 503).
    max_rows_in_flight: int = Field(16, ge=1)

    def body_cap(self, path: str) -> int:
        """The body cap of a route: the long one where a long recording may come (the JSON API's
        predict and Gradio's upload, which the Predict tab's recording goes through)."""
        return self.max_long_body_bytes if path in LONG_AUDIO_PATHS else self.max_body_bytes

    def long_audio_limits(self, min_seconds: float = 0.0) -> AudioLimits:
        """``audio_limits`` with the long-recording caps: what ``/v1/predict`` and the Predict tab decode with."""
        return dataclasses.replace(self.audio_limits(min_seconds), max_bytes=self.max_long_audio_bytes,
                                   max_seconds=max(self.max_audio_seconds, self.max_long_audio_seconds))

    def audio_limits(self, min_seconds: float = 0.0) -> AudioLimits:
        """What ``model.audio.decode_audio`` must enforce for these limits: the one conversion,
        used by the driver and the batch jobs alike.

        ``min_seconds`` is a floor from the audio encoder (its receptive field: a shorter clip
        cannot be encoded); the shortest clip accepted is the larger of it and
        ``min_audio_seconds``.
        """
        return AudioLimits(
            max_bytes=self.max_audio_bytes, max_seconds=self.max_audio_seconds,
            min_seconds=max(self.min_audio_seconds, min_seconds),
            min_sample_rate=self.min_sample_rate, max_sample_rate=self.max_sample_rate,
            sample_rates=frozenset(self.sample_rates), max_channels=self.max_channels,
        )


class BranchPrediction(BaseModel):
    label: str
    scores: dict[str, float]
    sentiment: float = Field(description="Sentiment on the MOSI scale, -3 (negative) to +3 (positive).")
    # Absent on the fused and audio branches, not null: only the text branch reads words.
    source: Literal["request", "transcript"] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="Text branch only: the words it read came from the request's 'text' or were "
                    "transcribed from its audio.",
    )


class Attention(BaseModel):
    tokens: list[str]
    frame_seconds: float = Field(description="Audio time covered by one frame (column).")
    weights: list[list[float]] = Field(description="Text tokens (rows) attending over audio frames (columns).")


class ModelInfo(BaseModel):
    name: str
    version: str
    trained: bool


class SegmentPrediction(BaseModel):
    start: float = Field(description="Seconds from the start of the recording.")
    end: float
    label: str
    scores: dict[str, float]
    sentiment: float
    transcript: str | None = Field(None, exclude_if=lambda value: value is None,
                                   description="What the audio encoder heard in this window (CTC models only).")


class PredictResponse(BaseModel):
    label: str
    scores: dict[str, float]
    sentiment: float
    modalities: dict[str, BranchPrediction] = Field(
        description="Fused plus each present modality alone (text, audio)."
    )
    model: ModelInfo
    request_id: str
    warnings: list[str] = []
    attention: Attention | None = None
    transcript: str | None = Field(
        None, description="For audio without text: what the audio encoder heard (greedy CTC), which the "
                          "text branch then read. null when the request had text, asked for no "
                          "transcript (\"transcribe\": false), or the model cannot transcribe (then a "
                          "warning says so).",
    )
    segments: list[SegmentPrediction] | None = Field(
        None, exclude_if=lambda value: value is None,
        description="Audio longer than segment_seconds: one prediction per window (cut in pauses), in order. "
                    "The top-level label, scores and sentiment are then the duration-weighted mean of the "
                    "windows' ('aggregation').",
    )
    aggregation: Literal["duration_weighted_mean"] | None = Field(None, exclude_if=lambda value: value is None)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
    request_id: str | None = None


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed request", 401: "Missing or wrong API key", 413: "Body, text or audio too large",
        415: "Unsupported content type", 422: "Unusable audio", 503: "Overloaded or unavailable; retry later",
        504: "Timed out",
    }.items()
}

PREDICT_REQUEST_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "text": {"type": "string", "description": "What was said."},
                        "audio": {"type": "string", "format": "byte",
                                  "description": "Base64 of a WAV/FLAC/OGG/MP3 file's bytes."},
                        "explain": {"type": "boolean", "default": False,
                                    "description": "Return the text→audio attention map."},
                        "transcribe": {"type": "boolean", "default": True,
                                       "description": "Audio without text: feed the audio's transcript to "
                                                      "the text branch (models with a CTC head only)."},
                    },
                }
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "text": {"type": "string"},
                        "audio": {"type": "string", "format": "binary"},
                        "explain": {"type": "boolean"},
                        "transcribe": {"type": "boolean"},
                    },
                }
            },
        },
    }
}
