"""The cross-modal attention fusion head (MulT / MMML style), registered as ``cross_modal_attention``.

Text attends to audio and audio attends to text. Each modality gets a learnable
summary token whose final state feeds the classifier. A request that lacks a
modality gets a learned "missing" embedding in its place, never silent zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from model.fusion.base import FusionConfig, FusionHead, FusionOutput, PredictionHead

# Each modality's sequence is [summary, missing-slot, features...].
SPECIAL_SLOTS = 2


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


class CrossModalAttentionHead(FusionHead):
    architecture = "cross_modal_attention"

    def __init__(self, config: FusionConfig):
        super().__init__(config)
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

    @staticmethod
    def _token_attention(weights, text_mask, audio_mask, has_text, has_audio) -> list[torch.Tensor | None]:
        """The last text→audio layer's weights, special slots dropped: real tokens × real frames."""
        maps: list[torch.Tensor | None] = []
        for i in range(weights.shape[0]):
            if not (has_text[i] and has_audio[i]):
                maps.append(None)
                continue
            n_tok, n_frm = int(text_mask[i].sum()), int(audio_mask[i].sum())
            maps.append(weights[i, SPECIAL_SLOTS : SPECIAL_SLOTS + n_tok, SPECIAL_SLOTS : SPECIAL_SLOTS + n_frm])
        return maps

    def forward(self, text, text_mask, has_text, audio, audio_mask, has_audio, explain: bool = False) -> FusionOutput:
        t = self.text_proj(text)
        a = self.audio_proj(audio)
        t_seq, t_mask = self._sequence(t, text_mask, has_text, self.text_summary, self.text_missing)
        a_seq, a_mask = self._sequence(a, audio_mask, has_audio, self.audio_summary, self.audio_missing)
        # Unimodal representations (MMML's auxiliary branches) see only their own modality.
        text_alone = self._masked_mean(t_seq[:, 1:], t_mask[:, 1:])
        audio_alone = self._masked_mean(a_seq[:, 1:], a_mask[:, 1:])
        w_ta = None
        for t2a, a2t in zip(self.text_to_audio, self.audio_to_text):
            t_next, w_ta = t2a(t_seq, a_seq, a_mask)
            a_next, _ = a2t(a_seq, t_seq, t_mask)
            t_seq, a_seq = t_next, a_next
        fused = torch.cat([t_seq[:, 0], a_seq[:, 0]], dim=-1)
        logits, score = self.fused_head(fused)
        text_logits, text_score = self.text_head(text_alone)
        audio_logits, audio_score = self.audio_head(audio_alone)
        attention = None
        if explain and w_ta is not None:
            attention = self._token_attention(w_ta, text_mask, audio_mask, has_text, has_audio)
        return FusionOutput(logits, score, text_logits, text_score, audio_logits, audio_score,
                            has_text, has_audio, attention)
