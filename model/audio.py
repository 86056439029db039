"""Decoding audio (uploads and dataset files alike) into a mono float waveform at the model's rate.

Serving, batch jobs, training and manifest validation all read audio through
``decode_audio``: one decoder, so what a model is trained on is decoded exactly as
what it is later asked about (same containers, down-mix, clipping and resampler).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import sys
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from torchaudio.transforms import Resample

from model.errors import (
    AudioDecodeError,
    AudioEmptyError,
    AudioFormatError,
    AudioNonFiniteError,
    AudioTooLargeError,
    AudioTooLongError,
    AudioTooShortError,
)


# Containers we accept. libsndfile parses two dozen more (AIFF, VOC, PAF, SD2, ...);
# parsers nobody needs are attack surface, so the leading bytes are sniffed before
# libsndfile sees the data, and the format it reports is checked again after.
ALLOWED_FORMATS = frozenset({"WAV", "WAVEX", "FLAC", "OGG", "MP3"})

# Sample rates we accept from clients. Resampling between two rates costs time and
# memory in proportion to rate / gcd(rate, target), so an odd rate (a large prime
# factor) can cost minutes of CPU and stall a replica. These common rates, up to the
# 176.4 and 192 kHz of studio recorders, share large factors with one another and
# resample cheaply (the kernel per rate pair is built once: ``_resampler``).
STANDARD_SAMPLE_RATES = frozenset({8_000, 11_025, 12_000, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000,
                                   88_200, 96_000, 176_400, 192_000})

# Float WAV/FLAC samples far outside full scale are not audio; they are also large
# enough to overflow float32 statistics in the feature extractor. Clip to this peak.
MAX_ABS_SAMPLE = 1.0


@dataclass(frozen=True)
class AudioLimits:
    """What ``decode_audio`` accepts. The defaults are the documented service defaults."""

    max_bytes: int = 10 * 1024 * 1024
    max_seconds: float = 30.0
    # Shorter clips are refused: a Wav2Vec2 feature encoder needs at least its
    # receptive field (``AudioEncoderFacts.min_seconds``), and one too-short clip
    # would fail the whole batch it is grouped into.
    min_seconds: float = 0.1
    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    sample_rates: frozenset[int] | None = STANDARD_SAMPLE_RATES  # None: any rate in the range
    max_channels: int = 2
    # Serving refuses audio longer than max_seconds (the client must know); training
    # cuts it there instead, because its limit bounds the cost, not what is allowed.
    cut_long: bool = False

    @classmethod
    def for_files(cls, max_seconds: float | None = None) -> "AudioLimits":
        """Limits for local dataset files (training and manifest validation).

        The containers, checks and conversion are the serving ones; sizes, rates and
        channel counts are whatever the dataset has, and audio longer than
        ``max_seconds`` (None: no cap) is cut, not refused.
        """
        return cls(max_bytes=sys.maxsize, max_seconds=math.inf if max_seconds is None else max_seconds,
                   min_seconds=0.0, min_sample_rate=1, max_sample_rate=sys.maxsize, sample_rates=None,
                   max_channels=sys.maxsize, cut_long=True)


def _looks_allowed(data: bytes) -> bool:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return True
    if data[:4] in (b"fLaC", b"OggS") or data[:3] == b"ID3":
        return True
    # A bare MPEG audio frame: 11 sync bits set.
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0


Source = bytes | str | os.PathLike  # the file's bytes, or its path (read lazily)


def _open(source: Source) -> sf.SoundFile:
    if isinstance(source, bytes):
        lead, file = source[:12], io.BytesIO(source)
    else:
        file = os.fspath(source)
        try:
            with open(file, "rb") as handle:
                lead = handle.read(12)
        except OSError as exc:
            raise AudioDecodeError(f"could not open the audio file: {exc.strerror or exc}") from None
    if not _looks_allowed(lead):
        raise AudioDecodeError("not a WAV, FLAC, OGG or MP3 file")
    try:
        return sf.SoundFile(file)
    except Exception as exc:  # libsndfile raises several types for garbage input
        raise AudioDecodeError(f"could not read an audio header: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    """libsndfile's message without the Python object repr it embeds."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r"Error opening <[^>]*>: ", "", text)[:200]


