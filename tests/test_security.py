"""Security: no pickle or remote code, the API key (JSON API and Gradio UI alike),
Gradio's file routes, upload caps, what reaches the logs, and network exposure."""

from __future__ import annotations

import ast
import base64
import http.client
import re
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import tone

ROOT = Path(__file__).resolve().parent.parent
# ---- static checks: no pickle on the request path or in bundles ---------------------

SOURCE_DIRS = ("model", "deployments", "jobs", "harness", "benchmarks", "cluster", "loadtest", "scripts")
FORBIDDEN = {
    r"\bimport\s+(pickle|cPickle|dill|joblib|cloudpickle)\b": "a pickle module",
    r"\bfrom\s+(pickle|cPickle|dill|joblib|cloudpickle)\b": "a pickle module",
    r"\bpickle\.loads?\(": "pickle.load",
    r"\btorch\.load\(": "torch.load (pickle underneath)",
    r"\btrust_remote_code\s*=\s*True\b": "trust_remote_code=True",
    r"\ballow_pickle\s*=\s*True\b": "numpy allow_pickle=True",
    r"\bweights_only\s*=\s*False\b": "torch weights_only=False",
    r"\buse_safetensors\s*=\s*False\b": "use_safetensors=False",
    r"\bread_pickle\(": "pandas.read_pickle",
}


def source_files() -> list[Path]:
    return [path for folder in SOURCE_DIRS if (ROOT / folder).is_dir()
            for path in sorted((ROOT / folder).rglob("*")) if path.suffix in {".py", ".sh", ".yaml"}]


def test_no_pickle_torch_load_or_remote_code_in_the_code():
    hits = [f"{path.relative_to(ROOT)}:{number}: {why}"
            for path in source_files()
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            for pattern, why in FORBIDDEN.items() if re.search(pattern, line)]
    assert len(source_files()) > 10
    assert not hits, "\n".join(hits)


def test_no_from_pretrained_call_can_enable_remote_code():
    """trust_remote_code must be absent (transformers' default, off) or a literal False."""
    bad = []
    for path in source_files():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "from_pretrained":
                for kw in node.keywords:
                    literal_false = isinstance(kw.value, ast.Constant) and kw.value.value is False
                    if kw.arg is None or (kw.arg == "trust_remote_code" and not literal_false):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, bad


def test_the_test_itself_can_fail(tmp_path):
    """The patterns do catch the calls they are meant to catch."""
    lines = ["state = torch.load(path)", "import pickle", "AutoModel.from_pretrained(x, trust_remote_code=True)"]
    assert all(any(re.search(p, line) for p in FORBIDDEN) for line in lines)


def test_bundles_hold_no_pickled_weights(tiny_bundle):
    bundles = [tiny_bundle] + [p for p in [ROOT / "artifacts" / "demo-bundle"] if (p / "bundle.json").is_file()]
    for bundle in bundles:
        files = [p for p in bundle.rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        pickled = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}]
        assert not pickled, pickled


# ---- static checks: network exposure and overload settings in serve_config.yaml -----


def test_serve_config_binds_loopback_and_bounds_every_queue():
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"
    for app in config["applications"]:
        for deployment in app["deployments"]:
            assert deployment.get("max_ongoing_requests", 0) > 0, deployment["name"]
            assert deployment.get("max_queued_requests", -1) > 0, deployment["name"]


def test_driver_rejections_carry_retry_after():
    from deployments.driver import Driver

    config = Driver.backpressure_config
    assert config.status_code in (429, 503) and config.retry_after_s
    assert Driver.max_queued_requests > 0


# ---- the served app with an API key ---------------------------------------------------


@pytest.fixture(scope="module")
def app(guarded_app):
    """The tiny bundle behind an API key, with small input limits, shared with test_fuzz."""
    return guarded_app


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}



WRONG_CREDENTIALS = {
    "none": lambda key: {},
    "wrong-bearer": lambda key: {"Authorization": "Bearer wrong"},
    "key-without-scheme": lambda key: {"Authorization": key},
    "key-with-another-scheme": lambda key: {"Authorization": f"Token {key}"},
    "wrong-password": lambda key: basic("x", "wrong"),
}


@pytest.mark.slow
@pytest.mark.parametrize("credentials", WRONG_CREDENTIALS)
def test_api_without_the_right_key_is_401(app, credentials):
    url, headers = app.url, WRONG_CREDENTIALS[credentials](app.key)
    for path in ("/v1/model", "/v1/stats"):
        r = httpx.get(url + path, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(url + "/v1/predict", json={"text": "hi"}, headers=headers, timeout=30)
    assert r.status_code == 401


@pytest.mark.slow
def test_api_with_the_key_works_and_health_stays_open(app):
    url = app.url
    r = httpx.post(url + "/v1/predict", json={"text": "a fine film"}, headers=app.bearer, timeout=30)
    assert r.status_code == 200, r.text
    assert httpx.get(url + "/healthz", timeout=30).status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/", "/config", "/gradio_api/info", "/docs", "/openapi.json"])
def test_ui_and_docs_sit_behind_the_same_key(app, path):
    url = app.url
    r = httpx.get(url + path, timeout=30)
    assert r.status_code == 401
    if not path.startswith("/v1"):
        assert r.headers["www-authenticate"].startswith("Basic")  # the browser's login prompt
    # A browser answers the prompt with any user name and the key as password.
    assert httpx.get(url + path, headers=basic("anyone", app.key), timeout=30).status_code == 200
    assert httpx.get(url + path, headers=app.bearer, timeout=30).status_code == 200


@pytest.mark.slow
def test_gradio_ui_predicts_behind_the_key(app, tmp_path, wav_bytes):
    from gradio_client import Client, handle_file

    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes)
    client = Client(app.url + "/", headers=app.bearer, verbose=False, analytics_enabled=False)
    label = client.predict("what a great film", handle_file(str(clip)), api_name="/predict")[0]
    assert label["label"] in {"negative", "positive"}


