"""The Wav2Vec2-family audio encoder: waveforms in, frame-level hidden states out.

``AudioEncoderFacts`` gives what callers need to know about an encoder (its rate,
frame length, shortest encodable clip) from its config files alone, without weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor

from model.device import load_pretrained_model, pick_device
from model.encoded import EncodedBatch, encode_in_buckets


def receptive_field(conv_kernel, conv_stride) -> int:
    """Samples a Wav2Vec2 feature encoder needs to produce one frame."""
    size, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        size += (kernel - 1) * jump
        jump *= stride
    return size


@dataclass(frozen=True)
class AudioEncoderFacts:
    """An audio encoder's timing facts, read from its config and feature extractor (no weights)."""

    sampling_rate: int  # Hz the encoder expects
    frame_seconds: float  # audio time between two output frames
    receptive_field: int  # samples needed for one output frame

    @property
    def min_seconds(self) -> float:
        """The shortest clip the encoder can encode at all."""
        return self.receptive_field / self.sampling_rate

    @classmethod
    def from_config(cls, config, sampling_rate: int) -> "AudioEncoderFacts":
        return cls(sampling_rate=int(sampling_rate),
                   frame_seconds=math.prod(config.conv_stride) / int(sampling_rate),
                   receptive_field=receptive_field(config.conv_kernel, config.conv_stride))

    @classmethod
    def from_pretrained(cls, name_or_path: str) -> "AudioEncoderFacts":
        """From a hub id or checkpoint folder; reads only config.json and preprocessor_config.json."""
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path, trust_remote_code=False)
        return cls.from_config(config, extractor.sampling_rate)


class AudioEncoder:
    """Wraps any Wav2Vec2-family checkpoint (wav2vec2, HuBERT, WavLM), by id or folder."""

    def __init__(self, name_or_path: str, device: str | None = None):
        self.name_or_path = name_or_path
        self.device = pick_device(device)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(name_or_path, trust_remote_code=False)
        self.model = load_pretrained_model(name_or_path, self.device)
        # Checkpoints with group-norm feature encoders (e.g. wav2vec2-base) were trained
        # without attention masks; passing one changes their output. Those get no mask,
        # and callers keep padding small by batching similar lengths together.
        self.uses_attention_mask = getattr(self.model.config, "feat_extract_norm", "layer") == "layer"

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def facts(self) -> AudioEncoderFacts:
        return AudioEncoderFacts.from_config(self.model.config, self.sampling_rate)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def frame_count(self, num_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(torch.tensor(num_samples)))

    def _inputs(self, waveforms: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # Normalise each waveform on its own samples, then pad with zeros: normalising
        # after padding would let a long neighbour change a short item's statistics.
        values = [
            np.asarray(self.feature_extractor(w.numpy(), sampling_rate=self.sampling_rate)["input_values"][0])
            for w in waveforms
        ]
        longest = max(len(v) for v in values)
        # Page-locked on a GPU host, so the copy to the device is one asynchronous DMA.
        batch = torch.zeros(len(values), longest, pin_memory=self.device.type == "cuda")
        mask = torch.zeros(len(values), longest, dtype=torch.long)
        for i, v in enumerate(values):
            batch[i, : len(v)] = torch.from_numpy(v)
            mask[i, : len(v)] = 1
        return batch, mask

    def forward(self, waveforms: list[torch.Tensor]) -> EncodedBatch:
        inputs, sample_mask = self._inputs(waveforms)
        kwargs = {"attention_mask": sample_mask.to(self.device)} if self.uses_attention_mask else {}
        out = self.model(inputs.to(self.device, self.model.dtype, non_blocking=True), **kwargs)
        hidden = out.last_hidden_state.float()
        lengths = self.model._get_feat_extract_output_lengths(sample_mask.sum(dim=1))
        frames = torch.arange(hidden.shape[1])[None, :] < lengths.cpu()[:, None]
        return EncodedBatch(hidden=hidden, mask=frames.to(hidden.device))

    def encode_each(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-clip fp16 features [frames_i, D], in order; clips of similar length share a
        forward pass, so little of any batch is padding."""
        return encode_in_buckets(self.encode, waveforms, [len(w) for w in waveforms])

    @torch.inference_mode()
    def encode(self, waveforms: list[torch.Tensor]) -> EncodedBatch:
        return self.forward(waveforms)