def _check_header(handle: sf.SoundFile, limits: AudioLimits, frames: int) -> None:
    if handle.format not in ALLOWED_FORMATS:
        raise AudioFormatError(f"audio container {handle.format} is not accepted; send WAV, FLAC, OGG or MP3")
    if not limits.min_sample_rate <= handle.samplerate <= limits.max_sample_rate:
        raise AudioFormatError(
            f"sample rate {handle.samplerate} Hz is outside "
            f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )
    if limits.sample_rates is not None and handle.samplerate not in limits.sample_rates:
        raise AudioFormatError(
            f"sample rate {handle.samplerate} Hz is not accepted; use one of "
            f"{', '.join(str(r) for r in sorted(limits.sample_rates))} Hz"
        )
    if not 1 <= handle.channels <= limits.max_channels:
        raise AudioFormatError(f"{handle.channels} channels; at most {limits.max_channels} are allowed")
    # Some formats (MP3, OGG) only estimate frames; the decoded length is capped below anyway.
    if not limits.cut_long and frames > 0 and frames / handle.samplerate > limits.max_seconds:
        raise AudioTooLongError(
            f"audio is {frames / handle.samplerate:.1f} s; the limit is {limits.max_seconds:g} s"
        )


def decode_audio(source: Source, target_rate: int, limits: AudioLimits = AudioLimits(),
                 start: float | None = None, end: float | None = None) -> torch.Tensor:
    """Decode WAV/FLAC/OGG/MP3 (bytes or a file path) to a 1-D float32 mono tensor at ``target_rate``.

    ``start``/``end`` (seconds) select a segment; the limits apply to it. The header
    (container, sample rate, channels, duration) is checked against ``limits`` before
    any sample is decoded, so a small compressed file that claims hours of audio is
    refused without decoding it. Decoding then reads at most ``max_seconds`` worth of
    frames (plus one), so a header that lies about its length cannot make the
    decoder allocate more than the limit allows.
    """
    size = len(source) if isinstance(source, bytes) else _file_size(source)
    if not size:
        raise AudioEmptyError("the audio file is empty")
    if size > limits.max_bytes:
        raise AudioTooLargeError(f"audio is {size} bytes; the limit is {limits.max_bytes}")
    with _open(source) as handle:
        rate = handle.samplerate
        total = handle.frames if handle.frames > 0 else None  # None: the header does not say
        first = int(round((start or 0.0) * rate))
        stop = total if end is None else int(round(end * rate))
        if stop is not None and total is not None:
            stop = min(stop, total)
        _check_header(handle, limits, stop - first if stop is not None else 0)
        # Without an end, read to the end: a header's frame count may be an estimate.
        wanted = -1 if end is None else max(stop - first, 0)
        max_frames = int(limits.max_seconds * rate) if math.isfinite(limits.max_seconds) else None
        if max_frames is not None:
            wanted = max_frames + 1 if wanted < 0 else min(wanted, max_frames + 1)
        try:
            if first:
                handle.seek(first)
            samples = handle.read(frames=wanted, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioDecodeError(f"could not decode the audio: {_short(exc)}") from None
    if samples.shape[0] == 0:
        raise AudioEmptyError("the audio has no samples")
    if max_frames is not None and samples.shape[0] > max_frames:
        if not limits.cut_long:
            raise AudioTooLongError(f"audio is longer than the limit of {limits.max_seconds:g} s")
        samples = samples[:max_frames]
    if samples.shape[0] < limits.min_seconds * rate:
        raise AudioTooShortError(
            f"audio is {samples.shape[0] / rate:.3f} s; at least {limits.min_seconds:g} s is needed"
        )
    if not np.isfinite(samples).all():
        raise AudioNonFiniteError("the audio contains NaN or infinite samples")
    mono = torch.from_numpy(np.clip(downmix(samples), -MAX_ABS_SAMPLE, MAX_ABS_SAMPLE))
    return resample(mono, rate, target_rate).contiguous()


def audio_duration(source: Source) -> float:
    """Seconds of audio the header announces (no samples decoded); for ordering work by length."""
    with _open(source) as handle:
        return handle.frames / handle.samplerate


def _file_size(path: str | os.PathLike) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise AudioDecodeError(f"could not open the audio file: {exc.strerror or exc}") from None


def downmix(samples: np.ndarray) -> np.ndarray:
    """[frames, channels] to mono [frames]: the channel mean (no copy-and-average for mono)."""
    return samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.functional.resample`` on float32 audio, with the kernel cached per rate pair."""
    if orig_freq == new_freq:
        return waveform
    return _resampler(orig_freq, new_freq)(waveform)


@functools.lru_cache(maxsize=32)
def _resampler(orig_freq: int, new_freq: int) -> Resample:
    # torchaudio.functional.resample rebuilds its kernel on every call, which costs far
    # more than applying it to a clip of a few seconds; the kernel only depends on the rates.
    return Resample(orig_freq=orig_freq, new_freq=new_freq, dtype=torch.float32)


def encode_wav(waveform: np.ndarray | torch.Tensor, rate: int) -> bytes:
    """Write a mono waveform as 16-bit PCM WAV bytes (for clients, tests and the UI)."""
    buf = io.BytesIO()
    array = waveform.numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    sf.write(buf, array, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
