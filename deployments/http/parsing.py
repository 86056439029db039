"""Reading a ``/v1/predict`` request body (JSON or multipart) into plain values.

The body is read with a hard byte cap before anything parses it, so an oversize
upload costs at most ``max_long_body_bytes`` of memory (this route takes long recordings).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from fastapi import Request
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile

from deployments.http.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from deployments.http.schema import Limits
from model.errors import TextTooLongError

FIELDS = {"text", "audio", "explain", "transcribe"}


@dataclass
class PredictInput:
    text: str | None
    audio: bytes | None
    explain: bool = False
    # Speech without text: let the audio encoder's transcript (if it can make one) feed the text branch.
    transcribe: bool = True
    # The route takes long recordings (Limits.max_long_*): decoded with those caps, answered with segments.
    long_audio: bool = False


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number", "invalid_request")
        if int(declared) > max_bytes:
            raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _as_bool(value, field: str, default: bool = False) -> bool:
    if isinstance(value, bool):
        return value
    if value == "":  # an empty form field
        return default
    if isinstance(value, str) and value.lower() in {"true", "1", "false", "0"}:
        return value.lower() in {"true", "1"}
    raise BadRequest(f"'{field}' must be a boolean", "invalid_type")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_input(text: str | None, audio: bytes | None, limits: Limits, long_audio: bool = False) -> PredictInput:
    """``long_audio``: the route takes long recordings (``Limits.max_long_audio_bytes``)."""
    if text is not None and not text.strip():
        text = None
    if text is None and not audio:
        raise BadRequest("send 'text', 'audio' or both", "missing_input")
    if text is not None and len(text) > limits.max_text_chars:
        raise TextTooLongError(f"text is {len(text)} characters; the limit is {limits.max_text_chars}")
    if text is not None and not _is_unicode(text):
        # JSON can carry lone surrogates ("\ud800"); the tokenizer raises on them,
        # and would fail every other request batched with this one.
        raise BadRequest("'text' is not valid Unicode (it contains a lone surrogate)", "invalid_text")
    audio_cap = limits.max_long_audio_bytes if long_audio else limits.max_audio_bytes
    if audio is not None and len(audio) > audio_cap:
        raise PayloadTooLarge(f"audio is {len(audio)} bytes; the limit is {audio_cap}", "audio_too_large")
    return PredictInput(text=text, audio=audio or None, long_audio=long_audio)


def parse_json(body: bytes, limits: Limits) -> PredictInput:
    try:
        payload = json.loads(body)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise BadRequest(f"malformed JSON: {str(exc)[:200]}", "malformed_json") from None
    except RecursionError:  # "[[[[..." nested deeper than the parser's stack
        raise BadRequest("malformed JSON: nested too deeply", "malformed_json") from None
    if not isinstance(payload, dict):
        raise BadRequest("the JSON body must be an object", "invalid_type")
    unknown = set(payload) - FIELDS
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", "unknown_field")
    text, audio_b64 = payload.get("text"), payload.get("audio")
    if text is not None and not isinstance(text, str):
        raise BadRequest("'text' must be a string", "invalid_type")
    if audio_b64 is not None and not isinstance(audio_b64, str):
        raise BadRequest("'audio' must be a base64 string", "invalid_type")
    audio = None
    if audio_b64:
        try:
            audio = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("'audio' is not valid base64", "invalid_base64") from None
    parsed = check_input(text, audio, limits, long_audio=True)
    parsed.explain = _as_bool(payload.get("explain", False), "explain")
    parsed.transcribe = _as_bool(payload.get("transcribe", True), "transcribe", default=True)
    return parsed


def _has_closing_boundary(content_type: str, body: bytes) -> bool:
    """Whether the body holds its close delimiter (``--boundary--``, RFC 2046).

    Starlette's parser silently drops a part cut off before it, so a truncated upload
    would otherwise read as a request with no audio (``missing_input``).
    """
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    return bool(boundary) and b"--" + boundary + b"--" in body


async def parse_multipart(request: Request, body: bytes, limits: Limits) -> PredictInput:
    if not _has_closing_boundary(request.headers.get("content-type", ""), body):
        raise BadRequest("malformed multipart body: no closing boundary (was the upload cut short?)",
                         "malformed_multipart")
    # Re-feed the capped body to Starlette's multipart parser.
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    replay = Request(request.scope, receive)
    try:
        form = await replay.form(max_files=1, max_fields=len(FIELDS), max_part_size=limits.max_long_body_bytes)
    except Exception as exc:  # starlette raises several types for broken multipart
        raise BadRequest(f"malformed multipart body: {str(exc)[:200]}", "malformed_multipart") from None
    try:
        unknown = set(form.keys()) - FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", "unknown_field")
        text, upload = form.get("text"), form.get("audio")
        if isinstance(text, UploadFile):
            raise BadRequest("'text' must be a form field, not a file", "invalid_type")
        audio = None
        if isinstance(upload, UploadFile):
            audio = await upload.read()
        elif isinstance(upload, str) and upload:
            raise BadRequest("'audio' must be a file upload", "invalid_type")
        parsed = check_input(text, audio, limits, long_audio=True)
        parsed.explain = _as_bool(form.get("explain", False), "explain")
        parsed.transcribe = _as_bool(form.get("transcribe", True), "transcribe", default=True)
        return parsed
    finally:
        await form.close()


async def read_predict_request(request: Request, limits: Limits) -> PredictInput:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in {"application/json", "multipart/form-data"}:
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'} is not supported; use application/json or multipart/form-data"
        )
    body = await read_body(request, limits.max_long_body_bytes)  # /v1/predict takes long recordings
    if content_type == "application/json":
        return parse_json(body, limits)
    return await parse_multipart(request, body, limits)
