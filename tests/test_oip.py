"""Integration: the Open Inference Protocol (/v2) on the real app, driven by the stock ``tritonclient.http``.

Every row is checked against ``POST /v1/predict`` for the same input: a row of an
``infer`` request must be exactly that call's prediction.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.conftest import tone

pytestmark = pytest.mark.slow

tritonclient_http = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "sentiment"
TEXTS = ["a wonderful, moving film", "dull and lifeless", "it was fine, I guess", "never again"]


def _flac(seconds: float, rate: int, freq: float) -> bytes:
    out = io.BytesIO()
    sf.write(out, tone(seconds, rate, freq), rate, format="FLAC")
    return out.getvalue()


@pytest.fixture(scope="module")
def clips(wav_bytes) -> list[bytes]:
    """Two audio files of different containers, rates and lengths."""
    return [wav_bytes, _flac(0.8, 16_000, 440.0)]


@pytest.fixture(scope="module")
def oip_url(served_app):
    """conftest's shared app, the UI included (its mount at the app's "/" must not shadow /v2)."""
    return served_app


@pytest.fixture(scope="module")
def http(oip_url):
    with httpx.Client(base_url=oip_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def triton(oip_url):
    # A URL with a path (an app at a route prefix) also works: tritonclient keeps it as the
    # base of every request.
    client = tritonclient_http.InferenceServerClient(oip_url.removeprefix("http://"), network_timeout=60.0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def v1(http):
    """/v1/predict's answer for (text, audio), computed once per input."""
    answers = {}

    def answer(text: str, audio: bytes) -> dict:
        if (text, audio) not in answers:
            body = {k: v for k, v in {"text": text, "audio": base64.b64encode(audio).decode()}.items() if v}
            r = http.post("/v1/predict", json=body)
            assert r.status_code == 200, r.text
            answers[text, audio] = r.json()
        return answers[text, audio]

    return answer


@pytest.fixture(scope="module")
def labels(triton) -> list[str]:
    return triton.get_model_metadata(MODEL)["parameters"]["labels"].split(",")


def bytes_input(name: str, values: list, binary: bool, column: bool = False):
    """A BYTES input; in JSON an audio element is base64 of the file (the model metadata says so)."""
    if not binary and name == "audio":
        values = [base64.b64encode(v).decode() for v in values]
    array = np.array(values, dtype=np.object_)
    if column:
        array = array.reshape(-1, 1)
    tensor = tritonclient_http.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def check_rows(result, rows: list[tuple[str, bytes]], v1, labels: list[str]):
    label, scores, sentiment = result.as_numpy("label"), result.as_numpy("scores"), result.as_numpy("sentiment")
    assert label.shape == (len(rows),) and scores.shape == (len(rows), len(labels))
    assert scores.dtype == np.float32 and sentiment.dtype == np.float32
    for i, (text, audio) in enumerate(rows):
        expected = v1(text, audio)
        got = label[i].decode() if isinstance(label[i], bytes) else label[i]
        assert got == expected["label"], (i, text, len(audio))
        np.testing.assert_allclose(scores[i], [expected["scores"][name] for name in labels], atol=1e-6, rtol=0)
        assert sentiment[i] == pytest.approx(expected["sentiment"], abs=1e-6)


# ---- health and metadata ------------------------------------------------------------


def test_health(triton, tiny_bundle):
    from model.bundle import Bundle

    version = Bundle.load(tiny_bundle).version
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready(MODEL)
    assert triton.is_model_ready(MODEL, version)
    assert not triton.is_model_ready(MODEL, "no-such-version")
    assert not triton.is_model_ready("other")


def test_server_metadata(triton):
    meta = triton.get_server_metadata()
    assert meta["name"] and meta["version"]
    assert set(meta["extensions"]) == {"binary_tensor_data", "model_configuration"}


def test_model_metadata(triton, http, tiny_bundle):
    from model.bundle import Bundle

    bundle = Bundle.load(tiny_bundle)
    meta = triton.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [bundle.version] and meta["platform"]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {
        ("text", "BYTES", (-1,)), ("audio", "BYTES", (-1,))}
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("label", "BYTES", (-1,)), ("scores", "FP32", (-1, len(bundle.labels))), ("sentiment", "FP32", (-1,))}
    assert meta["parameters"]["labels"].split(",") == bundle.labels
    assert "base64" in meta["parameters"]["audio_encoding"]
    assert triton.get_model_metadata(MODEL, bundle.version) == meta
    config = triton.get_model_config(MODEL)
    assert config["max_batch_size"] == 0
    assert {(t["name"], t["data_type"]) for t in config["input"]} == {("text", "TYPE_STRING"), ("audio", "TYPE_STRING")}
    with pytest.raises(InferenceServerException) as wrong:
        triton.get_model_metadata(MODEL, "9.9.9")
    assert wrong.value.status() == "404"
    r = http.get("/v2/models/sentiment/versions/9.9.9")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)


def test_health_routes_win_over_the_ui_mount(http):
    """The Gradio UI is mounted at the app's "/"; the /v2 routes must still answer as JSON."""
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/sentiment/ready"):
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), path


