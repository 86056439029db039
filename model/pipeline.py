"""THE in-process pipeline: encoder features to predictions, and the whole model in one process.

``fuse`` turns features into the response dicts the service returns; the FusionHead
deployment, the batch jobs and ``SentimentPipeline`` all call it. ``SentimentPipeline``
runs both encoders (with the same length buckets as the encoder deployments) and the
fusion head with no Ray: for evaluation, jobs and the in-process benchmark baselines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.audio_encoder import AudioEncoder
from model.bundle import Bundle
from model.fusion import FusionHead
from model.text_encoder import TextEncoder


@dataclass
class FusionItem:
    """One request's encoder output; ``None`` marks a missing modality."""

    text: torch.Tensor | None = None  # [T, D_text]
    audio: torch.Tensor | None = None  # [F, D_audio]


def sentiment(logits: torch.Tensor, score: torch.Tensor, bundle: Bundle) -> torch.Tensor:
    """The sentiment reported for [B, L] logits and [B] scores: the regression output when it
    was trained, else each label's sentiment value weighted by its probability."""
    if bundle.regression_trained:
        return score.float()
    probs = torch.softmax(logits.float(), dim=-1)
    return probs @ torch.tensor(bundle.sentiment_values(), dtype=probs.dtype, device=probs.device)


def _branches(logits: torch.Tensor, score: torch.Tensor, bundle: Bundle) -> list[dict]:
    probs = torch.softmax(logits.float(), dim=-1).cpu()
    values = sentiment(logits, score, bundle).cpu()
    results = []
    for row, value in zip(probs.tolist(), values.tolist()):
        scores = dict(zip(bundle.labels, row))
        results.append({"label": max(scores, key=scores.get), "scores": scores, "sentiment": value})
    return results


@torch.inference_mode()
def fuse(head: FusionHead, bundle: Bundle, items: list[FusionItem], explain: bool = False) -> list[dict]:
    """Run the fusion head on a batch of items and format one prediction dict each.

    Each dict holds the fused label/scores/sentiment, per-modality branches for the
    modalities that were present and, with ``explain``, the text→audio attention
    map over real tokens × real frames (as the head reports it).
    """
    out = head.run([i.text for i in items], [i.audio for i in items], explain=explain)
    fused = _branches(out.logits, out.score, bundle)
    text = _branches(out.text_logits, out.text_score, bundle)
    audio = _branches(out.audio_logits, out.audio_score, bundle)
    has_text, has_audio = out.has_text.tolist(), out.has_audio.tolist()
    results = []
    for i, result in enumerate(fused):
        modalities = {"fused": dict(result)}
        if has_text[i]:
            modalities["text"] = text[i]
        if has_audio[i]:
            modalities["audio"] = audio[i]
        result["modalities"] = modalities
        if out.attention is not None and out.attention[i] is not None:
            result["attention"] = out.attention[i].float().cpu().tolist()
        results.append(result)
    return results


class SentimentPipeline:
    """The whole model in one process: encoders and fusion head, no Ray."""

    def __init__(self, bundle: Bundle, device: str | None = None):
        self.bundle = bundle
        self.text_encoder = TextEncoder(bundle.resolve(bundle.text_encoder), bundle.text_max_length, device)
        self.audio_encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), device)
        self.fusion = bundle.load_fusion().to(self.text_encoder.device)

    def encode(self, texts: list[str | None], waveforms: list[torch.Tensor | None]) -> list[FusionItem]:
        """Both encoders on the present items, length-bucketed like the encoder deployments."""
        items = [FusionItem() for _ in texts]
        text_idx = [i for i, t in enumerate(texts) if t is not None]
        audio_idx = [i for i, w in enumerate(waveforms) if w is not None]
        if text_idx:
            for i, feat in zip(text_idx, self.text_encoder.encode_each([texts[i] for i in text_idx])):
                items[i].text = feat
        if audio_idx:
            for i, feat in zip(audio_idx, self.audio_encoder.encode_each([waveforms[i] for i in audio_idx])):
                items[i].audio = feat
        return items

    def predict(self, texts: list[str | None], waveforms: list[torch.Tensor | None], explain: bool = False) -> list[dict]:
        return fuse(self.fusion, self.bundle, self.encode(texts, waveforms), explain=explain)
