"""The Gradio page in a real Chromium, against the real application on local Ray.

Debian's chromium (``apt-get install -y chromium``) is driven by Playwright; no
browser build is ever downloaded. The app serves a copy of the tiny test bundle
with an ``examples/`` folder (speech synthesized by espeak-ng), so the examples
path the demo bundle uses is exercised too. The tiny bundle is untrained: tests
assert that *a* label from ``bundle.labels`` is shown, not which one.

The Driver runs two replicas, as in serve_config.yaml: every browser context is a new
UI session, pinned by its cookie to one of them, so the tests below run on both, and
the last test checks from the replicas' own logs that both served the page.

A last test redeploys with a trained demo bundle (``$UI_DEMO_BUNDLE``, else
``artifacts/demo-bundle`` once ``make demo-model`` built it, else the quick profile's,
``model.demo.quick``, which ``make test`` builds once per input key) and checks a
clearly positive sentence, the bundle's own examples, the synthetic-speech warning
and the model card.

Screenshots of every test land in ``test-artifacts/``. ``UPDATE_SCREENSHOT=1``
also refreshes ``docs/screenshot.png`` (the README's picture): from the demo
bundle when it exists, else from the tiny bundle's example-click test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, SERVED_DRIVER_REPLICAS, deploy, replica_log_lines, write_speech

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
ROOT = Path(__file__).resolve().parent.parent
DOCS_SCREENSHOT = ROOT / "docs" / "screenshot.png"
DEMO_BUNDLE = Path(os.environ.get("UI_DEMO_BUNDLE", ROOT / "artifacts" / "demo-bundle"))
TIMEOUT_MS = 60_000  # first requests on a cold 2-core machine are slow

POSITIVE = "What a wonderful, moving film. I loved every minute of it."
UI_APP = "sentiment"  # conftest's served_app
# Log lines per Driver replica before this module's first test: earlier modules' sessions
# on the same app, and apps of the same name whose replicas are gone.
BEFORE: dict[str, int] = {}


# ---- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ui_url(served_app):
    BEFORE.update(replica_log_lines(UI_APP, "Driver", "/gradio_api/queue/join"))
    return served_app


@pytest.fixture(scope="module")
def labels(served_bundle) -> list[str]:
    from model.bundle import Bundle

    return Bundle.load(served_bundle).labels


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, ui_url, artifacts_dir, request):
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(ui_url + "/")
    page.locator("#predict-button").wait_for()
    yield page
    page.screenshot(path=str(artifacts_dir / f"ui-{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wav") / "speech.wav"
    write_speech(path, POSITIVE, 175, 50)
    return path


# ---- helpers -------------------------------------------------------------------------


def upload_audio(page, path: Path) -> None:
    page.locator("#audio-input input[type=file]").set_input_files(str(path))
    # The download link appears once the file is on the server; submitting
    # earlier would send no audio.
    page.locator('#audio-input [data-testid="download-link"]').first.wait_for()


def shown_label(page) -> str:
    value = page.locator('#label [data-testid="label-output-value"]')
    value.wait_for()
    return value.inner_text().strip()


def wait_for_heatmap(page) -> None:
    image = page.locator("#heatmap img")
    image.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('#heatmap img'); return i && i.complete && i.naturalWidth > 200; }"
    )


def save_screenshot(page, path: Path, for_docs: bool) -> None:
    page.wait_for_timeout(500)  # let the waveform finish drawing
    page.screenshot(path=str(path), full_page=True)
    if for_docs and os.environ.get("UPDATE_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS_SCREENSHOT)


def toast_text(page) -> str:
    toast = page.locator('[data-testid="toast-text"]').first
    toast.wait_for()
    return toast.inner_text()


# ---- the predict tab -------------------------------------------------------------------


def test_typed_text_shows_a_label_score_and_text_branch(page, labels):
    page.locator("#text-input textarea").fill(POSITIVE)
    page.locator("#predict-button").click()
    assert shown_label(page) in labels
    gauge = page.locator('#gauge [data-testid="sentiment-value"]')
    assert re.fullmatch(r"[+-]\d\.\d\d", gauge.inner_text().strip())
    text_card = page.locator('#modalities [data-modality="text only"] [data-testid="branch-label"]')
    assert text_card.inner_text().strip() in labels
    # No speech: no heatmap, and the page says why instead of showing nothing.
    assert "needs both text and speech" in page.locator("#notes").inner_text()
    assert "UNTRAINED" in page.locator("#untrained-banner").inner_text()


def test_wav_upload_shows_a_label_and_the_attention_heatmap(page, labels, speech_wav):
    page.locator("#text-input textarea").fill(POSITIVE)
    upload_audio(page, speech_wav)
    page.locator("#predict-button").click()
    assert shown_label(page) in labels
    wait_for_heatmap(page)
    for branch in ("text only", "audio only", "fused"):
        card = page.locator(f'#modalities [data-modality="{branch}"] [data-testid="branch-label"]')
        assert card.inner_text().strip() in labels


def test_speech_without_text_is_predicted_from_audio_alone(page, labels, tmp_path, wav_bytes):
    path = tmp_path / "tone-22k.wav"  # 22.05 kHz: the driver resamples it
    path.write_bytes(wav_bytes)
    upload_audio(page, path)
    page.locator("#predict-button").click()
    assert shown_label(page) in labels
    audio_card = page.locator('#modalities [data-modality="audio only"] [data-testid="branch-label"]')
    assert audio_card.inner_text().strip() in labels


def test_clicking_the_disagreeing_example_fills_inputs_and_runs_it(page, labels, artifacts_dir):
    examples = page.locator("#examples")
    # The two bad entries in examples.json were skipped, the three good ones shown.
    for _text, _audio, caption, _voice in EXAMPLES:
        # The examples render after the Predict button (the page fixture waits for that one).
        examples.get_by_text(caption).first.wait_for()
        assert examples.get_by_text(caption).count() == 1
    assert examples.get_by_text("escape").count() == 0
    examples.get_by_text("disagree: positive words, flat voice").click()
    assert shown_label(page) in labels
    wait_for_heatmap(page)
    assert page.locator("#text-input textarea").input_value() == EXAMPLES[1][0]
    assert page.locator('#audio-input [data-testid="download-link"]').count() >= 1
    save_screenshot(page, artifacts_dir / "ui-screenshot.png", for_docs=not DEMO_BUNDLE.is_dir())


def test_undecodable_upload_shows_a_readable_error(page, tmp_path):
    path = tmp_path / "not-audio.wav"
    path.write_bytes(b"this is a text file with a .wav name\n" * 20)
    page.locator("#text-input textarea").fill(POSITIVE)
    upload_audio(page, path)
    page.locator("#predict-button").click()
    message = toast_text(page)
    assert message.strip(), "the error toast is empty"
    assert "Traceback" not in message and "Exception" not in message
    assert re.search(r"audio|WAV|decode", message, re.IGNORECASE), message


def test_too_long_audio_is_refused_with_the_limit_in_the_message(page, tmp_path):
    from model.audio import encode_wav

    path = tmp_path / "long.wav"
    path.write_bytes(encode_wav(np.zeros(601 * 8_000, dtype="float32"), 8_000))  # 601 s > the 600 s limit
    upload_audio(page, path)
    page.locator("#predict-button").click()
    message = toast_text(page)
    assert "600" in message and "Traceback" not in message, message


def test_a_long_recording_is_drawn_as_a_timeline(page, labels, tmp_path, artifacts_dir):
    from model.audio import encode_wav
    from tests.test_serving import RATE, spoken

    path = tmp_path / "call.wav"
    path.write_bytes(encode_wav(spoken(35.0), RATE))
    upload_audio(page, path)
    page.locator("#predict-button").click()
    assert shown_label(page) in labels
    timeline = page.locator("#timeline")
    timeline.wait_for(state="visible")
    # Gradio draws the LinePlot with Vega: a canvas or an SVG inside the component.
    timeline.locator("canvas, svg").first.wait_for(state="visible")
    notes = page.locator("#notes").inner_text()
    assert "time (s)" in notes and notes.count("0.0–") == 1, notes
    save_screenshot(page, artifacts_dir / "ui-timeline.png", for_docs=False)


def test_empty_submit_explains_what_is_missing(page):
    page.locator("#predict-button").click()
    message = toast_text(page)
    assert re.search(r"text|audio", message, re.IGNORECASE), message


def test_predict_event_keeps_its_api_name_for_gradio_client(ui_url):
    """gradio_client callers use api_name="/predict" with (text, audio) and read output 0."""
    import httpx

    endpoints = httpx.get(f"{ui_url}/gradio_api/info", timeout=30).json()["named_endpoints"]
    predict = endpoints["/predict"]
    assert [p["component"] for p in predict["parameters"]] == ["Textbox", "Audio"]
    assert predict["returns"][0]["component"] == "Label"


def test_gradio_client_sessions_work_on_every_driver_replica(ui_url, labels, speech_wav):
    """gradio_client keeps the affinity cookie of its first response, so its queue
    join and its event stream reach the same replica. New clients (new sessions) are
    made until both replicas have served one; every prediction must carry a label."""
    from gradio_client import Client, handle_file

    before = replica_log_lines(UI_APP, "Driver", "/gradio_api/queue/join")
    for attempt in range(12):
        client = Client(ui_url + "/", verbose=False)
        for audio in (None, handle_file(str(speech_wav))):
            result = client.predict("a fine and moving film", audio, api_name="/predict")
            assert result[0]["label"] in labels, result[0]
        after = replica_log_lines(UI_APP, "Driver", "/gradio_api/queue/join")
        served = {replica for replica, n in after.items() if n > before.get(replica, 0)}
        if len(served) == SERVED_DRIVER_REPLICAS:
            break
    print(f"\n[gradio_client] {attempt + 1} sessions until both Driver replicas served one: {after}")
    assert len(served) == SERVED_DRIVER_REPLICAS, after


# ---- the batch and about tabs ----------------------------------------------------------


def test_batch_csv_with_zip_reports_failed_rows_and_downloads_predictions(page, labels, speech_wav, tmp_path):
    archive = tmp_path / "audio.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(speech_wav, "clips/speech.wav")
        zf.writestr("clips/garbage.wav", b"not audio" * 50)
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        csv.writer(handle).writerows([
            ["id", "text", "audio"],
            ["a", POSITIVE, "clips/speech.wav"],
            ["b", "Dull and far too long.", ""],
            ["c", "", "clips/garbage.wav"],  # in the zip, but not audio
            ["d", "Where is my audio?", "clips/missing.wav"],
        ])
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-manifest input[type=file]").set_input_files(str(manifest))
    page.locator("#batch-zip input[type=file]").set_input_files(str(archive))
    page.locator('#batch-zip [data-testid="file"], #batch-zip a').first.wait_for()
    page.locator('#batch-manifest [data-testid="file"], #batch-manifest a').first.wait_for()
    page.locator("#batch-button").click()
    summary = page.locator("#batch-summary")
    summary.get_by_text("4 rows: 2 predicted, 2 failed").wait_for()
    with page.expect_download() as download:
        page.locator("#batch-download a").first.click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error", "error"]
    assert rows[0]["label"] in labels and rows[0]["audio_label"] in labels
    assert rows[1]["label"] in labels and rows[1]["audio_label"] == ""
    assert rows[2]["error_code"] and rows[2]["error"] and rows[2]["label"] == ""
    assert rows[3]["error_code"] == "audio_not_in_zip" and "not in the zip" in rows[3]["error"]


def test_about_tab_shows_the_model_card_and_api_links(page, labels):
    page.get_by_role("tab", name="About").click()
    card = page.locator("#model-card")
    card.get_by_role("heading", name=re.compile("Model card")).wait_for()
    text = card.inner_text()
    assert "UNTRAINED" in text
    for label in labels:
        assert label in text
    assert card.locator('a[href="docs"]').count() == 1
    assert card.locator('a[href="v1/model"]').count() == 1


# ---- with the demo model (only when it has been built) ----------------------------------


def test_both_driver_replicas_served_browser_sessions(browser, ui_url, labels):
    """Runs after the page tests above. Each browser context is a new session; more are
    opened (each predicting once) until both Driver replicas have answered the page's
    queue, as their own logs show."""
    def served() -> dict[str, int]:
        return {r: n for r, n in replica_log_lines(UI_APP, "Driver", "/gradio_api/queue/join").items()
                if n > BEFORE.get(r, 0)}

    for _ in range(12):
        if len(served()) == SERVED_DRIVER_REPLICAS:
            break
        context = browser.new_context()
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(ui_url + "/")
        page.locator("#text-input textarea").fill("A quiet, lovely film.")
        page.locator("#predict-button").click()
        assert shown_label(page) in labels
        context.close()
    print(f"\n[browser] queue joins per Driver replica: {served()}")
    assert len(served()) == SERVED_DRIVER_REPLICAS, served()


@pytest.fixture(scope="module")
def demo_bundle() -> Path:
    """The full demo bundle when built, else the quick profile's (built now if not cached)."""
    if (DEMO_BUNDLE / "bundle.json").is_file():
        return DEMO_BUNDLE
    from model.demo.quick import quick_bundle

    return quick_bundle()


