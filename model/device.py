"""Choosing the torch device and dtype for an encoder."""

from __future__ import annotations

import torch


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` wins when given; otherwise CUDA if visible, else the CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """Half precision on GPUs (encoders are numerically safe in fp16); fp32 on CPU,
    where fp16 matmuls are slower, not faster."""
    return torch.float16 if device.type == "cuda" else torch.float32


def load_pretrained_model(name_or_path: str, device: torch.device, auto_class=None):
    """An encoder by hub id or folder: safetensors only, never remote code, in eval mode.

    ``auto_class`` (default ``AutoModel``) picks the head, e.g. ``AutoModelForCTC``."""
    from transformers import AutoModel

    model = (auto_class or AutoModel).from_pretrained(
        name_or_path, trust_remote_code=False, use_safetensors=True, dtype=inference_dtype(device)
    )
    return model.to(device).eval()
