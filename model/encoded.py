"""The tensors that travel from the encoders to the fusion head: EncodedBatch, length buckets, padding."""

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


# Start a new sub-batch when the longest item would be this much longer than the
# shortest: beyond it, padding costs more than the batching saves.
MAX_PADDING_RATIO = 1.5


def length_buckets(lengths: list[int], max_ratio: float = MAX_PADDING_RATIO) -> list[list[int]]:
    """Group item indices by length (sorted) so each group pads little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    buckets: list[list[int]] = []
    for idx in order:
        if buckets and lengths[idx] <= max_ratio * lengths[buckets[-1][0]]:
            buckets[-1].append(idx)
        else:
            buckets.append([idx])
    return buckets


def encode_in_buckets(encode, items: list, lengths: list[int] | None) -> list[torch.Tensor]:
    """``encode(items).unpad()`` per length bucket (one forward when ``lengths`` is None),
    returned in the order of ``items``."""
    buckets = length_buckets(lengths) if lengths is not None else [list(range(len(items)))]
    results: list[torch.Tensor | None] = [None] * len(items)
    for bucket in buckets:
        for i, features in zip(bucket, encode([items[i] for i in bucket]).unpad()):
            results[i] = features
    return results


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
