"""The models the benchmark runs: random-weight encoders built from configs, no hub.

Random weights cost exactly what trained ones do (same shapes, same FLOPs), so
base-size configs give real serving numbers. ``--bundle`` swaps in any bundle.
"""

from __future__ import annotations

from pathlib import Path

from model.bundle import BUNDLE_FILE, Bundle
from model.factory import BERT_PRESETS, WAV2VEC2_PRESETS, save_bert, save_tiny_bundle, save_untrained_bundle, save_wav2vec2

# A BERT-small-like text encoder for quick runs: the factory has no "small" BERT
# preset, and "tiny" (hidden 32) is so cheap that only overheads would be measured.
QUICK_BERT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)

SIZES = {
    # name: (text preset, text overrides, audio preset)
    "base": ("base", {}, "base"),  # bert-base-uncased and facebook/wav2vec2-base configs
    "quick": ("base", QUICK_BERT, "small"),
}


def build_bundle(root: Path, size: str) -> Path:
    """Build (once; cached under ``root``) the benchmark bundle of the given size."""
    text_preset, text_overrides, audio_preset = SIZES[size]
    out = root / f"bench-{size}"
    if (out / BUNDLE_FILE).is_file():
        return out
    save_bert(out / "text_encoder", text_preset, **text_overrides)
    save_wav2vec2(out / "audio_encoder", audio_preset)
    text_dim = {**BERT_PRESETS[text_preset], **text_overrides}.get("hidden_size", 768)
    audio_dim = WAV2VEC2_PRESETS[audio_preset].get("hidden_size", 768)
    save_untrained_bundle(out, "text_encoder", "audio_encoder", text_dim, audio_dim, name=f"bench-{size}")
    return out


def build_tiny_bundle(root: Path) -> Path:
    """Build (once; cached under ``root``) the tiny test bundle: models that cost next to
    nothing, so what is measured is the serving path alone."""
    out = root / "tiny"
    if not (out / BUNDLE_FILE).is_file():
        save_tiny_bundle(out)
    return out


def describe(path: Path) -> dict:
    """What the report says about the models."""
    import json

    bundle = Bundle.load(path)
    info = {"path": str(path), "name": bundle.name, "trained": bundle.trained, "fusion": bundle.fusion.to_dict()}
    for side, ref in (("text_encoder", bundle.text_encoder), ("audio_encoder", bundle.audio_encoder)):
        config_file = Path(bundle.resolve(ref)) / "config.json"
        if config_file.is_file():
            cfg = json.loads(config_file.read_text())
            info[side] = {k: cfg.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers",
                                                  "num_attention_heads", "intermediate_size")}
        else:
            info[side] = {"name_or_path": ref}
    return info
