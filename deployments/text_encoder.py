"""TextEncoder deployment: batches strings through a BERT-family encoder.

It also fuses text-only requests, in the same batch, with its own copy of the fusion
head (a few MB): a request with nothing to combine then makes one Serve hop instead of
two, and that hop is most of the serving path's CPU per request (docs/performance.md).
Requests with audio are fused by FusionHead, which receives both encoders' features.
"""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.batcher import batched
from deployments.replica import ModelReplica
from model.bundle import Bundle
from model.pipeline import FusionItem, fuse
from model.text_encoder import TextEncoder


# Defaults equal serve_config.yaml's TextEncoder entry (tests/test_cluster_manifests.py checks).
BATCHING = {"max_batch_size": 16, "batch_wait_timeout_s": 0.0}


@serve.deployment(name="TextEncoder", ray_actor_options={"num_cpus": 0.4}, max_ongoing_requests=32,
                  max_queued_requests=64, user_config=BATCHING, max_surge_percent=25)
class TextEncoderDeployment(ModelReplica):
    batched_method = "encode"

    def __init__(self, bundle_path: str):
        super().__init__("TextEncoder")
        self.bundle = Bundle.load(bundle_path)
        self.encoder = TextEncoder(self.bundle.resolve(self.bundle.text_encoder), self.bundle.text_max_length,
                                   self.device)
        self.head = self.bundle.load_fusion().to(self.device)

    def _encode_batch(self, texts: list[str], explain: list[bool], fuse_here: list[bool]) -> list[dict]:
        self.stats.record(len(texts))
        tokenized = self.encoder.tokenize_each(texts)
        hidden = self.encoder.encode_each(texts, tokenized)
        results = []
        for features, ids, truncated, wanted, fused_here in zip(hidden, tokenized.ids, tokenized.truncated,
                                                               explain, fuse_here):
            # Features leave the replica only for FusionHead; a request fused here needs none.
            result = {"truncated": truncated} if fused_here else {"hidden": features, "truncated": truncated}
            if wanted:  # the token strings label the attention map, nothing else needs them
                result["tokens"] = self.encoder.tokenizer.convert_ids_to_tokens(ids)
            results.append(result)
        here = [i for i, wanted in enumerate(fuse_here) if wanted]
        if here:
            for i, fused in zip(here, fuse(self.head, self.bundle, [FusionItem(text=hidden[i]) for i in here])):
                results[i]["fused"] = fused
        return results

    @batched(**BATCHING)
    async def encode(self, texts: list[str], explain: list[bool], fuse_here: list[bool]) -> list[dict]:
        """Per text: its features (``hidden``), or with ``fuse_here`` the fused prediction
        (``fused``) in their place; ``truncated``; the token strings when ``explain``."""
        # The forward pass runs in a thread so the replica's event loop keeps
        # accepting requests (and forming the next batch) meanwhile.
        return await asyncio.to_thread(self._encode_batch, texts, explain, fuse_here)

    def probe(self) -> None:
        out = self.encoder.encode(["health probe"])
        if not torch.isfinite(out.hidden).all():
            raise RuntimeError("text encoder produced non-finite output on the health probe")
        [result] = fuse(self.head, self.bundle, [FusionItem(text=torch.zeros(2, self.head.config.text_dim))])
        if not all(value == value for value in result["scores"].values()):
            raise RuntimeError("the text encoder's fusion head produced NaN on the health probe")
