"""FusionHead deployment: batches encoder features through the cross-modal fusion head."""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.batcher import batched
from deployments.replica import ModelReplica
from model.bundle import Bundle
from model.pipeline import FusionItem, fuse


# Defaults equal serve_config.yaml's FusionHead entry (tests/test_cluster_manifests.py checks).
BATCHING = {"max_batch_size": 32, "batch_wait_timeout_s": 0.0}


@serve.deployment(name="FusionHead", ray_actor_options={"num_cpus": 0.05}, max_ongoing_requests=64,
                  max_queued_requests=128, user_config=BATCHING, max_surge_percent=25)
class FusionHeadDeployment(ModelReplica):
    batched_method = "fuse"

    def __init__(self, bundle_path: str):
        super().__init__("FusionHead")
        self.bundle = Bundle.load(bundle_path)
        self.head = self.bundle.load_fusion().to(self.device)

    def _fuse_batch(self, items: list[FusionItem], explain: list[bool]) -> list[dict]:
        self.stats.record(len(items))
        results = fuse(self.head, self.bundle, items, explain=any(explain))
        for result, wanted in zip(results, explain):
            if not wanted:
                result.pop("attention", None)
        return results

    @batched(**BATCHING)
    async def fuse(self, text: list, audio: list, explain: list[bool]) -> list[dict]:
        items = [FusionItem(text=t, audio=a) for t, a in zip(text, audio)]
        return await asyncio.to_thread(self._fuse_batch, items, explain)

    def probe(self) -> None:
        cfg = self.head.config
        [result] = fuse(self.head, self.bundle, [FusionItem(torch.zeros(2, cfg.text_dim), torch.zeros(3, cfg.audio_dim))])
        if not all(map(lambda p: p == p, result["scores"].values())):
            raise RuntimeError("fusion head produced NaN on the health probe")
