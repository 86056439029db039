"""Integration: the real app on a local Ray via serve.run, real HTTP, real gradio_client."""

from __future__ import annotations

import base64
import concurrent.futures
import re

import httpx
import pytest

from tests.conftest import tone

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(served_app):
    with httpx.Client(base_url=served_app, timeout=60) as c:
        yield c


def _check_prediction(body: dict, modalities: set[str]):
    assert body["label"] in body["scores"]
    assert abs(sum(body["scores"].values()) - 1) < 1e-4
    assert -3 <= body["sentiment"] <= 3
    assert set(body["modalities"]) == modalities | {"fused"}
    assert body["model"]["name"] == "tiny-test"
    assert body["request_id"]
    assert any("UNTRAINED" in w for w in body["warnings"])


def test_text_only(client):
    r = client.post("/v1/predict", json={"text": "a wonderful, moving film"})
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), {"text"})
    assert r.headers["x-request-id"] == r.json()["request_id"]


def test_text_only_is_fused_by_the_text_encoder_with_the_pipelines_answer(client, tiny_bundle):
    """A text-only request skips FusionHead (the text encoder fuses it in the same call),
    and its answer is the in-process pipeline's for the same text."""
    from model.bundle import Bundle
    from model.pipeline import SentimentPipeline

    texts = ["a wonderful, moving film", "dull and lifeless", "it was fine, I guess"]
    before = client.get("/v1/stats").json()
    served = [client.post("/v1/predict", json={"text": text}).json() for text in texts]
    after = client.get("/v1/stats").json()
    assert after["TextEncoder"]["items"] - before["TextEncoder"]["items"] == len(texts)
    assert after["FusionHead"]["items"] == before["FusionHead"]["items"], "a text-only request reached FusionHead"
    reference = SentimentPipeline(Bundle.load(tiny_bundle), device="cpu").predict(texts, [None] * len(texts))
    for got, want in zip(served, reference):
        assert got["label"] == want["label"]
        assert set(got["modalities"]) == {"fused", "text"}
        for label, score in want["scores"].items():
            assert got["scores"][label] == pytest.approx(score, abs=2e-3)
            assert got["modalities"]["text"]["scores"][label] == pytest.approx(
                want["modalities"]["text"]["scores"][label], abs=2e-3)


def test_audio_only(client, wav_bytes):
    r = client.post("/v1/predict", json={"audio": base64.b64encode(wav_bytes).decode()})
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), {"audio"})


def test_text_and_audio_with_attention(client, wav_bytes):
    r = client.post("/v1/predict", json={"text": "dull and lifeless", "audio": base64.b64encode(wav_bytes).decode(),
                                         "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    _check_prediction(body, {"text", "audio"})
    attention = body["attention"]
    assert len(attention["weights"]) == len(attention["tokens"])
    assert attention["tokens"][0] == "[CLS]"
    assert attention["frame_seconds"] > 0


def test_multipart(client, wav_bytes):
    r = client.post("/v1/predict", data={"text": "great"}, files={"audio": ("clip.wav", wav_bytes, "audio/wav")})
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), {"text", "audio"})


def test_same_answer_for_json_and_multipart(client, wav_bytes):
    a = client.post("/v1/predict", json={"text": "fine", "audio": base64.b64encode(wav_bytes).decode()}).json()
    b = client.post("/v1/predict", data={"text": "fine"}, files={"audio": ("a.wav", wav_bytes)}).json()
    for label in a["scores"]:
        assert a["scores"][label] == pytest.approx(b["scores"][label], abs=1e-3)


BAD_REQUESTS = [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "malformed_json"),
    ({"json": {}}, 400, "missing_input"),
    ({"json": {"text": 42}}, 400, "invalid_type"),
    ({"json": {"text": "hi", "colour": "red"}}, 400, "unknown_field"),
    ({"json": {"audio": "@@@not-base64@@@"}}, 400, "invalid_base64"),
    ({"json": {"audio": base64.b64encode(b"random bytes" * 40).decode()}}, 422, "audio_undecodable"),
    ({"json": {"text": "x" * 2001}}, 413, "text_too_long"),
    ({"content": b"text=hi", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    # Truncated before its closing boundary (a client that gave up mid-upload), and no multipart at all.
    ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400,
     "malformed_multipart"),
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 400,
     "malformed_multipart"),
]


