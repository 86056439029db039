"""Stage 4 of training: the fusion head's training loop on cached features, with early stopping.

AdamW, class-weighted cross-entropy on the fused output, optionally L1 regression
on ``score``, plus MMML-style unimodal auxiliary losses on the text-only and
audio-only heads; the best epoch by valid loss is kept.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from model.data.manifest import Item
from model.fusion import FusionConfig, FusionHead, FusionOutput, build_head
from model.training.config import TrainConfig
from model.training.feature_cache import Features
from model.training.metrics import classification_metrics
from model.training.prepare import log


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Targets:
    label: torch.Tensor  # [N] class index
    score: torch.Tensor  # [N], NaN where missing


def make_targets(items: list[Item], labels: list[str]) -> Targets:
    index = {label: i for i, label in enumerate(labels)}
    return Targets(
        label=torch.tensor([index[i.label] for i in items], dtype=torch.long),
        score=torch.tensor([math.nan if i.score is None else i.score for i in items], dtype=torch.float),
    )


def forward_batch(head: FusionHead, text: Features, audio: Features, idx: list[int]) -> FusionOutput:
    """The head on the items ``idx`` of a set's features."""
    return head.run([text[i] for i in idx], [audio[i] for i in idx])


def _loss(out: FusionOutput, target: Targets, idx, weights, config: TrainConfig, reg_weight: float):
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
        for logits, reg, present in ((out.text_logits, out.text_score, out.has_text),
                                     (out.audio_logits, out.audio_score, out.has_audio)):
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
                                 n_heads=config.n_heads, n_layers=config.n_layers, dropout=config.dropout,
                                 architecture=config.fusion_architecture)
    head = build_head(fusion_config).to(device)
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
            out = forward_batch(head, text["train"], audio["train"], idx)
            loss, _ = _loss(out, targets["train"], idx, weights, config, reg_weight)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        head.eval()
        valid_loss, logits = 0.0, torch.zeros(n_valid, len(labels))
        with torch.inference_mode():
            for idx in modality_batches(text["valid"], audio["valid"], 256, random.Random(0)):
                out = forward_batch(head, text["valid"], audio["valid"], idx)
                _, fused = _loss(out, targets["valid"], idx, weights, config, reg_weight)
                valid_loss += fused.item() * len(idx)
                logits[idx] = out.logits.float().cpu()
        valid_loss /= n_valid
        metrics = classification_metrics(logits.numpy(), targets["valid"].label.numpy(), labels)
        history["epoch"].append(epoch)
        history["train_loss"].append(total / max(steps, 1))
        history["valid_loss"].append(valid_loss)
        history["valid_accuracy"].append(metrics["accuracy"])
        history["valid_weighted_f1"].append(metrics["weighted_f1"])
        log(f"fusion epoch {epoch}: train loss {total / max(steps, 1):.4f}, valid loss {valid_loss:.4f}, "
            f"valid accuracy {metrics['accuracy']:.4f}, weighted F1 {metrics['weighted_f1']:.4f}")
        if valid_loss < best_loss:
            best_state, best_loss, bad_epochs = copy.deepcopy(head.state_dict()), valid_loss, 0
            history["best_epoch"] = epoch
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                log(f"early stopping: valid loss has not improved for {config.patience} epochs")
                break
    head.load_state_dict(best_state)
    return head.eval(), history
