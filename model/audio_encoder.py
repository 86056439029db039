"""The Wav2Vec2-family audio encoder: waveforms in, frame-level hidden states (and, with a CTC head, words) out.

``AudioEncoderFacts`` gives what callers need to know about an encoder (its rate,
frame length, shortest encodable clip, whether it can transcribe) from its config
and tokenizer files alone, without weights.

A checkpoint with a CTC head (``Wav2Vec2ForCTC`` and family) and a tokenizer saved
beside it is loaded once, as that CTC model: its base model's last hidden state is
the features, and its ``lm_head`` reads greedy characters off the same tensor, so a
transcript costs no second model and no second pass.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

from model.device import load_pretrained_model, pick_device
from model.encoded import EncodedBatch, length_buckets

logger = logging.getLogger(__name__)


def receptive_field(conv_kernel, conv_stride) -> int:
    """Samples a Wav2Vec2 feature encoder needs to produce one frame."""
    size, jump = 1, 1
    for kernel, stride in zip(conv_kernel, conv_stride):
        size += (kernel - 1) * jump
        jump *= stride
    return size


def has_ctc_head(config) -> bool:
    """Whether the checkpoint was saved with a CTC head (``Wav2Vec2ForCTC``, ``HubertForCTC``, ...)."""
    return any(name.endswith("ForCTC") for name in (getattr(config, "architectures", None) or []))


def ctc_tokenizer(name_or_path: str, config=None):
    """The tokenizer that maps the CTC head's ids to characters, or None when the checkpoint
    has no CTC head or no tokenizer beside it (then it cannot transcribe)."""
    config = config or AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
    if not has_ctc_head(config):
        return None
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # what transformers raises for absent files
        logger.warning("%s has a CTC head but no loadable tokenizer (%s): no transcripts", name_or_path,
                       type(exc).__name__)
        return None


@dataclass(frozen=True)
class AudioEncoderFacts:
    """An audio encoder's timing facts, read from its config and feature extractor (no weights)."""

    sampling_rate: int  # Hz the encoder expects
    frame_seconds: float  # audio time between two output frames
    receptive_field: int  # samples needed for one output frame
    can_transcribe: bool = False  # a CTC head and its tokenizer: the encoder returns greedy transcripts

    @property
    def min_seconds(self) -> float:
        """The shortest clip the encoder can encode at all."""
        return self.receptive_field / self.sampling_rate

    @classmethod
    def from_config(cls, config, sampling_rate: int, can_transcribe: bool = False) -> "AudioEncoderFacts":
        return cls(sampling_rate=int(sampling_rate),
                   frame_seconds=math.prod(config.conv_stride) / int(sampling_rate),
                   receptive_field=receptive_field(config.conv_kernel, config.conv_stride),
                   can_transcribe=can_transcribe)

    @classmethod
    def from_pretrained(cls, name_or_path: str, transcribe: bool = True) -> "AudioEncoderFacts":
        """From a hub id or checkpoint folder; reads only config.json, preprocessor_config.json and,
        for a CTC checkpoint when ``transcribe``, its tokenizer files."""
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        extractor = AutoFeatureExtractor.from_pretrained(name_or_path, trust_remote_code=False)
        can = transcribe and ctc_tokenizer(name_or_path, config) is not None
        return cls.from_config(config, extractor.sampling_rate, can)