# ---- inference ----------------------------------------------------------------------


CASES = {
    "text": lambda clips: [(t, b"") for t in TEXTS],
    "audio": lambda clips: [("", clip) for clip in clips],
    "both": lambda clips: [(TEXTS[0], clips[0]), (TEXTS[1], clips[1])],
    # Some rows without text, some without audio, some with both.
    "mixed": lambda clips: [(TEXTS[0], b""), ("", clips[0]), (TEXTS[2], clips[1]), (TEXTS[3], b""), ("", clips[1])],
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("case", CASES)
def test_rows_equal_v1_predict(triton, v1, labels, clips, case, binary):
    rows = CASES[case](clips)
    inputs = []
    if any(text for text, _ in rows):
        inputs.append(bytes_input("text", [text for text, _ in rows], binary, column=case == "both"))
    if any(audio for _, audio in rows):
        inputs.append(bytes_input("audio", [audio for _, audio in rows], binary, column=case == "both"))
    outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
               for name in ("label", "scores", "sentiment")]
    result = triton.infer(MODEL, inputs, outputs=outputs, request_id=f"{case}-{binary}")
    assert result.get_response()["id"] == f"{case}-{binary}"
    check_rows(result, rows, v1, labels)


def test_default_outputs_are_all_binary(triton, v1, labels, clips):
    """Without ``outputs``, tritonclient asks for every output in binary (``binary_data_output``)."""
    rows = [(TEXTS[1], clips[0]), (TEXTS[2], b"")]
    result = triton.infer(MODEL, [bytes_input("text", [t for t, _ in rows], True),
                                  bytes_input("audio", [a for _, a in rows], False)])
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    check_rows(result, rows, v1, labels)


def test_outputs_select_and_mix_json_and_binary(triton, v1):
    outputs = [tritonclient_http.InferRequestedOutput("sentiment", binary_data=True),
               tritonclient_http.InferRequestedOutput("label", binary_data=False)]
    result = triton.infer(MODEL, [bytes_input("text", TEXTS[:2], False)], outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["sentiment", "label"]
    assert result.as_numpy("scores") is None
    assert list(result.as_numpy("label")) == [v1(t, b"")["label"] for t in TEXTS[:2]]


def test_plain_json_request(http, v1, clips):
    """What curl sends: JSON only, audio as base64, nested data allowed."""
    body = {"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [[TEXTS[0]], [""]]},
        {"name": "audio", "datatype": "BYTES", "shape": [2, 1], "data": [[""], [base64.b64encode(clips[1]).decode()]]},
    ], "outputs": [{"name": "label"}, {"name": "scores"}]}
    r = http.post("/v2/models/sentiment/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert answer["model_name"] == MODEL and answer["model_version"]
    label, scores = answer["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [2],
                     "data": [v1(TEXTS[0], b"")["label"], v1("", clips[1])["label"]]}
    assert scores["datatype"] == "FP32" and scores["shape"][0] == 2 and len(scores["data"]) == 2 * scores["shape"][1]


def test_rows_of_one_request_share_batches(http):
    before = http.get("/v1/stats").json()["TextEncoder"]
    n = 16
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n],
                        "data": [f"review number {i}" for i in range(n)]}]}
    r = http.post("/v2/models/sentiment/infer", json=body)
    assert r.status_code == 200, r.text
    after = http.get("/v1/stats").json()["TextEncoder"]
    assert after["items"] - before["items"] == n
    # Fewer forward passes than rows: the rows were in flight together.
    assert after["batches"] - before["batches"] < n


@pytest.mark.parametrize("name", ["text", "audio"])
def test_a_request_of_max_batch_rows_is_answered(triton, clips, name):
    """The most rows one request may carry, on an idle app: its fan-out must not overrun the
    encoders' own queues (AudioEncoder takes 16 running + 32 queued per replica)."""
    n = int(triton.get_model_metadata(MODEL)["parameters"]["max_batch_rows"])
    values = [f"review number {i}" for i in range(n)] if name == "text" else [clips[i % 2] for i in range(n)]
    result = triton.infer(MODEL, [bytes_input(name, values, True)],
                          outputs=[tritonclient_http.InferRequestedOutput("label")])
    assert result.as_numpy("label").shape == (n,)


# ---- errors -------------------------------------------------------------------------


def _text(shape, data, datatype="BYTES", name="text") -> dict:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


