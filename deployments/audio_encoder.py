"""AudioEncoder deployment: batches decoded waveforms through a Wav2Vec2-family encoder (features, and
greedy transcripts where the checkpoint has a CTC head)."""

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
                  max_queued_requests=32, user_config=BATCHING, max_surge_percent=25)
class AudioEncoderDeployment(ModelReplica):
    batched_method = "encode"

    def __init__(self, bundle_path: str):
        super().__init__("AudioEncoder")
        bundle = Bundle.load(bundle_path)
        self.encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), self.device, transcribe=bundle.transcribe)

    def _encode_batch(self, waveforms: list[torch.Tensor], transcribe: list[bool]) -> list[dict]:
        self.stats.record(len(waveforms))
        features, transcripts = self.encoder.encode_each_with_transcripts(waveforms, transcribe)
        return [{"hidden": f, "transcript": t} for f, t in zip(features, transcripts)]

    @batched(**BATCHING)
    async def encode(self, waveforms: list[torch.Tensor], transcribe: list[bool]) -> list[dict]:
        # ``transcript`` is None unless asked for and the checkpoint can transcribe; it comes
        # from the same forward pass as ``hidden``.
        return await asyncio.to_thread(self._encode_batch, waveforms, transcribe)

    def probe(self) -> None:
        out = self.encoder.encode([torch.zeros(self.encoder.sampling_rate // 10)])
        if not torch.isfinite(out.hidden).all():
            raise RuntimeError("audio encoder produced non-finite output on the health probe")
