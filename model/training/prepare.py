"""Stage 1 of training: load, validate and clean the manifest and the extra evaluation sets."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model.data.manifest import Item, Manifest, load_manifest
from model.data.validate import Problem, ValidationReport, validate_manifest
from model.training.config import TrainConfig
from model.training.metrics import SENTIMENT_ORDER


class TrainingDataError(ValueError):
    """The manifest has errors and dropping invalid items was not allowed."""


def log(message: str) -> None:
    """Training's progress messages: stderr, so that stdout carries only the result."""
    print(message, file=sys.stderr, flush=True)


def order_labels(labels: set[str]) -> list[str]:
    """Sentiment labels negative→positive (the order sentiment values follow), others sorted."""
    if labels and labels <= set(SENTIMENT_ORDER):
        return [label for label in SENTIMENT_ORDER if label in labels]
    return sorted(labels)


def derive_labels(items: list[Item]) -> int:
    """Items with a score but no label get negative / neutral / positive by the score's sign."""
    derived = 0
    for item in items:
        if item.label is None and item.score is not None:
            item.label = "negative" if item.score < 0 else "positive" if item.score > 0 else "neutral"
            derived += 1
    return derived


def label_values(items: list[Item], labels: list[str]) -> tuple[dict[str, float], str]:
    """Each label's sentiment value (used when the regression output is not trained), and the rule used."""
    scored = [i for i in items if i.score is not None and i.label is not None]
    if scored:
        values = {}
        for label in labels:
            s = [i.score for i in scored if i.label == label]
            values[label] = float(np.mean(s)) if s else 0.0
        return values, "mean train score per label"
    if set(labels) <= set(SENTIMENT_ORDER):
        fixed = {"negative": -3.0, "neutral": 0.0, "positive": 3.0}
        return {label: fixed[label] for label in labels}, "negative=-3, neutral=0, positive=+3"
    return {label: 0.0 for label in labels}, "labels carry no sentiment scale: derived sentiment is 0"


def _eval_spec(spec: str) -> tuple[Path, str]:
    path, _, split = spec.rpartition(":") if spec.rsplit(":", 1)[-1] in ("train", "valid", "test") else (spec, "", "test")
    return Path(path), split


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _textless_audio(manifest: Manifest) -> bool:
    return any(item.audio_path and not item.text.strip() for item in manifest.items)


def prepare_data(config: TrainConfig, transcribes: Callable[[], bool] = lambda: False
                 ) -> tuple[dict[str, Manifest], dict[str, list[Item]], list[str], dict]:
    """Load, validate and (if allowed) clean the manifest and extra evaluation sets. When
    ``transcribes()`` (the audio encoder can; asked only if some item has audio but no
    text, so a bad manifest is reported before any encoder is read), such an item is valid.

    Returns the manifest of each set (for resolving audio paths), the item lists by
    set name (train, valid, test, extras), the label order, and the data provenance
    for the bundle.
    """
    manifest = load_manifest(config.manifest)
    derived = derive_labels(manifest.items)
    if config.labels:
        labels = list(config.labels)
    else:
        labels = order_labels({i.label for i in manifest.items if i.split == "train" and i.label is not None})
    report = validate_manifest(manifest, labels, check_audio=config.check_audio, progress=config.progress,
                               transcribes=_textless_audio(manifest) and transcribes())
    log(report.format())
    sets: dict[str, list[Item]] = {}
    provenance = {
        "manifest": str(manifest.source),
        "manifest_sha256": _sha256(manifest.source),
        "labels_derived_from_score": derived,
        "validation": _validation_summary(report),
    }
    kept = _apply_policy(manifest, report, config.drop_invalid, "manifest")
    provenance["validation"]["dropped"] = len(manifest.items) - len(kept)
    for split in ("train", "valid", "test"):
        sets[split] = [i for i in kept if i.split == split]
    extra_manifests: dict[str, Manifest] = {}
    seen_for_training = {i.id for i in kept if i.split in ("train", "valid")}
    provenance["extra_eval"] = {}
    for name, spec in config.extra_eval.items():
        path, split = _eval_spec(spec)
        extra = load_manifest(path)
        derive_labels(extra.items)
        extra = extra.subset([i for i in extra.items if i.split == split])
        extra_report = validate_manifest(extra, labels, check_audio=config.check_audio, progress=config.progress,
                                         expected_splits=(split,),
                                         transcribes=_textless_audio(extra) and transcribes())
        # An evaluation item whose id the model trained or early-stopped on is leakage too.
        for index, item in enumerate(extra.items):
            if item.id in seen_for_training:
                extra_report.problems.append(
                    Problem("split_leakage", index, item.id, item.split, "id is in the main manifest's train/valid split")
                )
        log(f"[{name}] " + extra_report.format())
        sets[name] = _apply_policy(extra, extra_report, config.drop_invalid, name)
        extra_manifests[name] = extra
        provenance["extra_eval"][name] = {
            "manifest": str(extra.source), "split": split,
            "manifest_sha256": _sha256(extra.source),
            "validation": _validation_summary(extra_report) | {"dropped": len(extra.items) - len(sets[name])},
        }
    if not sets["train"]:
        raise TrainingDataError("the train split is empty after validation")
    if not sets["valid"]:
        raise TrainingDataError("the valid split is empty: early stopping needs one")
    provenance["counts"] = {name: len(items) for name, items in sets.items()}
    provenance["label_counts"] = {
        name: {label: sum(1 for i in items if i.label == label) for label in labels} for name, items in sets.items()
    }
    provenance["with_audio"] = {name: sum(1 for i in items if i.audio_path) for name, items in sets.items()}
    provenance["with_score"] = {name: sum(1 for i in items if i.score is not None) for name, items in sets.items()}
    manifests = {name: manifest for name in ("train", "valid", "test")} | extra_manifests
    return manifests, sets, labels, provenance


def _validation_summary(report: ValidationReport) -> dict:
    return {"problem_counts": report.problem_counts(), "warnings": report.warnings,
            "items_with_errors": len(report.bad_indices())}


def _apply_policy(manifest: Manifest, report: ValidationReport, drop_invalid: bool, name: str) -> list[Item]:
    if report.ok:
        return list(manifest.items)
    if not drop_invalid:
        raise TrainingDataError(
            f"{name}: {len(report.bad_indices())} item(s) have errors (see the report above); "
            "fix them or pass --drop-invalid to leave them out (they are counted in the bundle)"
        )
    bad = report.bad_indices()
    log(f"{name}: dropping {len(bad)} invalid item(s): {report.problem_counts()}")
    return [item for index, item in enumerate(manifest.items) if index not in bad]