BAD = {
    "wrong datatype": ({"inputs": [_text([1], [1.0], "FP32")]}, 400),
    "wrong shape": ({"inputs": [_text([1, 2], ["a", "b"])]}, 400),
    "shape and data disagree": ({"inputs": [_text([3], ["a", "b"])]}, 400),
    "rows differ": ({"inputs": [_text([2], ["a", "b"]), _text([1], [""], name="audio")]}, 400),
    "no inputs": ({"inputs": []}, 400),
    "unknown input": ({"inputs": [_text([1], ["a"], name="image")]}, 400),
    "every modality empty": ({"inputs": [_text([2], ["fine", " "])]}, 400),
    "audio not base64": ({"inputs": [_text([1], ["@@@"], name="audio")]}, 400),
    "undecodable audio": ({"inputs": [_text([1], [base64.b64encode(b"random bytes" * 40).decode()],
                                            name="audio")]}, 422),
    "text too long": ({"inputs": [_text([1], ["x" * 2001])]}, 413),
    "rows over the cap": ({"inputs": [_text([65], ["a"] * 65)]}, 413),
    "unknown output": ({"inputs": [_text([1], ["a"])], "outputs": [{"name": "logits"}]}, 400),
    "binary_data not a boolean": ({"inputs": [_text([1], ["a"])], "parameters": {"binary_data_output": "yes"}}, 400),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_requests_answer_in_protocol_form(http, case):
    body, status = BAD[case]
    r = http.post("/v2/models/sentiment/infer", json=body)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_row_errors_name_the_row(http):
    r = http.post("/v2/models/sentiment/infer", json={"inputs": [_text([3], ["good", "", "bad"])]})
    assert r.status_code == 400 and r.json()["error"].startswith("row 1:")


def _binary_body(header: dict, raw: bytes) -> dict:
    encoded = json.dumps(header).encode()
    return {"content": encoded + raw, "headers": {"inference-header-content-length": str(len(encoded))}}


@pytest.mark.parametrize("request_kwargs, status", [
    ({"content": b"{not json"}, 400),
    ({"content": b"text=hi", "headers": {"content-type": "text/plain"}}, 415),
    # The JSON header claims more bytes than the body has, and then fewer than the binary tensors need.
    ({"content": b"{}", "headers": {"inference-header-content-length": "99"}}, 400),
    (_binary_body({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                               "parameters": {"binary_data_size": 50}}]}, b"\x05\0\0\0hello"), 400),
    # A BYTES element whose length prefix runs past its tensor.
    (_binary_body({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                               "parameters": {"binary_data_size": 9}}]}, b"\x50\0\0\0hello"), 400),
])
def test_bad_bodies(http, request_kwargs, status):
    r = http.post("/v2/models/sentiment/infer", **request_kwargs)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["error"], str)


def test_unknown_model_and_version(http, triton):
    for path in ("/v2/models/other/infer", "/v2/models/sentiment/versions/9.9.9/infer"):
        r = http.post(path, json={"inputs": [_text([1], ["a"])]})
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path
    with pytest.raises(InferenceServerException) as wrong:
        triton.infer(MODEL, [bytes_input("text", ["a"], True)], model_version="9.9.9")
    assert wrong.value.status() == "404" and "9.9.9" in wrong.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_sees_the_error_message(triton, binary):
    bad = b"random bytes" * 40
    with pytest.raises(InferenceServerException) as undecodable:
        triton.infer(MODEL, [bytes_input("audio", [bad], binary)])
    assert undecodable.value.status() == "422" and undecodable.value.message().startswith("row 0:")
    with pytest.raises(InferenceServerException) as too_many:
        triton.infer(MODEL, [bytes_input("text", ["a"] * 65, binary)])
    assert too_many.value.status() == "413" and "65" in too_many.value.message()


def test_health_is_open_and_the_rest_needs_the_api_key():
    """In process, with the real edge: the V2 probes are open like /healthz, as Kubernetes probes need."""
    from types import SimpleNamespace

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from fastapi.testclient import TestClient

    from deployments.driver import DriverSettings
    from deployments.http.edge import EdgeMiddleware
    from deployments.http.errors import install_error_handlers
    from deployments.http.oip import mount_oip

    class Driver:
        settings = DriverSettings()
        bundle = SimpleNamespace(name="fake", version="1", labels=["negative", "positive"], trained=False)

        async def healthz(self):
            return JSONResponse({"status": "ok"})

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(EdgeMiddleware)
    app.state.settings, app.state.api_key = Driver.settings, "s3cret"
    mount_oip(app, Driver())
    with TestClient(app) as client:
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 200
        for path in ("/v2", "/v2/models/sentiment", "/v2/models/sentiment/ready", "/v2/models/sentiment/config"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert client.post("/v2/models/sentiment/infer", json={}).status_code == 401


# ---- Triton's load generator ----------------------------------------------------------


@pytest.mark.parametrize("extra", [["--audio-seconds", "1"], ["--tensor-format", "json"]], ids=["binary", "json"])
def test_perf_analyzer_drives_infer(oip_url, capsys, extra):
    """A smoke run of benchmarks/oip_perf.py: perf_analyzer reads the metadata and config and gets
    answers. ``make install`` puts it in the venv (scripts/perf-analyzer.sh), with a newer glibc
    where the system's is older than its wheel needs."""
    from benchmarks.oip_perf import find_perf_analyzer, main, usable

    command = find_perf_analyzer()
    assert command is not None and usable(command), f"perf_analyzer does not run here: {command}"
    assert main(["--url", oip_url.removeprefix("http://"), "--concurrency", "2", "--request-count", "24",
                 "--texts", "16", "--timeout", "120", *extra]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["results"][0]["concurrency"] == 2 and summary["results"][0]["p50_ms"] > 0
