"""What the UI reads from the model bundle: clickable examples and the model card.

Examples ship inside the bundle, so the speech the page offers always matches the
model it serves. The expected layout (written by ``python -m model.demo``)::

    <bundle>/examples/examples.json
    <bundle>/examples/*.wav            (or .flac / .ogg / .mp3)

``examples.json`` is a list, or ``{"examples": [...]}``, of objects with

* ``text``    what was said (optional when ``audio`` is given),
* ``audio``   a file name inside ``examples/`` (optional),
* ``caption`` the button label, e.g. "positive words, flat voice" (optional),
* ``expected`` the label the demo model should give (optional; shown in the caption).

Entries that are malformed, point outside ``examples/`` or name a missing or
oversized file are skipped with a log line: a bad example never stops the page.
A bundle without examples gets the text-only fallbacks below.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from model.bundle import Bundle

logger = logging.getLogger("ray.serve")

EXAMPLES_DIR = "examples"
EXAMPLES_FILE = "examples.json"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
MAX_EXAMPLES = 12

FALLBACK_EXAMPLES = [
    ("An absolute delight from start to finish, I loved it.", "text only: positive"),
    ("The plot was dull and the acting was even worse.", "text only: negative"),
    ("It was fine, I suppose, nothing special either way.", "text only: mixed"),
]

SYNTHETIC_SPEECH_CAVEAT = (
    "**Synthetic speech.** The demo model's audio was synthesized with espeak-ng, whose "
    "prosody carries no emotion: any sentiment cue in that speech was put there on purpose "
    "(for example speaking rate or pitch) and is not how people sound. Do not read the audio "
    "branch's output on real speech as meaningful."
)


@dataclass(frozen=True)
class Example:
    text: str | None
    audio: str | None  # absolute path of a file inside <bundle>/examples
    caption: str


def _entry(raw, folder: Path, max_audio_bytes: int) -> Example | None:
    if not isinstance(raw, dict):
        return None
    text = raw.get("text")
    text = text.strip() if isinstance(text, str) and text.strip() else None
    audio = None
    if raw.get("audio") is not None:
        name = raw["audio"]
        if not isinstance(name, str):
            return None
        candidate = (folder / name).resolve()
        # resolve() follows symlinks and "..": whatever the name says, the file must be in examples/.
        if not candidate.is_relative_to(folder) or candidate.suffix.lower() not in AUDIO_SUFFIXES:
            return None
        if not candidate.is_file() or candidate.stat().st_size > max_audio_bytes:
            return None
        audio = str(candidate)
    if text is None and audio is None:
        return None
    caption = raw.get("caption") if isinstance(raw.get("caption"), str) else None
    if caption is None:
        caption = ("speech + text" if text and audio else "speech only" if audio else "text only")
    if isinstance(raw.get("expected"), str):
        caption = f"{caption} (expect {raw['expected']})"
    return Example(text=text, audio=audio, caption=caption)


def load_examples(bundle: Bundle, max_audio_bytes: int) -> list[Example]:
    """The bundle's examples, or text-only fallbacks when it ships none."""
    folder = (bundle.path / EXAMPLES_DIR).resolve() if bundle.path is not None else None
    manifest = folder / EXAMPLES_FILE if folder is not None else None
    if manifest is None or not manifest.is_file():
        return [Example(text, None, caption) for text, caption in FALLBACK_EXAMPLES]
    try:
        raw = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        logger.warning("ignoring %s: %s", manifest, exc)
        raw = []
    entries = raw.get("examples", []) if isinstance(raw, dict) else raw
    examples = []
    for item in entries if isinstance(entries, list) else []:
        example = _entry(item, folder, max_audio_bytes)
        if example is None:
            logger.warning("skipping bad example entry in %s: %.200r", manifest, item)
        else:
            examples.append(example)
    if not examples:
        return [Example(text, None, caption) for text, caption in FALLBACK_EXAMPLES]
    return examples[:MAX_EXAMPLES]


# ---- the model card --------------------------------------------------------------


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append((name, value))
    return rows


def _table(data: dict, left: str, right: str) -> str:
    rows = _flatten(data)
    lines = [f"| {left} | {right} |", "|---|---|"]
    lines += [f"| {_format_value(k)} | {_format_value(v)} |" for k, v in rows]
    return "\n".join(lines)


def model_card(bundle: Bundle, untrained_banner: str) -> str:
    """The About tab: encoders, labels, data provenance, metrics, caveats, links."""
    meta = bundle.metadata()
    parts = [f"## Model card: {bundle.name} v{bundle.version}"]
    if not bundle.trained:
        parts.append(untrained_banner)
    if bundle.synthetic_speech:
        parts.append(SYNTHETIC_SPEECH_CAVEAT)

    fusion = meta["fusion"]
    parts.append(
        "### Architecture\n"
        f"- **Text encoder:** `{meta['text_encoder']['name_or_path']}` "
        f"(BERT family, up to {meta['text_encoder']['max_length']} tokens)\n"
        f"- **Audio encoder:** `{meta['audio_encoder']['name_or_path']}` (Wav2Vec2 family)\n"
        f"- **Fusion head:** cross-modal attention, d_model {fusion['d_model']}, "
        f"{fusion['n_heads']} heads, {fusion['n_layers']} layer(s); text-only and audio-only "
        "branches are reported beside the fused prediction."
    )
    labels = ", ".join(
        f"`{label}`" + (f" ({bundle.label_values[label]:+g})" if label in bundle.label_values else "")
        for label in bundle.labels
    )
    sentiment_source = ("a trained regression head" if bundle.regression_trained
                        else "the class probabilities weighted by each label's value")
    parts.append(f"### Labels\n{labels}\n\nThe −3…+3 sentiment score comes from {sentiment_source}.")

    parts.append("### Training data and provenance\n" +
                 (_table(bundle.data, "field", "value") if bundle.data else "_None recorded in the bundle._"))
    parts.append("### Metrics\n" +
                 (_table(bundle.metrics, "metric", "value") if bundle.metrics else
                  "_None recorded: this bundle was not evaluated._"))
    if bundle.notes:
        parts.append("### Notes\n" + "\n".join(f"- {_format_value(note)}" for note in bundle.notes))
    # Relative links, so they work under any route prefix the app is deployed at.
    parts.append(
        "### API\n"
        "- [OpenAPI documentation](docs) (`/docs`), schema at [openapi.json](openapi.json)\n"
        "- [This model card as JSON](v1/model) (`/v1/model`; send the API key if one is configured)"
    )
    return "\n\n".join(parts)
