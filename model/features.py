"""The tensors that travel from the encoders to the fusion head."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedBatch:
    """Padded encoder output: ``hidden`` is [B, T, D], ``mask`` is [B, T] (True = real)."""

    hidden: torch.Tensor
    mask: torch.Tensor

    def unpad(self, dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
        """Split into one [T_i, D] tensor per item, padding dropped.

        Items travel between deployments in this compact form (fp16 by default) and
        are re-padded by the fusion head against whatever they are batched with.
        """
        lengths = self.mask.sum(dim=1).tolist()
        # One device-to-host copy for the batch (one sync on a GPU), then slice on the
        # host. clone(): a view would pickle its whole batch's storage.
        hidden = self.hidden.to("cpu", dtype)
        return [hidden[i, : int(n)].clone() for i, n in enumerate(lengths)]


def pad_sequences(items: list[torch.Tensor | None], dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad per-item [T_i, D] tensors (None = modality missing) into a batch.

    Returns hidden [B, T, D] float32, mask [B, T] bool and present [B] bool. A batch
    where every item lacks the modality gets T = 1 with an all-False mask.
    """
    present = torch.tensor([item is not None and item.shape[0] > 0 for item in items], dtype=torch.bool)
    longest = max([item.shape[0] for item in items if item is not None] + [1])
    hidden = torch.zeros(len(items), longest, dim)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, item in enumerate(items):
        if item is not None and item.shape[0] > 0:
            hidden[i, : item.shape[0]] = item.float()
            mask[i, : item.shape[0]] = True
    return hidden, mask, present
