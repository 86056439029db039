"""Stage 2 of training (optional): fine-tuning an encoder's last layers with a small head on the labels.

A separate stage, so that the fusion head still trains on cached features of the
(now fixed) fine-tuned encoder. N = -1 trains the whole encoder, e.g. from scratch.
"""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from model.audio_encoder import AudioEncoder
from model.data.manifest import Item, Manifest
from model.text_encoder import TextEncoder
from model.training.config import TrainConfig
from model.training.feature_cache import load_waveform
from model.training.prepare import TrainingDataError, log


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
    """Train the encoder's last ``n_layers`` with a mean-pool + linear head on the labels.

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
    log(f"fine-tuning the {kind} encoder: {trainable:,} trainable parameters, {len(train)} train items")
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
        log(f"fine-tune {kind} epoch {epoch}: train loss {total / max(steps, 1):.4f}, valid accuracy {acc:.4f}")
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
