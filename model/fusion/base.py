"""What every fusion head shares: its config, its output, and the one way to call it on features."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar, Sequence

import torch
from torch import nn

from model.encoded import pad_sequences

SCORE_RANGE = 3.0  # the MOSI/MOSEI convention: sentiment in [-3, 3]
DEFAULT_ARCHITECTURE = "cross_modal_attention"


@dataclass
class FusionConfig:
    """``bundle.json``'s ``fusion`` entry. ``architecture`` names the head class in the registry
    (``model.fusion``); bundles written before it existed get the default."""

    text_dim: int
    audio_dim: int
    labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 1
    dropout: float = 0.1
    architecture: str = DEFAULT_ARCHITECTURE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FusionConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fusion setting(s): {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass
class FusionOutput:
    """A batch's predictions: fused, text-only and audio-only heads (logits [B, L], score [B])."""

    logits: torch.Tensor
    score: torch.Tensor  # in [-SCORE_RANGE, SCORE_RANGE]
    text_logits: torch.Tensor
    text_score: torch.Tensor
    audio_logits: torch.Tensor
    audio_score: torch.Tensor
    has_text: torch.Tensor  # [B] bool: which items had the modality
    has_audio: torch.Tensor
    # With ``explain``: per item, attention of its real text tokens (rows) over its
    # real audio frames (columns); None where a modality is missing.
    attention: list[torch.Tensor | None] | None = None


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
    """Base class of the registered heads: ``forward`` on padded tensors, ``run`` on per-item features."""

    architecture: ClassVar[str]

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.config = config

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, has_text: torch.Tensor,
                audio: torch.Tensor, audio_mask: torch.Tensor, has_audio: torch.Tensor,
                explain: bool = False) -> FusionOutput:
        """text [B, T, text_dim], audio [B, F, audio_dim], masks True = real, has_* [B]."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def run(self, text: Sequence[torch.Tensor | None], audio: Sequence[torch.Tensor | None],
            explain: bool = False) -> FusionOutput:
        """Per-item [T_i, D] features (None = modality missing), padded against each other,
        on the head's device. Grad mode is the caller's: training calls it too."""
        device = self.device
        t, t_mask, has_t = pad_sequences(list(text), self.config.text_dim)
        a, a_mask, has_a = pad_sequences(list(audio), self.config.audio_dim)
        return self(t.to(device), t_mask.to(device), has_t.to(device),
                    a.to(device), a_mask.to(device), has_a.to(device), explain=explain)