class AudioEncoder:
    """Wraps any Wav2Vec2-family checkpoint (wav2vec2, HuBERT, WavLM), by id or folder.

    ``model`` is always the base model (its output is the features); ``ctc_head`` and
    ``tokenizer`` are set when the checkpoint can transcribe and ``transcribe`` is on.
    """

    def __init__(self, name_or_path: str, device: str | None = None, transcribe: bool = True):
        self.name_or_path = name_or_path
        self.device = pick_device(device)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(name_or_path, trust_remote_code=False)
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)
        self.tokenizer = ctc_tokenizer(name_or_path, config) if transcribe else None
        self.ctc_head: torch.nn.Module | None = None
        if self.tokenizer is not None:
            # Loaded once, as the CTC model; its base model's output equals what AutoModel
            # would load from the same checkpoint, so features do not depend on transcribing.
            ctc = load_pretrained_model(name_or_path, self.device, AutoModelForCTC)
            self.model, self.ctc_head = ctc.base_model, ctc.lm_head
            # The id the head was trained to emit between characters (Wav2Vec2ForCTC's loss uses it).
            self.blank_id = config.pad_token_id if config.pad_token_id is not None else self.tokenizer.pad_token_id
        else:
            self.model = load_pretrained_model(name_or_path, self.device)
        # Checkpoints with group-norm feature encoders (e.g. wav2vec2-base) were trained
        # without attention masks; passing one changes their output. Those get no mask,
        # and callers keep padding small by batching similar lengths together.
        self.uses_attention_mask = getattr(self.model.config, "feat_extract_norm", "layer") == "layer"

    @property
    def sampling_rate(self) -> int:
        return int(self.feature_extractor.sampling_rate)

    @property
    def can_transcribe(self) -> bool:
        return self.ctc_head is not None

    @property
    def facts(self) -> AudioEncoderFacts:
        return AudioEncoderFacts.from_config(self.model.config, self.sampling_rate, self.can_transcribe)

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
        return self._run(waveforms, transcribe=False)[0]

    def _run(self, waveforms: list[torch.Tensor], transcribe: bool) -> tuple[EncodedBatch, list[str] | None]:
        """One forward pass of the base model: the features and, with ``transcribe``, each clip's transcript."""
        inputs, sample_mask = self._inputs(waveforms)
        kwargs = {"attention_mask": sample_mask.to(self.device)} if self.uses_attention_mask else {}
        out = self.model(inputs.to(self.device, self.model.dtype, non_blocking=True), **kwargs)
        hidden = out.last_hidden_state
        lengths = self.model._get_feat_extract_output_lengths(sample_mask.sum(dim=1))
        frames = torch.arange(hidden.shape[1])[None, :] < lengths.cpu()[:, None]
        transcripts = self._greedy_ctc(hidden, frames) if transcribe and self.can_transcribe else None
        return EncodedBatch(hidden=hidden.float(), mask=frames.to(hidden.device)), transcripts

    def _greedy_ctc(self, hidden: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """Greedy CTC over each clip's real frames: the padded frames of a shorter clip would
        otherwise add characters. Repeats collapse first, then blanks drop (the other order
        would read "good" as "god"); lowercased, whitespace normalised."""
        ids = self.ctc_head(hidden).argmax(dim=-1).cpu()
        sequences = []
        for row, n in zip(ids, frames.sum(dim=1).tolist()):
            row = torch.unique_consecutive(row[: int(n)])
            sequences.append(row[row != self.blank_id].tolist())
        texts = self.tokenizer.batch_decode(sequences, group_tokens=False, skip_special_tokens=True)
        return [" ".join(text.lower().split()) for text in texts]

    def encode_each(self, waveforms: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per-clip fp16 features [frames_i, D], in order; clips of similar length share a
        forward pass, so little of any batch is padding."""
        return self.encode_each_with_transcripts(waveforms, [False] * len(waveforms))[0]

    @torch.inference_mode()
    def encode_each_with_transcripts(self, waveforms: list[torch.Tensor], wanted: list[bool] | None = None
                                     ) -> tuple[list[torch.Tensor], list[str | None]]:
        """``encode_each`` plus, for the clips in ``wanted`` (default: all), the greedy transcript from
        the same forward pass; None where not wanted or when the checkpoint cannot transcribe."""
        wanted = [True] * len(waveforms) if wanted is None else wanted
        features: list[torch.Tensor | None] = [None] * len(waveforms)
        transcripts: list[str | None] = [None] * len(waveforms)
        for bucket in length_buckets([len(w) for w in waveforms]):
            batch, texts = self._run([waveforms[i] for i in bucket], any(wanted[i] for i in bucket))
            for j, (i, feat) in enumerate(zip(bucket, batch.unpad())):
                features[i] = feat
                if texts is not None and wanted[i]:
                    transcripts[i] = texts[j]
        return features, transcripts

    @torch.inference_mode()
    def encode(self, waveforms: list[torch.Tensor]) -> EncodedBatch:
        return self.forward(waveforms)

    @torch.inference_mode()
    def encode_with_transcripts(self, waveforms: list[torch.Tensor]) -> tuple[EncodedBatch, list[str] | None]:
        """``encode`` (one forward pass, one batch) plus each clip's transcript; None when it cannot transcribe."""
        return self._run(waveforms, transcribe=True)
