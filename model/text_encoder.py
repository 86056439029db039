"""The BERT-family text encoder: texts in, token-level hidden states out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoTokenizer

from model.device import load_pretrained_model, pick_device
from model.encoded import EncodedBatch, encode_in_buckets


@dataclass
class TokenizedTexts:
    """Token ids per text, cut at the encoder's limit, and which texts were cut."""

    ids: list[list[int]]
    truncated: list[bool]


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

    def tokenize_each(self, texts: list[str]) -> TokenizedTexts:
        """One tokenizer call for the whole batch. Asking for one token past the limit
        tells a text that fits from one that does not; only the texts that do not fit
        are tokenized again, with the tokenizer's own truncation (special tokens kept)."""
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length + 1)["input_ids"]
        truncated = [len(row) > self.max_length for row in ids]
        long = [i for i, cut in enumerate(truncated) if cut]
        if long:
            cut_ids = self.tokenizer([texts[i] for i in long], truncation=True, max_length=self.max_length)["input_ids"]
            for i, row in zip(long, cut_ids):
                ids[i] = row
        return TokenizedTexts(ids=ids, truncated=truncated)

    @torch.inference_mode()
    def encode_ids(self, ids: list[list[int]]) -> EncodedBatch:
        """Encode texts already tokenized by ``tokenize_each``."""
        batch = self.tokenizer.pad({"input_ids": ids}, padding="longest", return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return EncodedBatch(hidden=out.last_hidden_state.float(), mask=batch["attention_mask"].bool())

    def encode_each(self, texts: list[str], tokenized: TokenizedTexts | None = None) -> list[torch.Tensor]:
        """Per-text fp16 features [T_i, D], in order. On a CPU, texts of similar token
        length share a forward pass, because its cost grows with the padded tokens. On a
        GPU a short batch costs about the same whatever its length, so all texts go in
        one pass. Pass ``tokenized`` when the caller already tokenized the batch."""
        tokenized = tokenized or self.tokenize_each(texts)
        lengths = [len(row) for row in tokenized.ids] if self.device.type == "cpu" else None
        return encode_in_buckets(self.encode_ids, tokenized.ids, lengths)
