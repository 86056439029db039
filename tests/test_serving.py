"""Integration: the real app on a local Ray via serve.run, real HTTP, real gradio_client."""

from __future__ import annotations

import base64
import concurrent.futures
import re
import threading

import httpx
import pytest

from tests.conftest import deploy, tone

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
    r = client.post("/v1/predict", content=b"{" + b" " * (16 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


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


def test_hot_swap_bundle_without_restart(ray_cluster, tiny_bundle, tmp_path):
    """Re-running serve.run with new args swaps the bundle in place; traffic keeps flowing."""
    from model.bundle import Bundle

    url = deploy(ray_cluster, {"bundle": str(tiny_bundle), "settings": {"ui": False}}, name="swap", route_prefix="/swap")
    swapped = Bundle.load(tiny_bundle)
    swapped.version = "2.0.0"
    swapped.save(tmp_path / "v2", swapped.load_fusion())
    for sub in ("text_encoder", "audio_encoder"):
        (tmp_path / "v2" / sub).symlink_to(tiny_bundle / sub)

    statuses, stop = [], threading.Event()

    def traffic():
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/predict", json={"text": "steady traffic"}).status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        assert httpx.get(f"{url}/v1/model").json()["version"] == "0.0.0-untrained"
        deploy(ray_cluster, {"bundle": str(tmp_path / "v2"), "settings": {"ui": False}}, name="swap", route_prefix="/swap")
        import time

        deadline = time.monotonic() + 90
        while httpx.get(f"{url}/v1/model").json()["version"] != "2.0.0":
            assert time.monotonic() < deadline, "the new bundle never went live"
            time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
        from ray import serve

        serve.delete("swap")
    assert statuses and set(statuses) == {200}, statuses


def synthetic_warnings(url: str, body: dict) -> list[str]:
    r = httpx.post(f"{url}/v1/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return [w for w in r.json()["warnings"] if "SYNTHETIC speech" in w]


def test_replies_with_audio_say_when_the_audio_branch_learned_synthetic_speech(ray_cluster, served_app, tiny_bundle,
                                                                              tmp_path, wav_bytes):
    from ray import serve

    from model.bundle import Bundle

    audio = base64.b64encode(wav_bytes).decode()
    assert not Bundle.load(tiny_bundle).synthetic_speech
    assert synthetic_warnings(served_app, {"text": "fine", "audio": audio}) == []
    bundle = Bundle.load(tiny_bundle)
    bundle.data["synthetic_speech"] = True
    bundle.save(tmp_path / "synthetic", bundle.load_fusion())
    for sub in ("text_encoder", "audio_encoder"):
        (tmp_path / "synthetic" / sub).symlink_to(tiny_bundle / sub)
    one = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}}
    url = deploy(ray_cluster, {"bundle": str(tmp_path / "synthetic"), "settings": {"ui": False},
                               "deployments": {n: one for n in ("Driver", "TextEncoder", "AudioEncoder", "FusionHead")}},
                 name="synthetic", route_prefix="/synthetic")
    try:
        assert len(synthetic_warnings(url, {"text": "fine", "audio": audio})) == 1
        assert len(synthetic_warnings(url, {"audio": audio})) == 1
        # Text alone never went through the audio branch: nothing to warn about.
        assert synthetic_warnings(url, {"text": "fine"}) == []
    finally:
        serve.delete("synthetic")


@pytest.mark.parametrize("rate", [176_400, 192_000])
def test_high_resolution_recordings_are_accepted(client, rate):
    from model.audio import encode_wav

    r = client.post("/v1/predict", files={"audio": ("hi-res.wav", encode_wav(tone(0.5, rate), rate), "audio/wav")})
    assert r.status_code == 200, r.text
    _check_prediction(r.json(), {"audio"})
