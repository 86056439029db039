"""The Gradio page: its layout and event handlers, mounted at ``/`` on the driver's FastAPI app.

Three tabs: Predict (one text and/or speech input), Batch (a manifest in, a CSV
out) and About (the bundle's model card). Every prediction goes through
``driver.predict``, the same code path as ``POST /v1/predict``; the page adds no
model logic of its own. Drawing lives in ``plots``, the bundle's examples and
card in ``bundle_card``, the Batch tab's file handling in ``file_scoring``.

Contract kept for ``gradio_client`` callers: the event ``api_name="predict"``
takes (text, audio filepath) and its first output is the fused ``gr.Label``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import gradio as gr
from starlette.routing import Mount

from deployments.http.errors import PayloadTooLarge, not_found, status_for
from deployments.http.parsing import check_input
from deployments.ui.bundle_card import load_examples, model_card
from deployments.ui.event_scope import event_scope
from deployments.ui.file_scoring import (AudioArchive, BatchError, BatchLimits, columns, read_manifest, run_batch,
                                         write_csv)
from deployments.ui.plots import attention_image, modality_panel, segment_table, sentiment_gauge, timeline_frame

logger = logging.getLogger("ray.serve")

UNTRAINED_BANNER = (
    "**⚠ This model is UNTRAINED.** Its fusion head has random weights, so its predictions are "
    "meaningless. Build the demo model with `make demo-model`."
)
AUDIO_FORMATS = "WAV, FLAC, OGG or MP3"
# Under the inputs: what happens to speech given without text.
TRANSCRIBES = "Speech without text: the text branch reads what the model heard (its transcript)."
CANNOT_TRANSCRIBE = "Speech without text: this model cannot transcribe speech; type what was said for the text branch."
# Interactive requests are cheap for the driver itself (it awaits the model
# deployments), so several run at once; the model deployments' own queues and
# batching do the real load management. A batch job is many requests: one at a
# time per replica, the rest wait visibly in Gradio's queue.
PREDICT_CONCURRENCY = 8
BATCH_CONCURRENCY = 1
QUEUE_MAX_SIZE = 64
# How often Gradio's queue looks for a waiting event, and for progress to send (see mount_ui).
QUEUE_POLL_S = 0.02
PROGRESS_POLL_S = 0.05
CACHE_TTL_S = 3600  # uploads and outputs in Gradio's cache are deleted after an hour
PREVIEW_ROWS = 50


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / (1024 * 1024):.3g} MB"


def ui_error(exc: Exception, request_id: str) -> gr.Error:
    """Any failure as a readable message: the service's own mapping, never a traceback."""
    status, _code, message, _ = status_for(exc)
    if status >= 500:
        if status == 500:
            logger.error("UI request %s failed", request_id, exc_info=exc)
        message = f"{message} (request {request_id})"
    return gr.Error(message, title="Could not predict" if status < 500 else "Service problem",
                    print_exception=False)


