"""Turning encoder features into predictions, shared by serving, batch jobs and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.audio_encoder import AudioEncoder
from model.bundle import Bundle
from model.features import pad_sequences
from model.fusion import FusionHead
from model.text_encoder import TextEncoder


@dataclass
class FusionItem:
    """One request's encoder output; ``None`` marks a missing modality."""

    text: torch.Tensor | None = None  # [T, D_text]
    audio: torch.Tensor | None = None  # [F, D_audio]


def _scores(logits: torch.Tensor, score: torch.Tensor, bundle: Bundle) -> tuple[dict, float]:
    probs = torch.softmax(logits.float(), dim=-1)
    if bundle.regression_trained:
        sentiment = float(score)
    else:
        sentiment = float((probs * torch.tensor(bundle.sentiment_values())).sum())
    return {label: float(p) for label, p in zip(bundle.labels, probs)}, sentiment


def _branch(logits, score, bundle: Bundle) -> dict:
    probs, sentiment = _scores(logits, score, bundle)
    return {"label": max(probs, key=probs.get), "scores": probs, "sentiment": sentiment}


@torch.inference_mode()
def fuse(head: FusionHead, bundle: Bundle, items: list[FusionItem], explain: bool = False) -> list[dict]:
    """Run the fusion head on a batch of items and format one prediction dict each.

    Each dict holds the fused label/scores/sentiment, per-modality branches for the
    modalities that were present and, with ``explain``, the text→audio attention
    map over real tokens × real frames.
    """
    cfg = head.config
    device = next(head.parameters()).device
    text, text_mask, has_text = pad_sequences([i.text for i in items], cfg.text_dim)
    audio, audio_mask, has_audio = pad_sequences([i.audio for i in items], cfg.audio_dim)
    out = head(
        text.to(device), text_mask.to(device), has_text.to(device),
        audio.to(device), audio_mask.to(device), has_audio.to(device),
    )
    results = []
    for i in range(len(items)):
        fused = _branch(out.logits[i].cpu(), out.score[i].cpu(), bundle)
        modalities = {"fused": dict(fused)}
        if has_text[i]:
            modalities["text"] = _branch(out.text_logits[i].cpu(), out.text_score[i].cpu(), bundle)
        if has_audio[i]:
            modalities["audio"] = _branch(out.audio_logits[i].cpu(), out.audio_score[i].cpu(), bundle)
        fused["modalities"] = modalities
        if explain and has_text[i] and has_audio[i]:
            n_tok, n_frm = int(text_mask[i].sum()), int(audio_mask[i].sum())
            # Skip the summary and missing slots: rows are tokens, columns are frames.
            weights = out.text_to_audio[i, 2 : 2 + n_tok, 2 : 2 + n_frm].float().cpu()
            fused["attention"] = weights.tolist()
        results.append(fused)
    return results


class SentimentPipeline:
    """The whole model in one process: encoders and fusion head, no Ray.

    Used by evaluation, batch scoring and the in-process benchmark baselines.
    """

    def __init__(self, bundle: Bundle, device: str | None = None):
        self.bundle = bundle
        self.text_encoder = TextEncoder(bundle.resolve(bundle.text_encoder), bundle.text_max_length, device)
        self.audio_encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), device)
        self.fusion = bundle.load_fusion().to(self.text_encoder.device)

    def predict(self, texts: list[str | None], waveforms: list[torch.Tensor | None], explain: bool = False) -> list[dict]:
        items = [FusionItem() for _ in texts]
        text_idx = [i for i, t in enumerate(texts) if t is not None]
        audio_idx = [i for i, w in enumerate(waveforms) if w is not None]
        if text_idx:
            encoded = self.text_encoder.encode([texts[i] for i in text_idx]).unpad()
            for i, feat in zip(text_idx, encoded):
                items[i].text = feat
        if audio_idx:
            encoded = self.audio_encoder.encode([waveforms[i] for i in audio_idx]).unpad()
            for i, feat in zip(audio_idx, encoded):
                items[i].audio = feat
        return fuse(self.fusion, self.bundle, items, explain=explain)
