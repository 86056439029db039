"""TextEncoder deployment: batches strings through a BERT-family encoder."""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.batcher import batched
from deployments.replica import ModelReplica
from model.bundle import Bundle
from model.text_encoder import TextEncoder


# Defaults equal serve_config.yaml's TextEncoder entry (tests/test_cluster_manifests.py checks).
BATCHING = {"max_batch_size": 16, "batch_wait_timeout_s": 0.0}


@serve.deployment(name="TextEncoder", ray_actor_options={"num_cpus": 0.4}, max_ongoing_requests=32,
                  max_queued_requests=64, user_config=BATCHING)
class TextEncoderDeployment(ModelReplica):
    batched_method = "encode"

    def __init__(self, bundle_path: str):
        super().__init__("TextEncoder")
        bundle = Bundle.load(bundle_path)
        self.encoder = TextEncoder(bundle.resolve(bundle.text_encoder), bundle.text_max_length, self.device)

    def _encode_batch(self, texts: list[str], explain: list[bool]) -> list[dict]:
        self.stats.record(len(texts))
        tokenized = self.encoder.tokenize_each(texts)
        hidden = self.encoder.encode_each(texts, tokenized)
        results = []
        for features, ids, truncated, wanted in zip(hidden, tokenized.ids, tokenized.truncated, explain):
            result = {"hidden": features, "truncated": truncated}
            if wanted:  # the token strings label the attention map, nothing else needs them
                result["tokens"] = self.encoder.tokenizer.convert_ids_to_tokens(ids)
            results.append(result)
        return results

    @batched(**BATCHING)
    async def encode(self, texts: list[str], explain: list[bool]) -> list[dict]:
        # The forward pass runs in a thread so the replica's event loop keeps
        # accepting requests (and forming the next batch) meanwhile.
        return await asyncio.to_thread(self._encode_batch, texts, explain)

    def probe(self) -> None:
        out = self.encoder.encode(["health probe"])
        if not torch.isfinite(out.hidden).all():
            raise RuntimeError("text encoder produced non-finite output on the health probe")