def build_ui(driver) -> gr.Blocks:
    bundle, limits = driver.bundle, driver.settings.limits
    labels = list(bundle.labels)
    examples = load_examples(bundle, limits.max_audio_bytes)
    batch_limits = BatchLimits.for_body_limit(limits.max_body_bytes)

    async def predict(text: str | None, audio_path: str | None, request: gr.Request):
        with event_scope(request, "ui.predict") as request_id:
            return await _predict(text, audio_path, request_id)

    async def _predict(text: str | None, audio_path: str | None, request_id: str):
        try:
            audio = None
            if audio_path:
                size = Path(audio_path).stat().st_size
                if size > limits.max_long_audio_bytes:
                    raise PayloadTooLarge(f"audio is {_mb(size)}; the limit is {_mb(limits.max_long_audio_bytes)}")
                audio = Path(audio_path).read_bytes()
            parsed = check_input(text or None, audio, limits, long_audio=True)
            parsed.explain = True
            result = await driver.predict(parsed, request_id)
            attention = result.get("attention")
            # Drawing is CPU work: off the event loop that also serves the JSON API.
            heatmap = await asyncio.to_thread(attention_image, attention) if attention else None
        except Exception as exc:
            raise ui_error(exc, request_id) from None
        notes = [f"⚠ {warning}" for warning in result.get("warnings", [])]
        if result.get("transcript"):
            heard = result["transcript"].replace("`", "'")
            notes.insert(0, f"**Transcript** (what the text branch read): `{heard}`")
        segments = result.get("segments")
        if segments:
            notes.insert(0, segment_table(segments))
        elif heatmap is None:
            notes.append("The attention heatmap needs both text and speech.")
        notes.append(f"Request `{request_id}`.")
        return (
            result["scores"],
            sentiment_gauge(result["sentiment"]),
            modality_panel(result["modalities"], labels),
            heatmap,
            gr.LinePlot(value=timeline_frame(segments), visible=True) if segments else gr.LinePlot(visible=False),
            "  \n".join(notes),
        )

    async def batch(manifest_path: str | None, zip_path: str | None, request: gr.Request, progress=gr.Progress()):
        with event_scope(request, "ui.batch"):
            return await _batch(manifest_path, zip_path, progress)

    async def _batch(manifest_path: str | None, zip_path: str | None, progress: gr.Progress):
        if not manifest_path:
            raise gr.Error("Upload a manifest first (CSV or JSONL).", title="Nothing to run", print_exception=False)
        archive = None
        try:
            rows = read_manifest(manifest_path, batch_limits)
            if zip_path:
                archive = await asyncio.to_thread(AudioArchive, zip_path, batch_limits, limits.max_audio_bytes)
            progress((0, len(rows)), desc="Predicting", unit="rows")
            results = await run_batch(
                rows, archive, driver.predict, limits, labels, batch_limits,
                lambda done, total: progress((done, total), desc="Predicting", unit="rows"),
            )
        except BatchError as exc:
            raise gr.Error(exc.message, title="Unusable upload", print_exception=False) from None
        except Exception as exc:  # rows never raise (they are reported); this is the job itself
            raise ui_error(exc, "batch") from None
        finally:
            if archive is not None:
                archive.close()
        path = await asyncio.to_thread(write_csv, results, labels)
        failed = [r for r in results if r["status"] != "ok"]
        summary = [f"**{len(results)} rows: {len(results) - len(failed)} predicted, {len(failed)} failed.** "
                   "Failed rows are in the CSV with `status=error` and the reason."]
        summary += [f"- row {r['row']} (id `{r['id'].replace('`', '')}`): {r['error_code']}: {r['error']}"
                    for r in failed[:10]]
        if len(failed) > 10:
            summary.append(f"- … and {len(failed) - 10} more")
        preview_columns = columns(labels)
        preview = [[r.get(c, "") for c in preview_columns] for r in results[:PREVIEW_ROWS]]
        return str(path), "\n".join(summary), gr.Dataframe(value=preview, headers=preview_columns)

    with gr.Blocks(title="Multimodal sentiment", delete_cache=(CACHE_TTL_S, CACHE_TTL_S)) as demo:
        gr.Markdown(
            f"# Multimodal sentiment\nModel **{bundle.name}** v{bundle.version} reads *what* was said "
            "(text) and *how* it was said (speech), and fuses both with cross-modal attention."
        )
        if not bundle.trained:
            gr.Markdown(UNTRAINED_BANNER, elem_id="untrained-banner")
        with gr.Tabs():
            with gr.Tab("Predict", id="predict"):
                # Outputs are created first (unrendered) so the examples, which need
                # them, can sit under the inputs in the left column.
                label = gr.Label(label="Sentiment (fused)", num_top_classes=len(labels), elem_id="label",
                                 render=False)
                gauge = gr.HTML("", elem_id="gauge", render=False)
                modalities = gr.HTML("", elem_id="modalities", render=False)
                heatmap = gr.Image(label="Cross-modal attention (text tokens × audio time)", type="numpy",
                                   format="png", interactive=False, elem_id="heatmap",
                                   buttons=["download", "fullscreen"], render=False)
                # A recording answered in segments: sentiment against time, each window's
                # transcript in its tooltip (and in the table in the notes).
                timeline = gr.LinePlot(x="time", y="sentiment", tooltip=["start", "end", "label", "transcript"],
                                       y_lim=[-3, 3], x_title="time (s)", y_title="sentiment (−3 … +3)",
                                       label="Sentiment over time", visible=False, elem_id="timeline", render=False)
                notes = gr.Markdown("", elem_id="notes", render=False)
                outputs = [label, gauge, modalities, heatmap, timeline, notes]
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
                        text = gr.Textbox(label="Text (what was said)", lines=3, elem_id="text-input",
                                          placeholder="Type or paste a sentence…", max_length=limits.max_text_chars)
                        audio = gr.Audio(
                            label="Speech (how it was said)", sources=["upload", "microphone"], type="filepath",
                            elem_id="audio-input", waveform_options=gr.WaveformOptions(show_recording_waveform=True),
                        )
                        gr.Markdown(
                            f"**Limits:** speech up to **{limits.max_long_audio_seconds / 60:g} min** and "
                            f"**{_mb(limits.max_long_audio_bytes)}** ({AUDIO_FORMATS}, "
                            f"{limits.min_sample_rate / 1000:g}–{limits.max_sample_rate / 1000:g} kHz, "
                            f"mono or stereo); text up to **{limits.max_text_chars}** characters. "
                            f"Speech longer than {limits.segment_seconds:g} s is scored in windows, "
                            "shown as a timeline. Give text, speech or both. "
                            + (TRANSCRIBES if driver.can_transcribe else CANNOT_TRANSCRIBE),
                            elem_id="limits",
                        )
                        with gr.Row():
                            gr.ClearButton([text, audio, *outputs], value="Clear", elem_id="clear-button")
                            button = gr.Button("Predict", variant="primary", elem_id="predict-button")
                        # Registered before the examples' own event, which would otherwise
                        # take the name "predict" and push this one to "predict_1".
                        button.click(predict, inputs=[text, audio], outputs=outputs, api_name="predict",
                                     concurrency_limit=PREDICT_CONCURRENCY)
                        gr.Examples(
                            examples=[[e.text, e.audio] for e in examples],
                            example_labels=[e.caption for e in examples],
                            inputs=[text, audio], outputs=outputs, fn=predict,
                            run_on_click=True, cache_examples=False, api_visibility="private",
                            label="Examples (click to run)", elem_id="examples",
                        )
                    with gr.Column(scale=6):
                        label.render()
                        gr.Markdown("**Sentiment score** (−3 negative … +3 positive)")
                        gauge.render()
                        gr.Markdown("**Per modality**")
                        modalities.render()
                        heatmap.render()
                        timeline.render()
                        notes.render()
            with gr.Tab("Batch", id="batch"):
                gr.Markdown(
                    "Upload a **manifest** and, if rows have speech, a **zip** of the audio files; "
                    "download the predictions as CSV. Rows run through the same service as the API.\n\n"
                    "- CSV with a header, or JSONL (one object per line), with a `text` and/or an "
                    "`audio` column (a file name inside the zip; `audio_path` also works), and an optional `id`.\n"
                    f"- At most {batch_limits.max_rows} rows and {_mb(batch_limits.max_manifest_bytes)} of manifest; "
                    f"zip up to {_mb(batch_limits.max_zip_bytes)}, {batch_limits.max_zip_members} files and "
                    f"{_mb(batch_limits.max_unzipped_bytes)} unpacked; each audio file within the limits above.\n"
                    "- A row that fails is kept in the CSV with `status=error` and the reason."
                )
                with gr.Row():
                    manifest = gr.File(label="Manifest (CSV or JSONL)", file_types=[".csv", ".jsonl"],
                                       elem_id="batch-manifest")
                    archive = gr.File(label="Audio files (zip, optional)", file_types=[".zip"],
                                      elem_id="batch-zip")
                run = gr.Button("Run batch", variant="primary", elem_id="batch-button")
                summary = gr.Markdown("", elem_id="batch-summary")
                download = gr.File(label="Predictions (CSV)", interactive=False, elem_id="batch-download")
                preview = gr.Dataframe(label=f"Preview (first {PREVIEW_ROWS} rows)", interactive=False,
                                       elem_id="batch-preview")
                run.click(batch, inputs=[manifest, archive], outputs=[download, summary, preview],
                          api_name="batch", concurrency_limit=BATCH_CONCURRENCY)

            with gr.Tab("About", id="about"):
                gr.Markdown(model_card(bundle, UNTRAINED_BANNER), elem_id="model-card")
    return demo