@pytest.mark.parametrize("kwargs,status,code", BAD_REQUESTS)
def test_bad_input_gets_4xx_and_service_stays_up(client, kwargs, status, code):
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"]
    assert error["code"] == code
    assert client.get("/healthz").status_code == 200


def test_oversize_body_is_413(client):
    from deployments.http.schema import Limits

    limits = Limits()
    # /v1/predict takes long recordings: its cap is the long one; every other route keeps the short one.
    for path, cap in (("/v1/predict", limits.max_long_body_bytes), ("/v2/models/sentiment/infer", limits.max_body_bytes)):
        r = client.post(path, content=b"{" + b" " * cap, headers={"content-type": "application/json"})
        assert r.status_code == 413, (path, r.text[:200])
        error = r.json()["error"]  # under /v2 in the protocol's form: {"error": "<message>"}
        message = error if path.startswith("/v2/") else error["message"]
        assert path.startswith("/v2/") or error["code"] == "payload_too_large"
        assert str(cap) in message, message


RATE = 16_000


def spoken(seconds: float):
    """0.7 s tone bursts ('words') starting every second at +0.5 s, faint noise between."""
    from tests.test_segments import speech_like

    return speech_like([(0.5 + i, 1.2 + i) for i in range(int(seconds))], seconds).numpy()


def test_a_long_recording_is_answered_as_a_timeline_of_windows(client):
    from deployments.http.schema import Limits
    from model.audio import encode_wav

    limits = Limits()
    # Over 4 MiB of samples at 16 kHz: a window sent as a view of the whole recording would
    # carry all of it, past what a replica's gRPC accepts (it did, before windows were copies).
    wave = spoken(125.0)
    before = client.get("/v1/stats").json()["AudioEncoder"]
    r = client.post("/v1/predict", files={"audio": ("call.wav", encode_wav(wave, RATE), "audio/wav")}, timeout=300)
    after = client.get("/v1/stats").json()["AudioEncoder"]
    assert r.status_code == 200, r.text
    body = r.json()
    segments = body["segments"]
    print(f"\n[long recording] 125 s in {len(segments)} windows: "
          + ", ".join(f"{s['start']:.2f}-{s['end']:.2f}" for s in segments))
    assert body["aggregation"] == "duration_weighted_mean"
    assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(125.0, abs=1e-3)
    assert all(a["end"] == b["start"] for a, b in zip(segments, segments[1:]))
    assert 13 <= len(segments) <= 16 and all(s["end"] - s["start"] <= limits.segment_seconds + 1e-6 for s in segments)
    # Cut in the pauses (0.2-0.5 s past each second), never inside a 'word'.
    assert all(0.2 <= s["end"] % 1.0 < 0.5 for s in segments[:-1]), [s["end"] for s in segments]
    # The overall prediction is the duration-weighted mean of the windows'.
    total = sum(s["end"] - s["start"] for s in segments)
    for label, score in body["scores"].items():
        assert score == pytest.approx(sum(s["scores"][label] * (s["end"] - s["start"]) for s in segments) / total,
                                      abs=1e-6)
    assert set(body["modalities"]) == {"fused", "audio"} and body["transcript"] is None
    # Every window went through the same batches as other requests, never more than
    # max_segments_in_flight of them in one batch.
    formed = {int(size): count - before["histogram"].get(size, 0) for size, count in after["histogram"].items()}
    formed = {size: count for size, count in formed.items() if count > 0}
    assert after["items"] - before["items"] == len(segments)
    assert max(formed) <= limits.max_segments_in_flight, formed
    # A window's prediction is the one that window gets when sent alone.
    first = segments[1]
    clip = wave[int(round(first["start"] * RATE)):int(round(first["end"] * RATE))]
    alone = client.post("/v1/predict", files={"audio": ("w.wav", encode_wav(clip, RATE), "audio/wav")}).json()
    assert "segments" not in alone
    for label, score in alone["scores"].items():
        assert first["scores"][label] == pytest.approx(score, abs=2e-3)


def test_a_recording_over_the_long_limit_is_refused_with_413(client):
    from deployments.http.schema import Limits
    from model.audio import encode_wav

    seconds = Limits().max_long_audio_seconds + 1
    r = client.post("/v1/predict", files={"audio": ("long.wav", encode_wav(tone(seconds, 8_000), 8_000), "audio/wav")})
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "audio_too_long"
    assert client.get("/healthz").status_code == 200


