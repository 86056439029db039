"""The BERT-family text encoder: texts in, token-level hidden states out."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from model.device import load_pretrained_model, pick_device
from model.encoded import EncodedBatch, encode_in_buckets


class TextEncoder:
    """Wraps any BERT-family checkpoint, by hub id or local folder.

    Only safetensors weights are loaded and remote code is never trusted.
    """

    def __init__(self, name_or_path: str, max_length: int = 128, device: str | None = None):
        self.name_or_path = name_or_path
        self.max_length = max_length
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
        self.model = load_pretrained_model(name_or_path, self.device)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: list[str]):
        # Pad to the longest text in the batch, never to max_length: padding is wasted compute.
        return self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False)["input_ids"])

    def forward(self, texts: list[str]) -> EncodedBatch:
        """Encode with gradients when the model is in training mode (fine-tuning)."""
        batch = self.tokenize(texts).to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         **({"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}))
        return EncodedBatch(hidden=out.last_hidden_state.float(), mask=batch["attention_mask"].bool())

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> EncodedBatch:
        return self.forward(texts)

    def encode_each(self, texts: list[str]) -> list[torch.Tensor]:
        """Per-text fp16 features [T_i, D], in order. On a CPU, texts of similar token
        length share a forward pass, because its cost grows with the padded tokens. On a
        GPU a short batch costs about the same whatever its length, so all texts go in
        one pass."""
        lengths = None
        if self.device.type == "cpu":
            lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        return encode_in_buckets(self.encode, texts, lengths)
