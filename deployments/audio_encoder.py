"""AudioEncoder deployment: batches decoded waveforms through a Wav2Vec2-family encoder."""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.batcher import batched
from deployments.replica import ModelReplica
from model.audio_encoder import AudioEncoder
from model.bundle import Bundle


# Defaults equal serve_config.yaml's AudioEncoder entry (tests/test_cluster_manifests.py checks).
BATCHING = {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}


@serve.deployment(name="AudioEncoder", ray_actor_options={"num_cpus": 0.35}, max_ongoing_requests=16,
                  max_queued_requests=32, user_config=BATCHING)
class AudioEncoderDeployment(ModelReplica):
    batched_method = "encode"

    def __init__(self, bundle_path: str):
        super().__init__("AudioEncoder")
        bundle = Bundle.load(bundle_path)
        self.encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), self.device)

    def _encode_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        self.stats.record(len(waveforms))
        return self.encoder.encode_each(waveforms)

    @batched(**BATCHING)
    async def encode(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        return await asyncio.to_thread(self._encode_batch, waveforms)

    def probe(self) -> None:
        out = self.encoder.encode([torch.zeros(self.encoder.sampling_rate // 10)])
        if not torch.isfinite(out.hidden).all():
            raise RuntimeError("audio encoder produced non-finite output on the health probe")
