"""AudioEncoder deployment: batches decoded waveforms through a Wav2Vec2-family encoder."""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from deployments.batching import batched
from deployments.runtime import ModelReplica
from model.audio_encoder import AudioEncoder
from model.bundle import Bundle

# Start a new sub-batch when the longest clip would be this much longer than the
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


@serve.deployment(name="AudioEncoder", ray_actor_options={"num_cpus": 0.5})
class AudioEncoderDeployment(ModelReplica):
    batched_method = "encode"

    def __init__(self, bundle_path: str):
        super().__init__("AudioEncoder")
        bundle = Bundle.load(bundle_path)
        self.encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), self.device)

    def _encode_batch(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        self.stats.record(len(waveforms))
        results: list[torch.Tensor | None] = [None] * len(waveforms)
        for bucket in length_buckets([len(w) for w in waveforms]):
            encoded = self.encoder.encode([waveforms[i] for i in bucket]).unpad()
            for i, features in zip(bucket, encoded):
                results[i] = features
        return results

    @batched(max_batch_size=4)
    async def encode(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        return await asyncio.to_thread(self._encode_batch, waveforms)

    def probe(self) -> None:
        out = self.encoder.encode([torch.zeros(self.encoder.sampling_rate // 10)])
        if not torch.isfinite(out.hidden).all():
            raise RuntimeError("audio encoder produced non-finite output on the health probe")
