"""Training a bundle from a manifest, stage by stage: ``python -m model.training --manifest M --out OUT ...``.

Stages, each reported with a progress bar:
  1. load and validate the manifest and any extra evaluation manifests (``prepare``);
  2. optionally fine-tune the last N layers of an encoder, with a small unimodal
     head on the labels (``finetune``);
  3. extract frozen encoder features, cached on disk (``feature_cache``), or taken
     from a feature table the batch job wrote (``--features``);
  4. train the fusion head, early-stopping on the valid split (``loop``);
  5. evaluate (``evaluate``, ``metrics``), save the bundle (``Bundle.save``) with
     metrics and data provenance, and write the report (``report``).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from model.audio_encoder import AudioEncoder, AudioEncoderFacts
from model.bundle import Bundle
from model.data.feature_table import PrecomputedFeatures
from model.data.manifest import Item, Manifest
from model.text_encoder import TextEncoder
from model.training.config import TrainConfig, build_parser, config_from_args
from model.training.feature_cache import Features, audio_features_and_transcripts, encoder_fingerprint, text_features
from model.training.finetune import finetune_encoder
from model.training.loop import make_targets, seed_everything, train_fusion
from model.training.prepare import TrainingDataError, label_values, log, prepare_data

__all__ = ["TrainConfig", "TrainResult", "TrainingDataError", "build_parser", "main", "train"]


@dataclass
class TrainResult:
    bundle: Bundle
    metrics: dict
    history: dict
    report_dir: Path


def resolve_encoders(config: TrainConfig) -> tuple[str, str, int]:
    """The text and audio encoders to start from and the text length: the base bundle's, overridden."""
    text, audio, max_length = None, None, 128
    if config.base_bundle is not None:
        base = Bundle.load(config.base_bundle)
        text, audio, max_length = base.resolve(base.text_encoder), base.resolve(base.audio_encoder), base.text_max_length
    text = config.text_encoder or text
    audio = config.audio_encoder or audio
    if not text or not audio:
        raise ValueError("name the encoders with --bundle BASE_BUNDLE or --text-encoder and --audio-encoder")
    return text, audio, config.text_max_length or max_length


def _copy_encoder(source: str, dest: Path) -> str:
    """Local encoder folders are copied into the bundle (self-contained); hub ids stay ids."""
    src = Path(source)
    if not src.is_dir():
        return source
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest.name


def extract_features(config: TrainConfig, text_encoder: TextEncoder, audio_encoder: AudioEncoder,
                     manifests: dict[str, Manifest], sets: dict[str, list[Item]], fingerprints: dict[str, str]
                     ) -> tuple[dict[str, Features], dict[str, Features], dict | None, dict[str, int]]:
    """Stage 3: per-set text and audio features, what was taken from ``--features`` (None: nothing), and
    per set how many items without text read their audio's transcript instead (as serving does)."""
    cache = Path(config.cache_dir) if config.cache_dir else None
    precomputed = None
    if config.features:
        if config.finetune_text_layers or config.finetune_audio_layers:
            raise TrainingDataError("--features holds the frozen encoders' features; it cannot be combined "
                                    "with fine-tuning, which changes them")
        precomputed = PrecomputedFeatures.load(config.features, fingerprints["text"], fingerprints["audio"],
                                               text_encoder.hidden_size, audio_encoder.hidden_size)
    # Audio first: an item without text reads its transcript (same forward pass as its audio features).
    audio_feats, texts, transcribed = {}, {}, {}
    for name, items in sets.items():
        audio_feats[name], heard = audio_features_and_transcripts(
            audio_encoder, manifests[name], items, cache, config.audio_batch_size, config.max_audio_seconds,
            config.progress, desc=f"audio features [{name}]", precomputed=precomputed)
        texts[name] = [item.text if item.text.strip() else (h or "") for item, h in zip(items, heard)]
        transcribed[name] = sum(1 for item, h in zip(items, heard) if not item.text.strip() and h)
    if any(transcribed.values()):
        log(f"items without text that read their audio's transcript: {transcribed}")
    # Each distinct text is encoded once, even when several evaluation sets share sentences; no text
    # (nothing was heard) leaves the item without a text branch.
    unique = list(dict.fromkeys(t for ts in texts.values() for t in ts if t))
    encoded = text_features(text_encoder, [Item(id=str(k), text=t, audio_path=None, split="") for k, t in enumerate(unique)],
                            cache, config.text_batch_size, config.progress, precomputed=precomputed)
    by_text = dict(zip(unique, encoded))
    text_feats = {name: [by_text[t] if t else None for t in ts] for name, ts in texts.items()}
    if precomputed is None:
        return text_feats, audio_feats, None, transcribed
    log(f"features taken from {config.features}: {precomputed.used['text']} texts, "
        f"{precomputed.used['audio']} audio clips; the rest were extracted here")
    return text_feats, audio_feats, {"source": str(config.features), **precomputed.used}, transcribed


