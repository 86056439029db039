"""The long-recording splitter (model/segments.py): windows cover the recording, stay within
their length, and cut in pauses rather than through sound."""

from __future__ import annotations

import pytest
import torch

from model.segments import Window, duration_weighted, split_on_silence

RATE = 16_000


def speech_like(spans: list[tuple[float, float]], seconds: float) -> torch.Tensor:
    """Tone bursts ('words') over the given (start, end) seconds, faint noise elsewhere."""
    t = torch.arange(int(seconds * RATE)) / RATE
    wave = 0.001 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(0))
    for start, end in spans:
        inside = (t >= start) & (t < end)
        wave[inside] += 0.3 * torch.sin(2 * torch.pi * 220 * t[inside])
    return wave


def test_windows_cover_the_recording_and_respect_the_length():
    wave = speech_like([(i * 1.0, i * 1.0 + 0.7) for i in range(95)], 95.0)
    windows = split_on_silence(wave, RATE, window_seconds=10.0)
    assert windows[0].start == 0 and windows[-1].end == wave.shape[0]
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert all(w.end - w.start <= 10 * RATE for w in windows[:-1])
    # Cuts come at most search_seconds (2 s) early: between 95/10 and 95/8 windows.
    assert 10 <= len(windows) <= 12, [w.seconds(RATE) for w in windows]


def test_cuts_fall_in_pauses_not_through_words():
    # 'Words' of 0.7 s every 1 s: 0.3 s pauses. The window limits (10 s, ...) fall in pauses
    # only by luck, so shift the words by 0.5 s: every limit then falls mid-word.
    words = [(0.5 + i * 1.0, 0.5 + i * 1.0 + 0.7) for i in range(60)]
    wave = speech_like(words, 61.0)
    windows = split_on_silence(wave, RATE, window_seconds=10.0)
    for w in windows[:-1]:
        cut = w.end / RATE
        assert not any(start <= cut < end for start, end in words), f"cut at {cut:.2f} s is inside a word"


def test_continuous_sound_is_still_cut_within_the_window():
    t = torch.arange(25 * RATE) / RATE
    windows = split_on_silence(0.3 * torch.sin(2 * torch.pi * 220 * t), RATE, window_seconds=10.0)
    assert len(windows) == 3 and all(w.end - w.start <= 10 * RATE for w in windows[:-1])


def test_a_short_recording_is_one_window_and_a_short_tail_joins_the_last():
    assert split_on_silence(torch.zeros(5 * RATE), RATE) == [Window(0, 5 * RATE)]
    windows = split_on_silence(speech_like([], 10.3), RATE, window_seconds=10.0, min_seconds=0.5)
    assert windows == [Window(0, int(10.3 * RATE))]


def test_the_overall_prediction_is_the_duration_weighted_mean():
    a = {"scores": {"negative": 0.9, "positive": 0.1}, "sentiment": -2.0}
    b = {"scores": {"negative": 0.2, "positive": 0.8}, "sentiment": 1.0}
    overall = duration_weighted([a, b], [10.0, 30.0], ["negative", "positive"])
    assert overall["scores"]["negative"] == pytest.approx((0.9 * 10 + 0.2 * 30) / 40)
    assert overall["sentiment"] == pytest.approx((-2.0 * 10 + 1.0 * 30) / 40)
    assert overall["label"] == "positive"