# ---- Gradio's file routes -----------------------------------------------------------

TRAVERSALS = [
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=%2Fetc%2Fpasswd",
    "/gradio_api/file=%252Fetc%252Fpasswd",
    "/gradio_api/file=../../../../../../etc/passwd",
    "/gradio_api/file=..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=/tmp/../etc/passwd",
    "/gradio_api/file=//etc/passwd",
    "/gradio_api/file=file:///etc/passwd",
    "/gradio_api/file=/proc/self/environ",
    "/gradio_api/file=/proc/self/cmdline",
    "/file=/etc/passwd",
    "/gradio_api/file/etc/passwd",
    "/static/../../../../etc/passwd",
    "/assets/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/gradio_api/upload/../../../../etc/passwd",
]


def raw_get(url: str, path: str, headers: dict) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (httpx would normalise the dot segments)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", parts.path + path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAVERSALS)
def test_gradio_serves_no_file_outside_its_uploads(app, path):
    status, body = raw_get(app.url, path, app.bearer)
    assert status >= 400, (status, body[:200])
    assert b"root:" not in body and app.key.encode() not in body


@pytest.mark.slow
def test_gradio_serves_none_of_our_files_named_outright(app, tiny_bundle):
    for name in ("bundle.json", "fusion.safetensors", "text_encoder/config.json"):
        status, body = raw_get(app.url, f"/gradio_api/file={tiny_bundle / name}", app.bearer)
        assert status >= 400 and b"tiny-test" not in body, (name, status)


def upload(app, content) -> httpx.Response:
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.wav"\r\n\r\n'.encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body = (head + content + tail) if isinstance(content, bytes) else iter([head, *content, tail])
    return httpx.post(app.url + "/gradio_api/upload", content=body, timeout=60,
                      headers={**app.bearer, "content-type": f"multipart/form-data; boundary={boundary}"})


@pytest.mark.slow
def test_uploads_are_capped(app):
    body_cap = app.limits["max_body_bytes"]
    gradio_cap = httpx.get(app.url + "/config", headers=app.bearer, timeout=30).json().get("max_file_size")
    print(f"\n[uploads] Gradio max_file_size {gradio_cap}, edge body cap {body_cap}")
    assert gradio_cap is not None and gradio_cap <= body_cap
    # The edge's cap on every body: declared (Content-Length) and chunked alike.
    r = upload(app, b"\0" * (body_cap + 1024))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = upload(app, [b"\0" * (256 * 1024)] * (body_cap // (256 * 1024) + 1))
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    # A small upload still works, and lands in Gradio's own temp folder.
    r = upload(app, b"RIFF" + b"\0" * 1000)
    assert r.status_code == 200 and r.json()[0].startswith(tempfile.gettempdir())
    assert httpx.get(app.url + "/healthz", timeout=30).status_code == 200


# ---- logs: request ids yes, text and audio no ------------------------------------------


def all_log_text(skip: tuple[str, ...] = ()) -> str:
    """Every log file of this Ray session: Serve's, the workers' stdout/stderr, Ray's own."""
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    return "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file() and p.suffix in
                     {".log", ".out", ".err", ".txt"} and not p.name.startswith(skip))


@pytest.mark.slow
def test_logs_hold_request_ids_but_never_text_or_audio(app):
    from model.audio import encode_wav

    secret_text = f"my secret diary entry {uuid.uuid4().hex}"
    audio_b64 = base64.b64encode(encode_wav(tone(0.5, 16_000, freq=313.0), 16_000)).decode()
    audio_marker = audio_b64[2000:2048]  # from the samples, not the shared WAV header
    ids = [f"logcheck-{i}-{uuid.uuid4().hex[:8]}" for i in range(4)]
    requests = [
        {"text": secret_text, "audio": audio_b64},                     # served
        {"text": secret_text, "audio": audio_marker + "!!"},            # invalid base64
        {"text": secret_text * 80},                                     # too long
        {"text": secret_text, "audio": base64.b64encode(b"RIFF" + b"x" * 600).decode()},  # undecodable
    ]
    statuses = [httpx.post(app.url + "/v1/predict", json=body, headers={**app.bearer, "X-Request-ID": request_id},
                           timeout=60).status_code for body, request_id in zip(requests, ids)]
    assert statuses == [200, 400, 413, 422]
    deadline, text = time.monotonic() + 20, ""
    while time.monotonic() < deadline:
        text = all_log_text()
        if all(request_id in text for request_id in ids):
            break
        time.sleep(1)
    assert all(request_id in text for request_id in ids), "request ids missing from the Serve logs"
    assert secret_text[-32:] not in text
    assert audio_marker not in text
    # The key reaches this test's driver through runtime_env, and Ray's runtime-env
    # agent logs env_vars verbatim: that file aside, no log may hold it. (In
    # production the key comes from the processes' environment, e.g. a Kubernetes
    # Secret, and never passes through runtime_env; see the README.)
    assert app.key not in all_log_text(skip=("runtime_env_agent",))
