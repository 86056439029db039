"""Training a bundle from a manifest: ``python -m model.train --manifest M --out OUT ...``.

Stages, each reported with a progress bar:
  1. load and validate the manifest (and any extra evaluation manifests);
  2. optionally fine-tune the last N layers of an encoder, with a small
     unimodal head on the labels (a separate stage, so that stage 4 can still
     train on cached features; N = -1 trains the whole encoder, e.g. from scratch);
  3. extract frozen encoder features, cached on disk (``model.feature_cache``);
  4. train the fusion head: AdamW, class-weighted cross-entropy on the fused
     output, optionally L1 regression on ``score``, plus MMML-style unimodal
     auxiliary losses on the text-only and audio-only heads; early stopping on
     the valid split;
  5. evaluate (``model.metrics``), save the bundle (``Bundle.save``) with metrics
     and data provenance, and write the report (``model.report``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from model.audio_encoder import AudioEncoder
from model.bundle import Bundle
from model.feature_cache import Features, audio_features, encoder_fingerprint, load_waveform, text_features
from model.feature_table import PrecomputedFeatures
from model.features import pad_sequences
from model.fusion import FusionConfig, FusionHead
from model.manifest import Item, Manifest, load_manifest
from model.metrics import SENTIMENT_ORDER, classification_metrics, regression_metrics
from model.text_encoder import TextEncoder
from model.validate import Problem, ValidationReport, validate_manifest


class TrainingDataError(ValueError):
    """The manifest has errors and dropping invalid items was not allowed."""


@dataclass
class TrainConfig:
    manifest: Path
    out: Path
    base_bundle: Path | None = None
    text_encoder: str | None = None  # overrides the base bundle's
    audio_encoder: str | None = None
    labels: list[str] | None = None  # default: the train split's labels
    extra_eval: dict[str, str] = field(default_factory=dict)  # name -> "manifest[:split]"
    cache_dir: Path | None = Path("artifacts/feature-cache")
    features: Path | None = None  # a feature table from `python -m deployments.batch features`
    drop_invalid: bool = False
    check_audio: bool = True
    seed: int = 0
    # Fusion head
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    patience: int = 5
    aux_weight: float = 0.5  # unimodal auxiliary losses (MMML); 0 disables them
    regression_weight: float | None = None  # None: 1.0 when the train split has scores, else 0
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 1
    dropout: float = 0.1
    # Encoders and features
    text_max_length: int | None = None  # default: the base bundle's, else 128
    max_audio_seconds: float | None = 20.0
    text_batch_size: int = 64
    audio_batch_size: int = 16
    # Optional encoder fine-tuning (stage 2)
    finetune_text_layers: int = 0
    finetune_audio_layers: int = 0  # -1 = every layer, the convolutional front end included
    finetune_epochs: int = 3
    finetune_lr: float = 5e-5
    finetune_batch_size: int = 16
    finetune_patience: int = 2
    finetune_crop_seconds: float | None = None  # random audio crops while fine-tuning, for speed
    # Bundle metadata
    name: str = "trained"
    version: str = "0.1.0"
    notes: list[str] = field(default_factory=list)
    device: str | None = None
    progress: bool = True


@dataclass
class TrainResult:
    bundle: Bundle
    metrics: dict
    history: dict
    report_dir: Path


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- data


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


def _eval_spec(spec: str) -> tuple[Path, str]:
    path, _, split = spec.rpartition(":") if spec.rsplit(":", 1)[-1] in ("train", "valid", "test") else (spec, "", "test")
    return Path(path), split


def prepare_data(config: TrainConfig) -> tuple[dict[str, Manifest], dict[str, list[Item]], list[str], dict]:
    """Load, validate and (if allowed) clean the manifest and extra evaluation sets.

    Returns the manifest of each set (for resolving audio paths), the item lists by
    set name (train, valid, test, extras),
    the label order, and the data provenance for the bundle.
    """
    manifest = load_manifest(config.manifest)
    derived = derive_labels(manifest.items)
    if config.labels:
        labels = list(config.labels)
    else:
        labels = order_labels({i.label for i in manifest.items if i.split == "train" and i.label is not None})
    report = validate_manifest(manifest, labels, check_audio=config.check_audio, progress=config.progress)
    _log(report.format())
    sets: dict[str, list[Item]] = {}
    provenance = {
        "manifest": str(manifest.source),
        "manifest_sha256": hashlib.sha256(Path(manifest.source).read_bytes()).hexdigest(),
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
                                         expected_splits=(split,))
        # An evaluation item whose id the model trained or early-stopped on is leakage too.
        for index, item in enumerate(extra.items):
            if item.id in seen_for_training:
                extra_report.problems.append(
                    Problem("split_leakage", index, item.id, item.split, "id is in the main manifest's train/valid split")
                )
        _log(f"[{name}] " + extra_report.format())
        sets[name] = _apply_policy(extra, extra_report, config.drop_invalid, name)
        extra_manifests[name] = extra
        provenance["extra_eval"][name] = {
            "manifest": str(extra.source), "split": split,
            "manifest_sha256": hashlib.sha256(Path(extra.source).read_bytes()).hexdigest(),
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
    _log(f"{name}: dropping {len(bad)} invalid item(s): {report.problem_counts()}")
    return [item for index, item in enumerate(manifest.items) if index not in bad]


# --------------------------------------------------------------------------- encoders


def resolve_encoders(config: TrainConfig) -> tuple[str, str, int]:
    text, audio, max_length = None, None, 128
    if config.base_bundle is not None:
        base = Bundle.load(config.base_bundle)
        text, audio, max_length = base.resolve(base.text_encoder), base.resolve(base.audio_encoder), base.text_max_length
    text = config.text_encoder or text
    audio = config.audio_encoder or audio
    if not text or not audio:
        raise ValueError("name the encoders with --bundle BASE_BUNDLE or --text-encoder and --audio-encoder")
    return text, audio, config.text_max_length or max_length


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.float()[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def set_trainable_layers(model: nn.Module, n_layers: int) -> int:
    """Freeze everything, then unfreeze the last ``n_layers`` transformer layers (all parameters for -1)."""
    if n_layers < 0:
        for p in model.parameters():
            p.requires_grad = True
    else:
        for p in model.parameters():
            p.requires_grad = False
        encoder = model.encoder
        layers = getattr(encoder, "layer", None) or getattr(encoder, "layers")
        for layer in list(layers)[len(layers) - n_layers :] if n_layers else []:
            for p in layer.parameters():
                p.requires_grad = True
        # Pre-norm (stable layer norm) wav2vec2 applies a final LayerNorm after the last layer.
        final_norm = getattr(encoder, "layer_norm", None)
        if n_layers and final_norm is not None and getattr(model.config, "do_stable_layer_norm", False):
            for p in final_norm.parameters():
                p.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def class_weights(items: list[Item], labels: list[str]) -> torch.Tensor:
    """Inverse-frequency weights, normalised so a balanced set gets 1.0 each."""
    counts = torch.tensor([sum(1 for i in items if i.label == label) for label in labels], dtype=torch.float)
    return counts.sum() / (len(labels) * counts.clamp(min=1.0))


def finetune_encoder(kind: str, encoder: TextEncoder | AudioEncoder, manifest: Manifest, train: list[Item],
                     valid: list[Item], labels: list[str], n_layers: int, config: TrainConfig,
                     out_dir: Path) -> dict:
    """Stage 2: train the encoder's last ``n_layers`` with a mean-pool + linear head on the labels.

    The best epoch by valid accuracy is kept and saved with ``save_pretrained`` to ``out_dir``.
    """
    index = {label: i for i, label in enumerate(labels)}
    rng = random.Random(config.seed)
    if kind == "audio":
        train = [i for i in train if i.audio_path]
        valid = [i for i in valid if i.audio_path]
    if not train:
        raise TrainingDataError(f"fine-tuning the {kind} encoder needs train items with {kind}")
    model = encoder.model.float()
    trainable = set_trainable_layers(model, n_layers)
    head = nn.Sequential(nn.LayerNorm(encoder.hidden_size), nn.Linear(encoder.hidden_size, len(labels))).to(encoder.device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.finetune_lr, weight_decay=config.weight_decay)
    # Linear warm-up over the first 10% of steps, then linear decay: the usual schedule for
    # fine-tuning transformers, and what keeps training from scratch stable early on.
    total_steps = config.finetune_epochs * math.ceil(len(train) / config.finetune_batch_size)
    warmup = max(1, total_steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup))))
    weights = class_weights(train, labels).to(encoder.device)

    def inputs(batch: list[Item], crop: bool):
        if kind == "text":
            return [i.text for i in batch]
        waves = []
        for item in batch:
            wave = load_waveform(manifest.audio_file(item), encoder.sampling_rate, item.start, item.end,
                                 config.max_audio_seconds)
            if crop and config.finetune_crop_seconds:
                n = int(config.finetune_crop_seconds * encoder.sampling_rate)
                if wave.shape[0] > n:  # a random window each epoch: cheap augmentation and cost cap
                    start = rng.randrange(wave.shape[0] - n)
                    wave = wave[start : start + n]
            waves.append(wave)
        return waves

    def logits_for(batch: list[Item], crop: bool) -> torch.Tensor:
        encoded = encoder.forward(inputs(batch, crop))
        return head(_mean_pool(encoded.hidden, encoded.mask))

    history = {"epoch": [], "train_loss": [], "valid_accuracy": []}
    best, best_acc, bad_epochs = None, -1.0, 0
    _log(f"fine-tuning the {kind} encoder: {trainable:,} trainable parameters, {len(train)} train items")
    for epoch in range(1, config.finetune_epochs + 1):
        model.train()
        head.train()
        order = list(train)
        rng.shuffle(order)
        total, steps = 0.0, 0
        bar = tqdm(range(0, len(order), config.finetune_batch_size), desc=f"fine-tune {kind} {epoch}/{config.finetune_epochs}",
                   unit="batch", disable=not config.progress)
        for start in bar:
            batch = order[start : start + config.finetune_batch_size]
            target = torch.tensor([index[i.label] for i in batch], device=encoder.device)
            loss = F.cross_entropy(logits_for(batch, crop=True), target, weight=weights)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        model.eval()
        head.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(valid), config.finetune_batch_size):
                batch = valid[start : start + config.finetune_batch_size]
                pred = logits_for(batch, crop=False).argmax(dim=1).cpu()
                correct += int((pred == torch.tensor([index[i.label] for i in batch])).sum())
        acc = correct / max(len(valid), 1)
        history["epoch"].append(epoch)
        history["train_loss"].append(total / max(steps, 1))
        history["valid_accuracy"].append(acc)
        _log(f"fine-tune {kind} epoch {epoch}: train loss {total / max(steps, 1):.4f}, valid accuracy {acc:.4f}")
        if acc > best_acc:
            best, best_acc, bad_epochs = copy.deepcopy(model.state_dict()), acc, 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.finetune_patience:
                break
    model.load_state_dict(best)
    model.eval()
    for p in model.parameters():
        p.requires_grad = False
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    (encoder.tokenizer if kind == "text" else encoder.feature_extractor).save_pretrained(out_dir)
    history["best_valid_accuracy"] = best_acc
    history["trainable_parameters"] = trainable
    return history


def _copy_encoder(source: str, dest: Path) -> str:
    """Local encoder folders are copied into the bundle (self-contained); hub ids stay ids."""
    src = Path(source)
    if not src.is_dir():
        return source
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return dest.name


# --------------------------------------------------------------------------- fusion head


@dataclass
class Targets:
    label: torch.Tensor  # [N] class index
    score: torch.Tensor  # [N], NaN where missing


def _targets(items: list[Item], labels: list[str]) -> Targets:
    index = {label: i for i, label in enumerate(labels)}
    return Targets(
        label=torch.tensor([index[i.label] for i in items], dtype=torch.long),
        score=torch.tensor([math.nan if i.score is None else i.score for i in items], dtype=torch.float),
    )


def _forward(head: FusionHead, text: Features, audio: Features, idx: list[int], device):
    cfg = head.config
    t, t_mask, has_t = pad_sequences([text[i] for i in idx], cfg.text_dim)
    a, a_mask, has_a = pad_sequences([audio[i] for i in idx], cfg.audio_dim)
    out = head(t.to(device), t_mask.to(device), has_t.to(device), a.to(device), a_mask.to(device), has_a.to(device))
    return out, has_t.to(device), has_a.to(device)


def _loss(out, has_t, has_a, target: Targets, idx, weights, config: TrainConfig, reg_weight: float):
    """Fused class-weighted CE (+ L1 on score) plus auxiliary unimodal terms on items that have the modality."""
    device = out.logits.device
    label = target.label[idx].to(device)
    score = target.score[idx].to(device)
    has_score = ~torch.isnan(score)
    fused = F.cross_entropy(out.logits, label, weight=weights)
    if reg_weight and has_score.any():
        fused = fused + reg_weight * F.l1_loss(out.score[has_score], score[has_score])
    total = fused
    if config.aux_weight:
        for logits, reg, present in ((out.text_logits, out.text_score, has_t), (out.audio_logits, out.audio_score, has_a)):
            if present.any():
                aux = F.cross_entropy(logits[present], label[present], weight=weights)
                both = present & has_score
                if reg_weight and both.any():
                    aux = aux + reg_weight * F.l1_loss(reg[both], score[both])
                total = total + config.aux_weight * aux
    return total, fused


def modality_batches(text: Features, audio: Features, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches that never mix items with and without audio, with similar audio lengths.

    A batch is padded to its longest audio clip, so one clip among text-only items
    would make every item pay for it; grouping keeps the padding (wasted compute) small.
    """
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, (t, a) in enumerate(zip(text, audio)):
        groups.setdefault((t is not None, a is not None), []).append(i)
    batches = []
    for members in groups.values():
        rng.shuffle(members)
        # Sort within windows of 50 batches: lengths similar, order still random between windows.
        window = 50 * batch_size
        for start in range(0, len(members), window):
            chunk = sorted(members[start : start + window], key=lambda i: 0 if audio[i] is None else audio[i].shape[0])
            batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def train_fusion(labels: list[str], text: dict[str, Features], audio: dict[str, Features],
                 targets: dict[str, Targets], text_dim: int, audio_dim: int, reg_weight: float,
                 config: TrainConfig, device) -> tuple[FusionHead, dict]:
    seed_everything(config.seed)
    fusion_config = FusionConfig(text_dim=text_dim, audio_dim=audio_dim, labels=list(labels), d_model=config.d_model,
                                 n_heads=config.n_heads, n_layers=config.n_layers, dropout=config.dropout)
    head = FusionHead(fusion_config).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    train_labels = targets["train"].label
    counts = torch.bincount(train_labels, minlength=len(labels)).float()
    weights = (counts.sum() / (len(labels) * counts.clamp(min=1.0))).to(device)
    n_valid = len(targets["valid"].label)
    history = {"epoch": [], "train_loss": [], "valid_loss": [], "valid_accuracy": [], "valid_weighted_f1": []}
    best_state, best_loss, bad_epochs = None, math.inf, 0
    rng = random.Random(config.seed)
    for epoch in range(1, config.epochs + 1):
        head.train()
        total, steps = 0.0, 0
        bar = tqdm(modality_batches(text["train"], audio["train"], config.batch_size, rng),
                   desc=f"fusion epoch {epoch}/{config.epochs}", unit="batch", disable=not config.progress, leave=False)
        for idx in bar:
            out, has_t, has_a = _forward(head, text["train"], audio["train"], idx, device)
            loss, _ = _loss(out, has_t, has_a, targets["train"], idx, weights, config, reg_weight)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        head.eval()
        valid_loss, logits = 0.0, torch.zeros(n_valid, len(labels))
        with torch.inference_mode():
            for idx in modality_batches(text["valid"], audio["valid"], 256, random.Random(0)):
                out, has_t, has_a = _forward(head, text["valid"], audio["valid"], idx, device)
                _, fused = _loss(out, has_t, has_a, targets["valid"], idx, weights, config, reg_weight)
                valid_loss += fused.item() * len(idx)
                logits[idx] = out.logits.float().cpu()
        valid_loss /= n_valid
        metrics = classification_metrics(logits.numpy(), targets["valid"].label.numpy(), labels)
        history["epoch"].append(epoch)
        history["train_loss"].append(total / max(steps, 1))
        history["valid_loss"].append(valid_loss)
        history["valid_accuracy"].append(metrics["accuracy"])
        history["valid_weighted_f1"].append(metrics["weighted_f1"])
        _log(f"fusion epoch {epoch}: train loss {total / max(steps, 1):.4f}, valid loss {valid_loss:.4f}, "
             f"valid accuracy {metrics['accuracy']:.4f}, weighted F1 {metrics['weighted_f1']:.4f}")
        if valid_loss < best_loss:
            best_state, best_loss, bad_epochs = copy.deepcopy(head.state_dict()), valid_loss, 0
            history["best_epoch"] = epoch
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                _log(f"early stopping: valid loss has not improved for {config.patience} epochs")
                break
    head.load_state_dict(best_state)
    return head.eval(), history


