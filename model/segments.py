"""Cutting a long recording into windows, in pauses where it has them, and combining
the windows' predictions into one.

The splitter is energy-based: it computes the RMS energy of 20 ms frames and places each
cut at the quietest frame of the last ``search_seconds`` before the window's end. Speech
pauses between words and phrases are far quieter than speech, so where the recording has
a pause there, no word is cut in half; in continuous sound the cut still falls at its
quietest moment of that stretch. No model and no dependency beyond torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FRAME_SECONDS = 0.02


@dataclass(frozen=True)
class Window:
    start: int  # first sample
    end: int  # one past the last sample

    def seconds(self, rate: int) -> tuple[float, float]:
        return self.start / rate, self.end / rate


def split_on_silence(waveform: torch.Tensor, rate: int, window_seconds: float = 10.0,
                     search_seconds: float = 2.0, min_seconds: float = 0.5) -> list[Window]:
    """Consecutive windows that cover the 1-D ``waveform`` end to end, each at most
    ``window_seconds`` long (the last may be up to ``min_seconds`` longer rather than
    leave a tail too short to encode)."""
    n = int(waveform.shape[-1])
    window, search = int(window_seconds * rate), int(min(search_seconds, window_seconds / 2) * rate)
    frame = max(1, int(FRAME_SECONDS * rate))
    shortest = max(1, int(min_seconds * rate))
    if n <= window + shortest:
        return [Window(0, n)]
    usable = n - n % frame
    energy = waveform[:usable].float().reshape(-1, frame).pow(2).mean(dim=1)
    windows, start = [], 0
    while n - start > window + shortest:
        limit = start + window
        first, last = max((limit - search) // frame, (start + shortest) // frame + 1), limit // frame
        quietest = first + int(torch.argmin(energy[first:last])) if last > first else last
        cut = min(quietest * frame + frame // 2, limit)
        windows.append(Window(start, cut))
        start = cut
    windows.append(Window(start, n))
    return windows


def weighted_mean(values: list[float], durations: list[float]) -> float:
    """The windows' values, each weighted by its window's duration."""
    return sum(v * d for v, d in zip(values, durations)) / sum(durations)


def duration_weighted(predictions: list[dict], durations: list[float], labels: list[str]) -> dict:
    """One prediction for the whole recording: each label's score and the sentiment are the
    windows' values weighted by each window's duration; the label is the top score."""
    scores = {label: weighted_mean([p["scores"][label] for p in predictions], durations) for label in labels}
    sentiment = weighted_mean([p["sentiment"] for p in predictions], durations)
    return {"label": max(scores, key=scores.get), "scores": scores, "sentiment": sentiment}


def segment_entry(start: float, end: float, prediction: dict, transcript: str | None = None) -> dict:
    """One window of a recording answered in segments, as the API's ``segments`` list and the
    scoring job's ``segments`` column hold it: times in seconds, its prediction and, when the
    encoder transcribed it, what it heard."""
    entry = {"start": round(start, 3), "end": round(end, 3), "label": prediction["label"],
             "scores": prediction["scores"], "sentiment": prediction["sentiment"]}
    if transcript is not None:
        entry["transcript"] = transcript
    return entry


def joined_transcript(transcripts: list[str | None]) -> str | None:
    """The whole recording's transcript: the windows' in order (None when none transcribed)."""
    heard = [t for t in transcripts if t is not None]
    return " ".join(t for t in heard if t) if heard else None
