"""Decoding user audio into a mono float waveform at the model's sampling rate."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from model.errors import (
    AudioDecodeError,
    AudioEmptyError,
    AudioFormatError,
    AudioNonFiniteError,
    AudioTooLargeError,
    AudioTooLongError,
)


@dataclass(frozen=True)
class AudioLimits:
    """What ``decode_audio`` accepts. The defaults are the documented service defaults."""

    max_bytes: int = 10 * 1024 * 1024
    max_seconds: float = 30.0
    min_sample_rate: int = 8_000
    max_sample_rate: int = 48_000
    max_channels: int = 2


def _probe(data: bytes) -> sf._SoundFileInfo:
    try:
        return sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile raises several types for garbage input
        raise AudioDecodeError(f"could not read an audio header: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    """libsndfile's message without the Python object repr it embeds."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"Error opening <[^>]*>: ", "", text)[:200]


def decode_audio(data: bytes, target_rate: int, limits: AudioLimits = AudioLimits()) -> torch.Tensor:
    """Decode WAV/FLAC/OGG/MP3 bytes to a 1-D float32 mono tensor at ``target_rate``.

    The header is checked against ``limits`` before the samples are decoded, so a
    small compressed file that claims hours of audio is refused without decoding it.
    """
    if not data:
        raise AudioEmptyError("the audio file is empty")
    if len(data) > limits.max_bytes:
        raise AudioTooLargeError(f"audio is {len(data)} bytes; the limit is {limits.max_bytes}")
    info = _probe(data)
    if not limits.min_sample_rate <= info.samplerate <= limits.max_sample_rate:
        raise AudioFormatError(
            f"sample rate {info.samplerate} Hz is outside "
            f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )
    if not 1 <= info.channels <= limits.max_channels:
        raise AudioFormatError(f"{info.channels} channels; at most {limits.max_channels} are allowed")
    # Some formats (MP3, OGG) only estimate frames; the exact length is checked again below.
    if info.frames > 0 and info.frames / info.samplerate > limits.max_seconds:
        raise AudioTooLongError(
            f"audio is {info.frames / info.samplerate:.1f} s; the limit is {limits.max_seconds:g} s"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioDecodeError(f"could not decode the audio: {_short(exc)}") from None
    if samples.shape[0] == 0:
        raise AudioEmptyError("the audio has no samples")
    if samples.shape[0] / rate > limits.max_seconds:
        raise AudioTooLongError(
            f"audio is {samples.shape[0] / rate:.1f} s; the limit is {limits.max_seconds:g} s"
        )
    if not np.isfinite(samples).all():
        raise AudioNonFiniteError("the audio contains NaN or infinite samples")
    mono = torch.from_numpy(samples.mean(axis=1))
    if rate != target_rate:
        mono = AF.resample(mono, orig_freq=rate, new_freq=target_rate)
    return mono.contiguous()


def encode_wav(waveform: np.ndarray | torch.Tensor, rate: int) -> bytes:
    """Write a mono waveform as 16-bit PCM WAV bytes (for clients, tests and the UI)."""
    buf = io.BytesIO()
    array = waveform.numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    sf.write(buf, array, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
