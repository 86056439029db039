"""What the UI draws from one prediction: the attention heatmap, the sentiment gauge, the modality
panel, and for a recording answered in segments its timeline (data and table).

Pure functions of the response dict; no Gradio, no Ray.

The heatmap uses matplotlib's object API (``Figure`` + Agg canvas), never
``pyplot``: pyplot keeps global state and is not safe to call from the worker
threads the UI renders in, so the driver's event loop is never blocked by drawing.
"""

from __future__ import annotations

import html

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model.fusion import SCORE_RANGE

# Rows beyond this get unreadable tick labels; longer texts are shown in full but
# only every n-th token is labelled.
MAX_LABELLED_TOKENS = 48


def attention_image(attention: dict) -> np.ndarray:
    """Text tokens (rows) × audio time (columns) as an RGB image, tokens labelled."""
    weights = np.asarray(attention["weights"], dtype="float32")
    tokens = list(attention["tokens"])
    n_tokens, n_frames = weights.shape
    seconds = n_frames * float(attention["frame_seconds"])

    height = min(12.0, max(2.6, 0.24 * n_tokens + 1.2))
    # No title: the page labels the image; a title would sit under Gradio's label badge.
    fig = Figure(figsize=(8.5, height), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(weights, aspect="auto", cmap="magma", interpolation="nearest",
                      extent=(0.0, seconds, n_tokens - 0.5, -0.5))
    step = max(1, -(-n_tokens // MAX_LABELLED_TOKENS))
    rows = list(range(0, n_tokens, step))
    # "$" would switch matplotlib into mathtext for user-typed tokens; keep them literal.
    ax.set_yticks(rows, [tokens[i].replace("$", r"\$") for i in rows], fontsize=8)
    ax.set_xlabel("audio time (s)")
    ax.set_ylabel("text token")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attention weight")
    fig.tight_layout(rect=(0, 0, 1, 0.93))  # headroom for the label badge Gradio draws on top
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _color(sentiment: float) -> str:
    if sentiment > 0.5:
        return "#16a34a"
    if sentiment < -0.5:
        return "#dc2626"
    return "#6b7280"


def sentiment_gauge(sentiment: float) -> str:
    """A −3…+3 bar with a marker at the score, as HTML (no image round trip)."""
    value = max(-SCORE_RANGE, min(SCORE_RANGE, float(sentiment)))
    position = 100.0 * (value + SCORE_RANGE) / (2 * SCORE_RANGE)
    ticks = "".join(
        f'<span style="position:absolute;left:{100.0 * (t + SCORE_RANGE) / (2 * SCORE_RANGE):.1f}%;'
        f'transform:translateX(-50%)">{t:+d}</span>' if t else
        '<span style="position:absolute;left:50%;transform:translateX(-50%)">0</span>'
        for t in range(-int(SCORE_RANGE), int(SCORE_RANGE) + 1)
    )
    return (
        '<div class="sentiment-gauge" style="padding:4px 2px 0 2px">'
        f'<div style="font-size:1.6em;font-weight:600;color:{_color(value)}" data-testid="sentiment-value">'
        f"{value:+.2f}</div>"
        '<div style="position:relative;height:14px;border-radius:7px;margin:6px 0 2px 0;'
        'background:linear-gradient(90deg,#dc2626 0%,#d1d5db 50%,#16a34a 100%)">'
        f'<div style="position:absolute;left:{position:.1f}%;top:-4px;width:4px;height:22px;'
        'margin-left:-2px;background:#111827;border-radius:2px"></div></div>'
        f'<div style="position:relative;height:1.2em;font-size:0.8em;opacity:0.8">{ticks}</div>'
        '<div style="display:flex;justify-content:space-between;font-size:0.8em;opacity:0.8">'
        "<span>negative</span><span>positive</span></div></div>"
    )


def _branch_card(title: str, branch: dict | None, labels: list[str]) -> str:
    if not branch:
        body = '<div style="opacity:0.6;padding:8px 0">not in this request</div>'
    else:
        bars = "".join(
            '<div style="display:flex;align-items:center;gap:6px;font-size:0.85em;margin:2px 0">'
            f'<span style="width:40%;overflow:hidden;text-overflow:ellipsis">{html.escape(label)}</span>'
            '<span style="flex:1;background:#e5e7eb;border-radius:3px;height:8px">'
            f'<span style="display:block;height:8px;border-radius:3px;width:{100 * branch["scores"].get(label, 0.0):.1f}%;'
            f'background:{"#2563eb" if label == branch["label"] else "#93c5fd"}"></span></span>'
            f'<span style="width:3.2em;text-align:right">{branch["scores"].get(label, 0.0):.2f}</span></div>'
            for label in labels
        )
        body = (
            f'<div style="font-weight:600;margin:4px 0" data-testid="branch-label">{html.escape(branch["label"])}</div>'
            f"{bars}"
            f'<div style="font-size:0.85em;margin-top:4px">sentiment '
            f'<b style="color:{_color(branch["sentiment"])}">{branch["sentiment"]:+.2f}</b></div>'
        )
    return (
        f'<div class="modality-card" data-modality="{html.escape(title)}" style="flex:1;min-width:140px;'
        'border:1px solid #d1d5db;border-radius:8px;padding:8px 10px">'
        f'<div style="font-size:0.8em;text-transform:uppercase;letter-spacing:0.05em;opacity:0.75">{html.escape(title)}</div>'
        f"{body}</div>"
    )


def modality_panel(modalities: dict, labels: list[str]) -> str:
    """Text-only, audio-only and fused predictions side by side, as HTML."""
    cards = "".join(
        _branch_card(title, modalities.get(key), labels)
        for key, title in (("text", "text only"), ("audio", "audio only"), ("fused", "fused"))
    )
    return f'<div class="modality-panel" style="display:flex;gap:10px;flex-wrap:wrap">{cards}</div>'


def timeline_frame(segments: list[dict]):
    """One row per window, at its midpoint: what the timeline plot draws."""
    import pandas as pd

    return pd.DataFrame([{"time": round((seg["start"] + seg["end"]) / 2, 2), "sentiment": seg["sentiment"],
                          "start": seg["start"], "end": seg["end"], "label": seg["label"],
                          "transcript": seg.get("transcript") or ""} for seg in segments])


def segment_table(segments: list[dict]) -> str:
    """The windows as a Markdown table: time, label, sentiment and what was heard."""
    rows = ["| time (s) | label | sentiment | transcript |", "|---|---|---|---|"]
    for seg in segments:
        heard = (seg.get("transcript") or "–").replace("|", "/").replace("`", "'")
        rows.append(f"| {seg['start']:.1f}–{seg['end']:.1f} | {seg['label']} | {seg['sentiment']:+.2f} | {heard} |")
    return "\n".join(rows) + "\n"  # a blank line after: the next note must not become a row