def train(config: TrainConfig) -> TrainResult:
    from model.training.evaluate import evaluate_set, predict
    from model.training.report import write_report  # matplotlib is only needed once training is done

    started = time.time()
    timings = {}
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    @functools.cache
    def transcribes() -> bool:
        # A fine-tuned audio encoder is saved without its CTC head, so it could not transcribe.
        return (not config.finetune_audio_layers
                and AudioEncoderFacts.from_pretrained(resolve_encoders(config)[1]).can_transcribe)

    manifests, sets, labels, provenance = prepare_data(config, transcribes)
    timings["data_s"] = time.time() - started
    text_name, audio_name, max_length = resolve_encoders(config)
    log(f"labels: {labels}; text encoder: {text_name}; audio encoder: {audio_name}")

    finetune_history = {}
    text_ref = audio_ref = None
    tick = time.time()
    if config.finetune_text_layers:
        encoder = TextEncoder(text_name, max_length, config.device)
        finetune_history["text"] = finetune_encoder(
            "text", encoder, manifests["train"], sets["train"], sets["valid"], labels,
            config.finetune_text_layers, config, out / "text_encoder")
        text_name, text_ref = str(out / "text_encoder"), "text_encoder"
    if config.finetune_audio_layers:
        encoder = AudioEncoder(audio_name, config.device)
        finetune_history["audio"] = finetune_encoder(
            "audio", encoder, manifests["train"], sets["train"], sets["valid"], labels,
            config.finetune_audio_layers, config, out / "audio_encoder")
        audio_name, audio_ref = str(out / "audio_encoder"), "audio_encoder"
    timings["finetune_s"] = time.time() - tick

    tick = time.time()
    text_encoder = TextEncoder(text_name, max_length, config.device)
    audio_encoder = AudioEncoder(audio_name, config.device)
    fingerprints = {"text": encoder_fingerprint(text_encoder), "audio": encoder_fingerprint(audio_encoder)}
    text_feats, audio_feats, precomputed, transcribed = extract_features(config, text_encoder, audio_encoder,
                                                                         manifests, sets, fingerprints)
    timings["features_s"] = time.time() - tick
    encoders = {
        "text": {"source": text_name, "fingerprint": fingerprints["text"],
                 "fine_tuned_layers": config.finetune_text_layers},
        "audio": {"source": audio_name, "fingerprint": fingerprints["audio"],
                  "fine_tuned_layers": config.finetune_audio_layers},
    }

    tick = time.time()
    targets = {name: make_targets(items, labels) for name, items in sets.items()}
    has_scores = any(i.score is not None for i in sets["train"])
    reg_weight = config.regression_weight if config.regression_weight is not None else (1.0 if has_scores else 0.0)
    if reg_weight and not has_scores:
        raise TrainingDataError("regression was asked for but no train item has a score")
    head, history = train_fusion(labels, text_feats, audio_feats, targets, text_encoder.hidden_size,
                                 audio_encoder.hidden_size, reg_weight, config, text_encoder.device)
    timings["fusion_s"] = time.time() - tick

    values, values_rule = label_values(sets["train"], labels)
    bundle = Bundle(
        name=config.name, version=config.version,
        text_encoder=text_ref or _copy_encoder(text_name, out / "text_encoder"),
        audio_encoder=audio_ref or _copy_encoder(audio_name, out / "audio_encoder"),
        fusion=head.config, text_max_length=max_length, trained=True,
        regression_trained=bool(reg_weight), label_values=values, notes=list(config.notes), path=out,
    )
    metrics = {}
    for name in sets:
        if name == "train" or not sets[name]:
            continue
        metrics[name] = evaluate_set(predict(head, text_feats[name], audio_feats[name]), targets[name], bundle)
    timings["total_s"] = time.time() - started
    provenance.update({
        "encoders": encoders,
        "label_values_rule": values_rule,
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "regression_weight": reg_weight,
        "precomputed_features": precomputed,
        "transcribed": transcribed,
        "best_epoch": history.get("best_epoch"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
    })
    bundle.metrics = metrics
    bundle.data = provenance
    bundle.save(out, head)
    full_history = {"fusion": history, "finetune": finetune_history}
    report_dir = write_report(out / "report", bundle, full_history)
    log(f"bundle saved to {out}; report in {report_dir}")
    return TrainResult(bundle=bundle, metrics=metrics, history=full_history, report_dir=report_dir)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(description=__doc__.split("\n")[0])
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    try:
        result = train(config)
    except TrainingDataError as exc:
        log(f"error: {exc}")
        return 2
    print(json.dumps({"bundle": str(args.out), "report": str(result.report_dir),
                      "metrics": {k: {b: round(v["accuracy"], 4) for b, v in m.items()} for k, m in result.metrics.items()}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