# --------------------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(head: FusionHead, text: Features, audio: Features, device, batch_size: int = 256) -> dict:
    """Logits and scores of the fused, text-only and audio-only heads, plus which modalities were present."""
    keys = ("logits", "score", "text_logits", "text_score", "audio_logits", "audio_score", "has_text", "has_audio")
    parts: dict[str, list] = {k: [None] * len(text) for k in keys}
    head.eval()
    for idx in modality_batches(text, audio, batch_size, random.Random(0)):
        out, has_t, has_a = _forward(head, text, audio, idx, device)
        values = {k: getattr(out, k).float().cpu() for k in keys[:6]} | {"has_text": has_t.cpu(), "has_audio": has_a.cpu()}
        for k in keys:
            for row, i in enumerate(idx):
                parts[k][i] = values[k][row]
    return {k: torch.stack(v).numpy() if v else np.zeros(0) for k, v in parts.items()}


def evaluate_set(pred: dict, target: Targets, bundle: Bundle) -> dict:
    """Metrics for each branch: fused (all items), text (items with text), audio (items with audio)."""
    labels = bundle.labels
    values = np.asarray(bundle.sentiment_values())
    true = target.label.numpy()
    score = target.score.numpy()
    result = {}
    for branch, logits_key, score_key, mask in (
        ("fused", "logits", "score", np.ones(len(true), dtype=bool)),
        ("text", "text_logits", "text_score", pred["has_text"]),
        ("audio", "audio_logits", "audio_score", pred["has_audio"]),
    ):
        if not mask.any():
            continue
        logits = pred[logits_key][mask]
        metrics = classification_metrics(logits, true[mask], labels)
        has_score = mask & ~np.isnan(score)
        if has_score.any():
            if bundle.regression_trained:
                predicted = pred[score_key][has_score]
            else:  # what serving reports when the regression output was not trained
                probs = torch.softmax(torch.from_numpy(pred[logits_key][has_score]), dim=-1).numpy()
                predicted = probs @ values
            metrics["regression"] = regression_metrics(predicted, score[has_score])
        result[branch] = metrics
    return result