def synthetic_warnings(url: str, **request) -> list[str]:
    import httpx

    r = httpx.post(f"{url}/v1/predict", timeout=60, **request)
    assert r.status_code == 200, r.text
    return [w for w in r.json()["warnings"] if "SYNTHETIC speech" in w]


@pytest.fixture(scope="module")
def demo_url(ray_cluster, demo_bundle):
    """Deployed after the tiny app is gone (conftest deletes it after its last test), at "/" as make run serves it."""
    from ray import serve

    yield deploy(ray_cluster, {"bundle": str(demo_bundle)}, name="demo")
    serve.delete("demo")


def test_demo_bundle_reads_a_positive_sentence_as_positive(browser, artifacts_dir, demo_bundle, demo_url):
    from model.bundle import Bundle

    demo = Bundle.load(demo_bundle)
    assert demo.trained and demo.synthetic_speech and "positive" in demo.labels
    examples = json.loads((demo_bundle / "examples" / "examples.json").read_text())["examples"]
    url = demo_url
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(url + "/")
        page.locator("#text-input textarea").fill(POSITIVE)
        page.locator("#predict-button").click()
        assert shown_label(page) in demo.labels
        text_only = page.locator('#modalities [data-modality="text only"] [data-testid="branch-label"]')
        assert text_only.inner_text().strip() == "positive"
        assert "SYNTHETIC speech" not in page.locator("#notes").inner_text()  # no speech was sent
        # The bundle's own examples: prefer the one where speech and text disagree.
        page.locator("#clear-button").click()  # so the label below is the example's
        page.locator('#label [data-testid="label-output-value"]').wait_for(state="detached")
        for entry in examples:
            assert page.locator("#examples").get_by_text(entry["caption"], exact=True).count() == 1, entry
        disagree = next(e for e in examples if e["caption"].startswith("DISAGREE") and e["text"] and e["audio"])
        page.locator("#examples").get_by_text(disagree["caption"], exact=True).click()
        page.locator('#label [data-testid="label-output-value"]').wait_for()
        assert page.locator("#text-input textarea").input_value() == disagree["text"]
        wait_for_heatmap(page)
        # Speech went to a model whose audio branch learned synthetic speech: the page says so.
        page.locator("#notes").get_by_text("SYNTHETIC speech").wait_for()
        save_screenshot(page, artifacts_dir / "ui-screenshot-demo.png", for_docs=demo_bundle == DEMO_BUNDLE)
        page.get_by_role("tab", name="About").click()
        card = page.locator("#model-card")
        card.get_by_role("heading", name=re.compile(f"Model card: {re.escape(demo.name)}")).wait_for()
        text = card.inner_text()
        assert "Synthetic speech." in text and "UNTRAINED" not in text
        assert "test_text_only" in text  # the metrics table the build recorded
    finally:
        context.close()


def test_demo_replies_with_audio_say_the_audio_branch_learned_synthetic_speech(demo_bundle, demo_url):
    """The JSON API carries the page's warning whenever speech reached the audio branch
    (tests/test_serving.py: never for a bundle trained on real speech)."""
    examples = json.loads((demo_bundle / "examples" / "examples.json").read_text())["examples"]
    speech = next(e for e in examples if e["audio"] and e["text"])
    audio = ("example.wav", (demo_bundle / "examples" / speech["audio"]).read_bytes())
    assert len(synthetic_warnings(demo_url, files={"audio": audio}, data={"text": speech["text"]})) == 1
    assert len(synthetic_warnings(demo_url, files={"audio": audio})) == 1
    # Text alone never went through the audio branch: nothing to warn about.
    assert synthetic_warnings(demo_url, json={"text": speech["text"]}) == []
