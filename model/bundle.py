"""The model bundle: a folder with ``bundle.json`` and ``fusion.safetensors``, saved and loaded.

``bundle.json`` names the text and audio checkpoints (hub id, or a path relative
to the bundle), the fusion config (its ``architecture`` picks the head class from
``model.fusion``'s registry; absent in older bundles, it defaults to
``cross_modal_attention``), the labels, a version, and, once trained, metrics and
data provenance. ``audio_encoder.transcribe: false`` stops a CTC audio checkpoint's
transcripts from reaching the text branch (default true; checkpoints without a CTC
head never transcribe). Only safetensors are ever read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.errors import BundleError
from model.fusion import FusionConfig, FusionHead, build_head, head_class

BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "fusion.safetensors"
FORMAT_VERSION = 1


@dataclass
class Bundle:
    name: str
    version: str
    text_encoder: str
    audio_encoder: str
    fusion: FusionConfig
    text_max_length: int = 128
    # Whether an audio-only request's transcript (from a CTC audio checkpoint) feeds the text branch.
    transcribe: bool = True
    trained: bool = False
    # Whether the regression output was supervised; if not, "sentiment" is derived
    # from class probabilities and label_values instead.
    regression_trained: bool = False
    label_values: dict[str, float] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def labels(self) -> list[str]:
        return self.fusion.labels

    @property
    def synthetic_speech(self) -> bool:
        """Whether the audio branch learned from synthesized speech, so its reading of a real
        voice means nothing. The demo bundle records ``data.synthetic_speech: true``; a bundle
        whose notes or provenance name synthetic speech or espeak counts too."""
        if self.data.get("synthetic_speech") is True:
            return True
        text = " ".join(self.notes).lower() + json.dumps(self.data).lower()
        return "synthetic speech" in text or "espeak" in text

    def resolve(self, name_or_path: str) -> str:
        """A path relative to the bundle folder if one exists there, else a hub id."""
        if self.path is not None and (self.path / name_or_path).exists():
            return str((self.path / name_or_path).resolve())
        return name_or_path

    def sentiment_values(self) -> list[float]:
        """Per-label sentiment used when the regression head was not trained."""
        if self.label_values:
            return [float(self.label_values.get(label, 0.0)) for label in self.labels]
        n = len(self.labels)
        return [0.0] if n == 1 else [-3.0 + 6.0 * i / (n - 1) for i in range(n)]

    def metadata(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "trained": self.trained,
            "regression_trained": self.regression_trained,
            "labels": self.labels,
            "label_values": self.label_values,
            "text_encoder": {"name_or_path": self.text_encoder, "max_length": self.text_max_length},
            "audio_encoder": {"name_or_path": self.audio_encoder, "transcribe": self.transcribe},
            "fusion": self.fusion.to_dict(),
            "metrics": self.metrics,
            "data": self.data,
            "notes": self.notes,
        }

    def save(self, path: str | Path, fusion: FusionHead) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in fusion.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE))
        (path / BUNDLE_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        meta_file = path / BUNDLE_FILE
        if not meta_file.is_file():
            raise BundleError(f"no {BUNDLE_FILE} in bundle folder {path}")
        if not (path / WEIGHTS_FILE).is_file():
            raise BundleError(f"no {WEIGHTS_FILE} in bundle folder {path}")
        try:
            meta = json.loads(meta_file.read_text())
            if meta.get("format_version") != FORMAT_VERSION:
                raise BundleError(f"unsupported bundle format_version {meta.get('format_version')!r}")
            bundle = cls(
                name=meta["name"],
                version=str(meta["version"]),
                text_encoder=meta["text_encoder"]["name_or_path"],
                text_max_length=int(meta["text_encoder"].get("max_length", 128)),
                audio_encoder=meta["audio_encoder"]["name_or_path"],
                transcribe=_as_bool(meta["audio_encoder"].get("transcribe", True), "audio_encoder.transcribe"),
                fusion=FusionConfig.from_dict(meta["fusion"]),
                trained=bool(meta.get("trained", False)),
                regression_trained=bool(meta.get("regression_trained", False)),
                label_values=dict(meta.get("label_values", {})),
                metrics=dict(meta.get("metrics", {})),
                data=dict(meta.get("data", {})),
                notes=list(meta.get("notes", [])),
                path=path.resolve(),
            )
            head_class(bundle.fusion.architecture)  # an unknown architecture fails here, at load
            return bundle
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{meta_file} is malformed: {exc!r}") from None

    def load_fusion(self) -> FusionHead:
        if self.path is None:
            raise BundleError("bundle has no folder to load weights from")
        head = build_head(self.fusion)
        try:
            state = load_file(str(self.path / WEIGHTS_FILE))
            head.load_state_dict(state, strict=True)
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise BundleError(f"{self.path / WEIGHTS_FILE} is corrupt or does not match the config: {exc}") from None
        return head.eval()


def _as_bool(value, key: str) -> bool:
    # bool("false") is True: a string here is a mistake worth failing the load for.
    if not isinstance(value, bool):
        raise BundleError(f"{BUNDLE_FILE}: {key} must be true or false, not {value!r}")
    return value
