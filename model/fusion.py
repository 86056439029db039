"""Cross-modal attention fusion head (MulT / MMML style).

Text attends to audio and audio attends to text. Each modality gets a learnable
summary token whose final state feeds the classifier. A request that lacks a
modality gets a learned "missing" embedding in its place, never silent zeros.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

SCORE_RANGE = 3.0  # the MOSI/MOSEI convention: sentiment in [-3, 3]


@dataclass
class FusionConfig:
    text_dim: int
    audio_dim: int
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 1
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FusionOutput:
    logits: torch.Tensor  # [B, L]
    score: torch.Tensor  # [B] in [-3, 3]
    text_logits: torch.Tensor
    text_score: torch.Tensor
    audio_logits: torch.Tensor
    audio_score: torch.Tensor
    text_to_audio: torch.Tensor  # [B, 2 + T, 2 + F] attention of text queries over audio keys
    audio_to_text: torch.Tensor  # [B, 2 + F, 2 + T]


class CrossModalBlock(nn.Module):
    """Pre-norm cross attention: ``query`` attends to ``context``, then a feed-forward."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.ff = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, 4 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * d_model, d_model),
        )

    def forward(self, query, context, context_mask):
        kv = self.norm_kv(context)
        attended, weights = self.attn(
            self.norm_q(query), kv, kv, key_padding_mask=~context_mask, need_weights=True
        )
        query = query + self.drop(attended)
        return query + self.drop(self.ff(query)), weights


class PredictionHead(nn.Module):
    """MLP to class logits plus a bounded regression score."""

    def __init__(self, in_dim: int, d_model: int, n_labels: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, d_model), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(d_model, n_labels + 1),
        )

    def forward(self, x):
        out = self.mlp(x)
        return out[:, :-1], SCORE_RANGE * torch.tanh(out[:, -1])


class FusionHead(nn.Module):
    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.text_proj = nn.Linear(config.text_dim, d)
        self.audio_proj = nn.Linear(config.audio_dim, d)
        self.text_summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.audio_summary = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.text_missing = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.audio_missing = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.text_to_audio = nn.ModuleList(
            CrossModalBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        self.audio_to_text = nn.ModuleList(
            CrossModalBlock(d, config.n_heads, config.dropout) for _ in range(config.n_layers)
        )
        n = len(config.labels)
        self.fused_head = PredictionHead(2 * d, d, n, config.dropout)
        self.text_head = PredictionHead(d, d, n, config.dropout)
        self.audio_head = PredictionHead(d, d, n, config.dropout)

    @staticmethod
    def _sequence(features, mask, present, summary, missing):
        """[summary, missing-slot, features...]; the missing slot is live only when absent."""
        batch = features.shape[0]
        seq = torch.cat([summary.expand(batch, -1, -1), missing.expand(batch, -1, -1), features], dim=1)
        seq_mask = torch.cat(
            [
                torch.ones(batch, 1, dtype=torch.bool, device=mask.device),
                (~present)[:, None],
                mask & present[:, None],
            ],
            dim=1,
        )
        return seq, seq_mask

    @staticmethod
    def _masked_mean(seq, mask):
        weights = mask.float()[..., None]
        return (seq * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, text, text_mask, has_text, audio, audio_mask, has_audio) -> FusionOutput:
        t = self.text_proj(text)
        a = self.audio_proj(audio)
        t_seq, t_mask = self._sequence(t, text_mask, has_text, self.text_summary, self.text_missing)
        a_seq, a_mask = self._sequence(a, audio_mask, has_audio, self.audio_summary, self.audio_missing)
        # Unimodal representations (MMML's auxiliary branches) see only their own modality.
        text_alone = self._masked_mean(t_seq[:, 1:], t_mask[:, 1:])
        audio_alone = self._masked_mean(a_seq[:, 1:], a_mask[:, 1:])
        w_ta = w_at = None
        for t2a, a2t in zip(self.text_to_audio, self.audio_to_text):
            t_next, w_ta = t2a(t_seq, a_seq, a_mask)
            a_next, w_at = a2t(a_seq, t_seq, t_mask)
            t_seq, a_seq = t_next, a_next
        fused = torch.cat([t_seq[:, 0], a_seq[:, 0]], dim=-1)
        logits, score = self.fused_head(fused)
        text_logits, text_score = self.text_head(text_alone)
        audio_logits, audio_score = self.audio_head(audio_alone)
        return FusionOutput(logits, score, text_logits, text_score, audio_logits, audio_score, w_ta, w_at)