def test_model_metadata_and_docs(client):
    meta = client.get("/v1/model").json()
    assert meta["labels"] == ["negative", "positive"]
    assert meta["trained"] is False
    assert meta["text_encoder"]["name_or_path"] == "text_encoder"
    docs = client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    # The Swagger page, pointed at a schema that is served (not just any 200 page).
    assert "SwaggerUIBundle" in docs.text
    spec_url = re.search(r"url: '([^']+)'", docs.text).group(1)
    spec = client.get(spec_url).json()
    assert spec["info"]["title"] == "Multimodal sentiment"
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]


def test_gradio_client_predict(served_app, tmp_path, wav_bytes):
    from gradio_client import Client, handle_file

    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes)
    result = Client(served_app + "/").predict("what a great film", handle_file(str(path)), api_name="/predict")
    label = result[0]
    assert label["label"] in {"negative", "positive"}
    assert {c["label"] for c in label["confidences"]} == {"negative", "positive"}


def test_gradio_client_gets_the_timeline_of_a_long_recording(served_app, tmp_path):
    from gradio_client import Client, handle_file

    from model.audio import encode_wav

    path = tmp_path / "call.wav"
    path.write_bytes(encode_wav(spoken(25.0), RATE))
    label, _gauge, _panel, _heatmap, timeline, notes = Client(served_app + "/").predict(
        "", handle_file(str(path)), api_name="/predict")
    assert label["label"] in {"negative", "positive"}
    # The LinePlot's data (sent as an update that also makes it visible): one row per
    # window, at its midpoint, over the whole recording.
    print(f"\n[UI timeline] output keys {sorted(timeline)}")
    assert timeline.get("visible", True) is True
    plot = timeline.get("value", timeline)
    rows = [dict(zip(plot["columns"], row)) for row in plot["data"]]
    print(f"\n[UI timeline] {rows}")
    assert 3 <= len(rows) <= 4 and rows[0]["start"] == 0 and rows[-1]["end"] == pytest.approx(25.0, abs=1e-3)
    assert all(-3 <= row["sentiment"] <= 3 for row in rows)
    assert "| time (s) | label | sentiment | transcript |" in notes


def test_concurrent_requests_are_batched(client, served_app):
    before = client.get("/v1/stats").json()["TextEncoder"]
    with httpx.Client(base_url=served_app, timeout=60) as c, concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda i: c.post("/v1/predict", json={"text": f"review number {i}"}).status_code,
                                 range(32)))
    assert statuses == [200] * 32
    after = client.get("/v1/stats").json()["TextEncoder"]
    assert after["items"] - before["items"] == 32
    # Fewer forward passes than requests means requests shared batches.
    assert after["batches"] - before["batches"] < 32
    # The batches this burst formed (the stats are cumulative: earlier tests' batches are in both).
    formed = {int(size): count - before["histogram"].get(size, 0) for size, count in after["histogram"].items()}
    assert sum(size * count for size, count in formed.items()) == 32, formed
    assert max(size for size, count in formed.items() if count > 0) > 1, formed


def test_replies_with_audio_warn_of_synthetic_speech_only_when_the_bundle_learned_it(served_app, tiny_bundle,
                                                                                    wav_bytes):
    """The tiny bundle's audio branch did not learn synthetic speech: no warning. The demo
    bundle's did, and says so (tests/test_ui_browser.py)."""
    from model.bundle import Bundle

    assert not Bundle.load(tiny_bundle).synthetic_speech
    r = httpx.post(f"{served_app}/v1/predict", json={"text": "fine", "audio": base64.b64encode(wav_bytes).decode()},
                   timeout=60)
    assert r.status_code == 200 and not [w for w in r.json()["warnings"] if "SYNTHETIC speech" in w], r.text


@pytest.mark.parametrize("rate", [176_400, 192_000])
def test_high_resolution_recordings_are_accepted(client, rate):
    from model.audio import encode_wav

    r = client.post("/v1/predict", files={"audio": ("hi-res.wav", encode_wav(tone(0.5, rate), rate), "audio/wav")})
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), {"audio"})
