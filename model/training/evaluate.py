"""Stage 5 of training: the trained head's predictions on each evaluation set, and their metrics.

The sentiment of an untrained regression output is derived exactly as the service
derives it (``model.pipeline.sentiment``), so the reported metrics are the served model's.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from model.bundle import Bundle
from model.fusion import FusionHead
from model.pipeline import sentiment
from model.training.feature_cache import Features
from model.training.loop import Targets, forward_batch, modality_batches
from model.training.metrics import classification_metrics, regression_metrics

OUTPUTS = ("logits", "score", "text_logits", "text_score", "audio_logits", "audio_score", "has_text", "has_audio")


@torch.inference_mode()
def predict(head: FusionHead, text: Features, audio: Features, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Logits and scores of the fused, text-only and audio-only heads, plus which modalities were present."""
    parts: dict[str, list] = {k: [None] * len(text) for k in OUTPUTS}
    head.eval()
    for idx in modality_batches(text, audio, batch_size, random.Random(0)):
        out = forward_batch(head, text, audio, idx)
        values = {k: getattr(out, k).cpu() for k in OUTPUTS}
        values = {k: v if v.dtype == torch.bool else v.float() for k, v in values.items()}
        for k in OUTPUTS:
            for row, i in enumerate(idx):
                parts[k][i] = values[k][row]
    return {k: torch.stack(v).numpy() if v else np.zeros(0) for k, v in parts.items()}


def evaluate_set(pred: dict, target: Targets, bundle: Bundle) -> dict:
    """Metrics for each branch: fused (all items), text (items with text), audio (items with audio)."""
    labels = bundle.labels
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
            predicted = sentiment(torch.from_numpy(pred[logits_key][has_score]),
                                  torch.from_numpy(pred[score_key][has_score]), bundle).numpy()
            metrics["regression"] = regression_metrics(predicted, score[has_score])
        result[branch] = metrics
    return result
