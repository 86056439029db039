"""Property-based fuzzing (hypothesis) of ``decode_audio``, of the request parser,
and of the served API over real HTTP: bad input gets a 4xx with a stable error
code and a message, never a 500, a hang or a dead replica."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deployments.http.errors import ServiceError, status_for
from deployments.http.parsing import read_predict_request
from deployments.http.schema import Limits
from model.audio import STANDARD_SAMPLE_RATES, AudioLimits, decode_audio
from model.errors import ModelInputError

TARGET_RATE = 16_000
LIMITS = AudioLimits(max_bytes=256 * 1024, max_seconds=2.0)

# Error codes the API may answer with; every one is documented in the README.
DOCUMENTED_CODES = {
    "bad_request", "invalid_request", "malformed_json", "malformed_multipart", "invalid_type", "unknown_field",
    "missing_input", "invalid_base64", "invalid_text", "payload_too_large", "audio_too_large", "text_too_long",
    "unsupported_media_type", "audio_undecodable", "audio_empty", "audio_too_short", "audio_too_long",
    "audio_non_finite", "audio_format_not_allowed", "not_found", "method_not_allowed", "unauthorized",
    "overloaded", "unavailable", "model_unhealthy", "timeout",
}


def encoded(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = [
    encoded(0.2 * np.sin(np.arange(8_000) / 7).astype("float32"), 16_000, "WAV", "PCM_16"),
    encoded(0.2 * np.sin(np.arange(8_000) / 5).astype("float32"), 22_050, "FLAC"),
    encoded(0.2 * np.sin(np.arange(8_000) / 3).astype("float32"), 16_000, "OGG", "VORBIS"),
    encoded(0.2 * np.sin(np.arange(8_000) / 9).astype("float32"), 16_000, "MP3"),
    encoded(np.zeros((4_000, 2), dtype="float32"), 44_100, "WAV", "FLOAT"),
]


def check_decoded_or_refused(data: bytes, limits: AudioLimits = LIMITS) -> torch.Tensor | None:
    """The property: a finite mono waveform within the limits, or a typed input error. Nothing else."""
    start = time.monotonic()
    try:
        waveform = decode_audio(data, TARGET_RATE, limits)
    except ModelInputError as exc:
        status, code, message, _ = status_for(exc)
        assert 400 <= status < 500 and code in DOCUMENTED_CODES and message
        waveform = None
    else:
        assert waveform.dtype == torch.float32 and waveform.dim() == 1
        assert bool(torch.isfinite(waveform).all())
        assert limits.min_seconds * TARGET_RATE - 1 <= len(waveform) <= limits.max_seconds * TARGET_RATE + 1
    assert time.monotonic() - start < 5.0, "decoding took too long"
    return waveform


# derandomize: every run draws the same examples, so a failure seen once (in CI, on a
# laptop) reproduces on the next run anywhere; print_blob: a failure also prints the
# @reproduce_failure line that replays it.
SEEDED = dict(deadline=None, derandomize=True, print_blob=True)
FUZZ = settings(**SEEDED, max_examples=100, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_audio_on_random_bytes(data):
    check_decoded_or_refused(data)


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_decode_audio_on_mutated_real_files(seed, data):
    mutated = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        action = data.draw(st.sampled_from(["flip", "truncate", "splice", "header"]))
        if action == "flip" and mutated:
            mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
        elif action == "truncate":
            del mutated[data.draw(st.integers(0, len(mutated))):]
        elif action == "splice":
            at = data.draw(st.integers(0, len(mutated)))
            mutated[at:at] = data.draw(st.binary(max_size=64))
        elif action == "header" and len(mutated) > 64:
            # Rewrite a word inside the header: sizes, rates, channel counts, frame counts.
            at = data.draw(st.integers(0, 60))
            mutated[at:at + 4] = data.draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
    check_decoded_or_refused(bytes(mutated))


@FUZZ
@given(rate=st.sampled_from(sorted(STANDARD_SAMPLE_RATES)) | st.integers(1_000, 400_000), channels=st.integers(1, 4), seconds=st.floats(0.0, 3.0),
       fmt=st.sampled_from([("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("WAV", "PCM_U8")]),
       special=st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30]))
def test_decode_audio_enforces_every_limit(rate, channels, seconds, fmt, special):
    frames = int(rate * seconds)
    samples = np.full((frames, channels), 0.1, dtype="float32")
    if special is not None and frames and fmt[1] == "FLOAT":
        samples[frames // 2, 0] = special
    try:
        data = encoded(samples, rate, *fmt)
    except sf.LibsndfileError:
        assume(False)  # a rate the writer itself refuses (FLAC stops at 65,535 Hz): no file to test
    waveform = check_decoded_or_refused(data)
    in_limits = (LIMITS.min_sample_rate <= rate <= LIMITS.max_sample_rate and rate in LIMITS.sample_rates
                 and channels <= LIMITS.max_channels
                 and LIMITS.min_seconds * rate <= frames <= LIMITS.max_seconds * rate
                 and len(data) <= LIMITS.max_bytes
                 and not (fmt[1] == "FLOAT" and special is not None and np.isnan(special) | np.isinf(special)))
    assert (waveform is not None) == in_limits, (rate, channels, frames, fmt, special, len(data))
    if waveform is not None:
        assert float(waveform.abs().max()) <= 1.0  # out-of-range float samples are clipped


# ---- the request parser, in process (the real Starlette request path) ----------------

PARSE_LIMITS = Limits(max_body_bytes=64 * 1024, max_text_chars=200, max_audio_bytes=16 * 1024)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
predict_payloads = st.dictionaries(
    st.sampled_from(["text", "audio", "explain", "extra", "Text"]) | st.text(max_size=6),
    json_values | st.text(alphabet=st.characters(), max_size=300) | st.sampled_from(
        ["aGVsbG8=", "UklGRiQAAABXQVZF", "", " ", "\ud800", "true", "1"]),
    max_size=4,
)
content_types = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "multipart/form-data; boundary=b0undary",
    "multipart/form-data", "text/plain", "application/x-www-form-urlencoded", "", "application/JSON",
])


def multipart(fields: dict, boundary: str = "b0undary") -> bytes:
    parts = []
    for name, value in fields.items():
        filename = '; filename="a.wav"' if name == "audio" else ""
        payload = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode()
                     + payload + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


bodies = st.one_of(
    predict_payloads.map(lambda p: json.dumps(p).encode()),
    predict_payloads.map(multipart),
    st.binary(max_size=2048),
    st.just(b"[" * 50_000),
    st.just(b'{"text": "hi", "explain": ' + b"9" * 5_000 + b"}"),
    st.just(b'{"text": "' + b"a" * 70_000 + b'"}'),
)


async def parse(body: bytes, content_type: str, declared_length: str | None):
    from starlette.requests import Request

    headers = [(b"content-type", content_type.encode())] if content_type else []
    if declared_length is not None:
        headers.append((b"content-length", declared_length.encode()))
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers, "query_string": b""}
    return await read_predict_request(Request(scope, receive), PARSE_LIMITS)


PARSER_FUZZ = settings(**SEEDED, max_examples=400, suppress_health_check=[HealthCheck.too_slow])


@PARSER_FUZZ
@given(body=bodies, content_type=content_types,
       declared=st.none() | st.just("exact") | st.sampled_from(["0", "-1", "abc", "99999999999", "12"]))
def test_request_parser_accepts_or_raises_a_typed_4xx(body, content_type, declared):
    length = str(len(body)) if declared == "exact" else declared
    try:
        parsed = asyncio.run(parse(body, content_type, length))
    except (ServiceError, ModelInputError) as exc:
        status, code, message, _ = status_for(exc)
        assert 400 <= status < 500 and code in DOCUMENTED_CODES and message, (status, code)
    else:
        assert parsed.text is not None or parsed.audio
        if parsed.text is not None:
            assert len(parsed.text) <= PARSE_LIMITS.max_text_chars
            parsed.text.encode("utf-8")  # tokenizer-safe: no lone surrogates
        assert len(parsed.audio or b"") <= PARSE_LIMITS.max_audio_bytes
        assert isinstance(parsed.explain, bool)


def drawn_examples(fuzz: settings, strategy) -> list:
    seen = []

    @fuzz
    @given(strategy)
    def record(value):
        seen.append(value)

    record()
    return seen


@pytest.mark.parametrize("fuzz", [FUZZ, PARSER_FUZZ], ids=["decoder", "parser"])
def test_fuzzing_draws_the_same_examples_every_run(fuzz):
    # Two runs in one process stand for two runs on two machines: without derandomize
    # each draws from a fresh random seed.
    strategy = st.binary(max_size=64) | bodies
    assert drawn_examples(fuzz, strategy) == drawn_examples(fuzz, strategy)


# ---- the served API over real HTTP --------------------------------------------------


@pytest.fixture(scope="module")
def client(guarded_app):
    """The served API with small limits (``conftest.GUARDED_LIMITS``), behind its API key:
    fuzzed with the key, since test_security checks what the key lets through."""
    with httpx.Client(base_url=guarded_app.url, headers=guarded_app.bearer, timeout=30) as c:
        yield c


def check_answer(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    # The client sends the app's key: a 401 would mean the fuzzing stops at the key check.
    assert r.status_code != 401, r.text[:300]
    if r.status_code != 200:
        error = r.json()["error"]
        assert error["code"] in DOCUMENTED_CODES and error["message"], error
    assert r.headers["x-request-id"] and "," not in r.headers["x-request-id"]  # one id, set once


http_audio = st.one_of(
    st.sampled_from(SEEDS),
    st.binary(max_size=2048),
    st.sampled_from(SEEDS).flatmap(lambda s: st.integers(0, len(s)).map(lambda n: s[:n])),
)


@pytest.mark.slow
@settings(**SEEDED, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, content_type=content_types)
def test_api_never_answers_5xx_to_arbitrary_bodies(client, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    check_answer(client.post("/v1/predict", content=body, headers=headers))


@pytest.mark.slow
@settings(**SEEDED, max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=st.none() | st.text(max_size=320), audio=st.none() | http_audio, as_multipart=st.booleans(),
       explain=st.booleans())
def test_api_never_answers_5xx_to_well_formed_requests_with_bad_content(client, text, audio, as_multipart, explain):
    if as_multipart:
        files = {"audio": ("clip.bin", audio)} if audio is not None else None
        data = {"explain": str(explain).lower(), **({"text": text} if text is not None else {})}
        try:
            r = client.post("/v1/predict", data=data, files=files)
        except UnicodeEncodeError:
            return  # httpx itself refuses to send a lone surrogate in a form field
    else:
        payload = {"explain": explain, **({"text": text} if text is not None else {})}
        if audio is not None:
            payload["audio"] = base64.b64encode(audio).decode()
        r = client.post("/v1/predict", content=json.dumps(payload).encode(),
                        headers={"content-type": "application/json"})
    check_answer(r)


def _wav(rate: int = 16_000, seconds: float = 0.5, channels: int = 1, subtype: str = "PCM_16", value=0.1) -> bytes:
    samples = np.full((int(rate * seconds), channels), 0.1, dtype="float32")
    if value is not None and len(samples):
        samples[len(samples) // 2, 0] = value
    return encoded(samples, rate, "WAV", subtype)


NAMED_BAD_AUDIO = [  # (what, bytes, status, code): the cases the README's table names
    ("random bytes", bytes(range(256)) * 8, 422, "audio_undecodable"),
    ("a PDF", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" * 20, 422, "audio_undecodable"),
    ("a truncated header", SEEDS[0][:30], 422, "audio_undecodable"),
    ("0 samples", _wav(seconds=0.0), 422, "audio_empty"),
    ("too short (20 ms)", _wav(seconds=0.02), 422, "audio_too_short"),
    ("NaN samples", _wav(subtype="FLOAT", value=np.nan), 422, "audio_non_finite"),
    ("infinite samples", _wav(subtype="FLOAT", value=np.inf), 422, "audio_non_finite"),
    ("3 channels", _wav(channels=3), 422, "audio_format_not_allowed"),
    ("384 kHz (over 192 kHz)", _wav(rate=384_000, seconds=0.1), 422, "audio_format_not_allowed"),
    ("an odd rate (22,819 Hz)", _wav(rate=22_819), 422, "audio_format_not_allowed"),
    ("an AIFF file", encoded(np.zeros(8_000, dtype="float32"), 16_000, "AIFF", "PCM_16"), 422, "audio_undecodable"),
    ("4 s (limit 3 s)", _wav(seconds=4.0), 413, "audio_too_long"),
    ("over max_audio_bytes (144 KB)", _wav(rate=24_000, seconds=3.0), 413, "audio_too_large"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,audio,status,code", NAMED_BAD_AUDIO, ids=[c[0] for c in NAMED_BAD_AUDIO])
def test_named_bad_audio_gets_its_documented_code(client, what, audio, status, code):
    for r in (client.post("/v1/predict", files={"audio": ("clip", audio)}),
              client.post("/v1/predict", json={"audio": base64.b64encode(audio).decode()})):
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), (what, r.text[:200])


@pytest.mark.slow
def test_service_is_healthy_after_the_fuzzing(client):
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/predict", json={"text": "still standing"}).status_code == 200
    for path, method in (("/nowhere", "GET"), ("/v1/predict", "GET"), ("/healthz", "DELETE")):
        check_answer(client.request(method, path))