def mount_ui(app, driver) -> None:
    demo = build_ui(driver)
    # Every Driver replica serves the same page: the same app id (Gradio's client reloads
    # the page when the id it sees changes, which a random id per replica would do).
    demo.app_id = int.from_bytes(hashlib.sha256(f"{driver.bundle.name}:{driver.bundle.version}".encode()).digest()[:7],
                                 "big")
    # A bounded queue: a burst of UI users waits in line up to max_size (seeing its
    # position), then gets a "queue full" message instead of piling unbounded work
    # onto the replica. The JSON API does not go through this queue.
    demo.queue(default_concurrency_limit=PREDICT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    # Gradio's queue polls for work every 1 ms while empty and for progress every 10 ms
    # (gradio/queueing.py, Linux values; no public setting), on the replica's event loop,
    # which also serves the API: that cost an idle Driver replica 35 ms of CPU per second.
    # Polling at 20 ms delays a queued UI event by 10 ms on average (docs/performance.md).
    demo._queue.sleep_when_free = QUEUE_POLL_S
    demo._queue.progress_update_sleep_when_free = PROGRESS_POLL_S
    # One upload cap for the whole page, sized for a long recording or the batch zip
    # (each under its route's body cap); a file above its own limit is refused by the
    # event with a readable message.
    limits = driver.settings.limits
    max_upload = max(limits.max_long_audio_bytes, BatchLimits.for_body_limit(limits.max_body_bytes).max_zip_bytes)
    # ssr_mode=False: client-side rendering only, so Gradio never starts a Node server in the replica.
    gr.mount_gradio_app(app, demo, path="/", max_file_size=max_upload, enable_monitoring=False, ssr_mode=False,
                        run_history=False)
    # Mounted at "/", Gradio's app takes every path the API's routes do not; one it has no
    # route for either gets the API's documented 404, not Gradio's own body.
    [gradio_app] = [route.app for route in app.routes if isinstance(route, Mount) and route.path == ""]
    gradio_app.router.default = not_found
    # Gradio checks that a file path an event receives lies in its upload folder only once
    # the app has "launched", which mount_gradio_app never marks: without this line a
    # client could name any file on the replica's disk as an input.
    demo.has_launched = True