# --------------------------------------------------------------------------- the whole run


def label_values(items: list[Item], labels: list[str]) -> tuple[dict[str, float], str]:
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


def train(config: TrainConfig) -> TrainResult:
    from model.report import write_report  # matplotlib is only needed once training is done

    started = time.time()
    timings = {}
    seed_everything(config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    manifests, sets, labels, provenance = prepare_data(config)
    timings["data_s"] = time.time() - started
    text_name, audio_name, max_length = resolve_encoders(config)
    _log(f"labels: {labels}; text encoder: {text_name}; audio encoder: {audio_name}")

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
    cache = Path(config.cache_dir) if config.cache_dir else None
    fingerprints = {"text": encoder_fingerprint(text_encoder), "audio": encoder_fingerprint(audio_encoder)}
    precomputed = None
    if config.features:
        if config.finetune_text_layers or config.finetune_audio_layers:
            raise TrainingDataError("--features holds the frozen encoders' features; it cannot be combined "
                                    "with fine-tuning, which changes them")
        precomputed = PrecomputedFeatures.load(config.features, fingerprints["text"], fingerprints["audio"],
                                               text_encoder.hidden_size, audio_encoder.hidden_size)
    # Each distinct text is encoded once, even when several evaluation sets share sentences.
    unique = list(dict.fromkeys(item.text for items in sets.values() for item in items))
    encoded = text_features(text_encoder, [Item(id=str(k), text=t, audio_path=None, split="") for k, t in enumerate(unique)],
                            cache, config.text_batch_size, config.progress, precomputed=precomputed)
    by_text = dict(zip(unique, encoded))
    text_feats = {name: [by_text[item.text] for item in items] for name, items in sets.items()}
    audio_feats = {}
    for name, items in sets.items():
        audio_feats[name] = audio_features(audio_encoder, manifests[name], items, cache, config.audio_batch_size,
                                           config.max_audio_seconds, config.progress, desc=f"audio features [{name}]",
                                           precomputed=precomputed)
    if precomputed is not None:
        _log(f"features taken from {config.features}: {precomputed.used['text']} texts, "
             f"{precomputed.used['audio']} audio clips; the rest were extracted here")
    timings["features_s"] = time.time() - tick
    encoders = {
        "text": {"source": text_name, "fingerprint": fingerprints["text"],
                 "fine_tuned_layers": config.finetune_text_layers},
        "audio": {"source": audio_name, "fingerprint": fingerprints["audio"],
                  "fine_tuned_layers": config.finetune_audio_layers},
    }

    tick = time.time()
    targets = {name: _targets(items, labels) for name, items in sets.items()}
    has_scores = any(i.score is not None for i in sets["train"])
    reg_weight = config.regression_weight if config.regression_weight is not None else (1.0 if has_scores else 0.0)
    if reg_weight and not has_scores:
        raise TrainingDataError("regression was asked for but no train item has a score")
    device = text_encoder.device
    head, history = train_fusion(labels, text_feats, audio_feats, targets, text_encoder.hidden_size,
                                 audio_encoder.hidden_size, reg_weight, config, device)
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
        if name in ("train",) or not sets[name]:
            continue
        pred = predict(head, text_feats[name], audio_feats[name], device)
        metrics[name] = evaluate_set(pred, targets[name], bundle)
    timings["total_s"] = time.time() - started
    provenance.update({
        "encoders": encoders,
        "label_values_rule": values_rule,
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "regression_weight": reg_weight,
        "precomputed_features": ({"source": str(config.features), **precomputed.used} if precomputed else None),
        "best_epoch": history.get("best_epoch"),
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "torch": torch.__version__,
    })
    bundle.metrics = metrics
    bundle.data = provenance
    bundle.save(out, head)
    full_history = {"fusion": history, "finetune": finetune_history}
    report_dir = write_report(out / "report", bundle, full_history)
    _log(f"bundle saved to {out}; report in {report_dir}")
    return TrainResult(bundle=bundle, metrics=metrics, history=full_history, report_dir=report_dir)


# --------------------------------------------------------------------------- CLI


def _parse_eval(values: list[str]) -> dict[str, str]:
    extra = {}
    for value in values or []:
        name, sep, spec = value.partition("=")
        if not sep or not name or not spec:
            raise argparse.ArgumentTypeError(f"--eval expects NAME=MANIFEST[:SPLIT], got {value!r}")
        extra[name] = spec
    return extra


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = TrainConfig(manifest=Path("."), out=Path("."))
    p.add_argument("--manifest", required=True, type=Path, help="JSONL or CSV manifest")
    p.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    p.add_argument("--bundle", dest="base_bundle", type=Path, help="base bundle naming the encoders")
    p.add_argument("--text-encoder", help="BERT-family hub id or folder (overrides --bundle)")
    p.add_argument("--audio-encoder", help="Wav2Vec2-family hub id or folder (overrides --bundle)")
    p.add_argument("--labels", help="comma-separated label order (default: the train split's labels)")
    p.add_argument("--eval", action="append", metavar="NAME=MANIFEST[:SPLIT]",
                   help="also evaluate on this manifest's split (default test); repeatable")
    p.add_argument("--cache-dir", type=Path, default=d.cache_dir, help="feature cache folder")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    p.add_argument("--features", type=Path, default=None,
                   help="feature table written by `python -m deployments.batch features` with the same encoders: "
                        "items found there are not encoded again (and fill the cache)")
    p.add_argument("--drop-invalid", action="store_true", help="leave out (and count) items that fail validation")
    p.add_argument("--skip-audio-check", action="store_true", help="do not decode every audio file during validation")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience, help="early-stopping patience in epochs")
    p.add_argument("--aux-weight", type=float, default=d.aux_weight, help="weight of the unimodal auxiliary losses")
    p.add_argument("--regression-weight", type=float, default=None,
                   help="weight of the L1 loss on score (default: 1 when the train split has scores)")
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--n-heads", type=int, default=d.n_heads)
    p.add_argument("--n-layers", type=int, default=d.n_layers)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--text-max-length", type=int, default=None)
    p.add_argument("--max-audio-seconds", type=float, default=d.max_audio_seconds)
    p.add_argument("--text-batch-size", type=int, default=d.text_batch_size)
    p.add_argument("--audio-batch-size", type=int, default=d.audio_batch_size)
    p.add_argument("--finetune-text-layers", type=int, default=0, help="fine-tune the last N text layers (-1: all)")
    p.add_argument("--finetune-audio-layers", type=int, default=0, help="fine-tune the last N audio layers (-1: all)")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs)
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    p.add_argument("--finetune-batch-size", type=int, default=d.finetune_batch_size)
    p.add_argument("--finetune-crop-seconds", type=float, default=None)
    p.add_argument("--name", default=d.name, help="bundle name")
    p.add_argument("--version", default=d.version, help="bundle version")
    p.add_argument("--note", action="append", default=[], help="a note stored in the bundle; repeatable")
    p.add_argument("--device", default=None, help="torch device (default: cuda if visible, else cpu)")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        manifest=args.manifest, out=args.out, base_bundle=args.base_bundle,
        text_encoder=args.text_encoder, audio_encoder=args.audio_encoder,
        labels=[s.strip() for s in args.labels.split(",")] if args.labels else None,
        extra_eval=_parse_eval(args.eval), cache_dir=None if args.no_cache else args.cache_dir, features=args.features,
        drop_invalid=args.drop_invalid, check_audio=not args.skip_audio_check, seed=args.seed,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        patience=args.patience, aux_weight=args.aux_weight, regression_weight=args.regression_weight,
        d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers, dropout=args.dropout,
        text_max_length=args.text_max_length, max_audio_seconds=args.max_audio_seconds,
        text_batch_size=args.text_batch_size, audio_batch_size=args.audio_batch_size,
        finetune_text_layers=args.finetune_text_layers, finetune_audio_layers=args.finetune_audio_layers,
        finetune_epochs=args.finetune_epochs, finetune_lr=args.finetune_lr,
        finetune_batch_size=args.finetune_batch_size, finetune_crop_seconds=args.finetune_crop_seconds,
        name=args.name, version=args.version, notes=args.note, device=args.device, progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = train(config_from_args(args))
    except TrainingDataError as exc:
        _log(f"error: {exc}")
        return 2
    print(json.dumps({"bundle": str(args.out), "report": str(result.report_dir),
                      "metrics": {k: {b: round(v["accuracy"], 4) for b, v in m.items()} for k, m in result.metrics.items()}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
