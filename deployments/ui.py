"""The Gradio page mounted at ``/`` on the driver's FastAPI app."""

from __future__ import annotations

import uuid
from pathlib import Path

import gradio as gr
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deployments.api import ServiceError  # noqa: E402
from deployments.request_parsing import PredictInput, check_input  # noqa: E402
from model.errors import ModelInputError  # noqa: E402

UNTRAINED_BANNER = (
    "**⚠ This model is UNTRAINED.** Its fusion head has random weights, so its predictions are "
    "meaningless. Build the demo model with `make demo-model`."
)


def attention_figure(attention: dict):
    """Heatmap of text tokens (rows) attending over audio time (columns)."""
    weights, tokens = attention["weights"], attention["tokens"]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(tokens))))
    frames = len(weights[0]) if weights else 0
    ax.imshow(weights, aspect="auto", cmap="magma", interpolation="nearest",
              extent=(0, frames * attention["frame_seconds"], len(tokens) - 0.5, -0.5))
    ax.set_yticks(range(len(tokens)), tokens, fontsize=8)
    ax.set_xlabel("audio time (s)")
    ax.set_title("Cross-modal attention: text tokens → audio frames")
    fig.tight_layout()
    plt.close(fig)
    return fig


def modality_table(modalities: dict) -> list[list]:
    rows = []
    for name in ("text", "audio", "fused"):
        branch = modalities.get(name)
        if branch:
            top = branch["scores"][branch["label"]]
            rows.append([name, branch["label"], round(top, 3), round(branch["sentiment"], 2)])
    return rows


def build_ui(driver) -> gr.Blocks:
    bundle, limits = driver.bundle, driver.settings.limits

    async def predict(text: str | None, audio_path: str | None):
        try:
            audio = Path(audio_path).read_bytes() if audio_path else None
            parsed = check_input(text or None, audio, limits)
            request = PredictInput(parsed.text, parsed.audio, explain=True)
            result = await driver.predict(request, f"ui-{uuid.uuid4().hex[:12]}")
        except (ServiceError, ModelInputError) as exc:
            raise gr.Error(getattr(exc, "message", None) or str(exc)) from None
        figure = attention_figure(result["attention"]) if result.get("attention") else None
        return result["scores"], modality_table(result["modalities"]), round(result["sentiment"], 3), figure

    with gr.Blocks(title="Multimodal sentiment") as demo:
        gr.Markdown(f"# Multimodal sentiment\nModel **{bundle.name}** v{bundle.version}: "
                    f"what was said (text) and how it was said (audio).")
        if not bundle.trained:
            gr.Markdown(UNTRAINED_BANNER)
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Text", lines=3, placeholder="Type what was said…",
                                  max_length=limits.max_text_chars)
                audio = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath")
                gr.Markdown(f"Audio: WAV, FLAC, OGG or MP3, up to {limits.max_audio_seconds:g} s "
                            f"and {limits.max_audio_bytes // (1024 * 1024)} MB. "
                            f"Text: up to {limits.max_text_chars} characters.")
                button = gr.Button("Predict", variant="primary")
            with gr.Column():
                label = gr.Label(label="Sentiment", num_top_classes=len(bundle.labels))
                sentiment = gr.Number(label="Sentiment score (−3 … +3)")
                table = gr.Dataframe(headers=["branch", "label", "confidence", "sentiment"],
                                     label="Per-modality predictions", interactive=False)
                heatmap = gr.Plot(label="Attention heatmap")
        button.click(predict, inputs=[text, audio], outputs=[label, table, sentiment, heatmap], api_name="predict")
    return demo


def mount_ui(app, driver) -> None:
    demo = build_ui(driver)
    # A bounded queue: a burst of UI users waits in line up to max_size, then gets
    # an error, instead of piling unbounded work onto the replica.
    demo.queue(default_concurrency_limit=8, max_size=64)
    max_mb = max(1, driver.settings.limits.max_audio_bytes // (1024 * 1024))
    gr.mount_gradio_app(app, demo, path="/", max_file_size=f"{max_mb}mb", enable_monitoring=False)
