"""End to end: a tiny generated dataset → ``python -m model.training`` → a bundle that serves.

Tiny random encoders (model.factory.save_tiny_bundle), 40 items whose text and
audio (sine tones) both give the label away, so a working pipeline must learn it.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.bundle import Bundle
from model.factory import save_tiny_bundle
from model.data.manifest import Item, save_manifest
from model.pipeline import SentimentPipeline
from model.training.cli import main

POSITIVE = ["a great film", "wonderful and moving", "brilliant acting", "a real delight", "superb story"]
NEGATIVE = ["a dull film", "boring and flat", "terrible acting", "a total mess", "awful story"]
RATE = 16_000


def tone(freq: float, seconds: float, rng) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    items = []
    for i in range(40):
        label = "positive" if i % 2 else "negative"
        wav = root / "wav" / f"{i}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        # Positive items are high tones, negative ones low: the audio branch can learn it.
        sf.write(wav, tone(660.0 if label == "positive" else 165.0, 0.4 + 0.02 * (i % 5), rng), RATE)
        split = "train" if i < 24 else "valid" if i < 32 else "test"
        text = (POSITIVE if label == "positive" else NEGATIVE)[i % 5]
        # A third of the train items (both labels) are text-only: they train the "missing audio" path.
        audio = None if split == "train" and i % 6 in (2, 5) else f"wav/{i}.wav"
        items.append(Item(f"u{i}", text, audio, split, label=label, score=1.5 if label == "positive" else -1.5))
    return save_manifest(items, root / "manifest.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    save_tiny_bundle(root / "base")
    manifest = make_dataset(root / "data")
    args = ["--manifest", str(manifest), "--bundle", str(root / "base"), "--out", str(root / "out"),
            "--cache-dir", str(root / "cache"), "--epochs", "12", "--lr", "3e-3", "--patience", "12",
            "--d-model", "32", "--n-heads", "2", "--finetune-audio-layers", "1", "--finetune-epochs", "1",
            "--seed", "3", "--no-progress"]
    assert main(args) == 0
    return root, args


def test_bundle_is_written_with_metrics_and_provenance(trained):
    root, _ = trained
    out = root / "out"
    bundle = Bundle.load(out)
    assert bundle.trained and bundle.labels == ["negative", "positive"]
    assert bundle.regression_trained  # the manifest has scores
    assert bundle.text_encoder == "text_encoder" and (out / "text_encoder" / "config.json").is_file()
    # The audio encoder was fine-tuned: its weights in the bundle differ from the base ones.
    assert bundle.audio_encoder == "audio_encoder"
    from safetensors.torch import load_file
    tuned = load_file(str(out / "audio_encoder" / "model.safetensors"))
    base = load_file(str(root / "base" / "audio_encoder" / "model.safetensors"))
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    test = bundle.metrics["test"]
    assert set(test) == {"fused", "text", "audio"}
    assert test["fused"]["n"] == 8 and "regression" in test["fused"]
    assert bundle.data["counts"] == {"train": 24, "valid": 8, "test": 8}
    assert bundle.data["with_audio"]["train"] == 16
    assert bundle.data["encoders"]["audio"]["fine_tuned_layers"] == 1
    assert len(bundle.data["manifest_sha256"]) == 64


def test_training_learns_the_labels(trained):
    root, _ = trained
    bundle = Bundle.load(root / "out")
    # Text and tone both reveal the label; a pipeline that trains at all gets the valid/test sets right.
    assert bundle.metrics["valid"]["fused"]["accuracy"] >= 0.875
    assert bundle.metrics["test"]["fused"]["accuracy"] >= 0.875
    history = json.loads((root / "out" / "report" / "report.json").read_text())["history"]["fusion"]
    assert history["train_loss"][-1] < history["train_loss"][0]


def test_report_files(trained):
    root, _ = trained
    report = root / "out" / "report"
    for name in ("report.md", "report.json", "training_curves.png", "confusion_test.png", "confusion_valid.png"):
        assert (report / name).is_file(), name
    assert (report / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report / "report.md").read_text()
    assert "| test | fused | 8 |" in text and "![training curves](training_curves.png)" in text


def test_pipeline_loads_and_predicts(trained):
    root, _ = trained
    pipeline = SentimentPipeline(Bundle.load(root / "out"))
    rng = np.random.default_rng(1)
    texts = ["a great film", "awful story", None]
    waves = [torch.from_numpy(tone(660.0, 0.5, rng)), None, torch.from_numpy(tone(165.0, 0.5, rng))]
    results = pipeline.predict(texts, waves)
    assert [r["label"] for r in results] == ["positive", "negative", "negative"]
    for r in results:
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert -3.0 <= r["sentiment"] <= 3.0
    assert set(results[0]["modalities"]) == {"fused", "text", "audio"}
    assert set(results[1]["modalities"]) == {"fused", "text"}


def test_feature_cache_is_reused(trained, capsys):
    root, args = trained
    cache = root / "cache"
    entries = sorted(p.name for p in cache.glob("*.safetensors"))
    assert any(n.startswith("text-") for n in entries) and any(n.startswith("audio-") for n in entries)
    stamps = {p: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    # Same data and encoders (no fine-tuning this time: the base audio encoder is a different key).
    rerun = [a for a in args if a not in ("--finetune-audio-layers", "--finetune-epochs", "1")]
    rerun[rerun.index("--out") + 1] = str(root / "out2")
    rerun[rerun.index("--epochs") + 1] = "1"
    assert main(rerun) == 0
    after = {p: p.stat().st_mtime_ns for p in cache.glob("*.safetensors")}
    text_entries = [p for p in stamps if p.name.startswith("text-")]
    assert all(after[p] == stamps[p] for p in text_entries)  # text features were read back, not rewritten
    # The un-tuned audio encoder is a different key: one new audio entry per evaluated set, nothing else.
    new = set(after) - set(stamps)
    assert new and all(p.name.startswith("audio-") for p in new)
    assert len(new) == sum(1 for p in stamps if p.name.startswith("audio-"))


def test_invalid_manifest_exits_with_status_2(tmp_path, capsys):
    items = [Item("a", "good", "missing.wav", "train", label="positive"), Item("b", "bad", None, "valid", label="negative")]
    manifest = save_manifest(items, tmp_path / "m.jsonl")
    code = main(["--manifest", str(manifest), "--text-encoder", "unused", "--audio-encoder", "unused",
                 "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing_audio: 1" in err and "--drop-invalid" in err
    assert not (tmp_path / "out" / "bundle.json").exists()


# ---- seeds, early stopping, text fine-tuning: short runs on the same data ----------------


def quick_run(root: Path, out: str, *extra: str) -> Path:
    """Train on the module's dataset and base bundle (features from the shared cache) into root/out."""
    args = ["--manifest", str(root / "data" / "manifest.jsonl"), "--bundle", str(root / "base"),
            "--out", str(root / out), "--cache-dir", str(root / "cache"), "--epochs", "3", "--lr", "3e-3",
            "--d-model", "32", "--n-heads", "2", "--no-progress", *extra]
    assert main(args) == 0
    return root / out


def fusion_weights(bundle_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(bundle_dir / "fusion.safetensors"))


def test_the_same_seed_trains_the_same_bundle(trained):
    root, _ = trained
    first, again = quick_run(root, "seed5-a", "--seed", "5"), quick_run(root, "seed5-b", "--seed", "5")
    other = quick_run(root, "seed6", "--seed", "6")
    a, b, c = fusion_weights(first), fusion_weights(again), fusion_weights(other)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert Bundle.load(first).metrics == Bundle.load(again).metrics
    # The seed is what made them equal: another one initialises and shuffles differently.
    assert any(not torch.equal(a[k], c[k]) for k in a)


def history_of(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / "report" / "report.json").read_text())["history"]


def test_early_stopping_ends_training_when_valid_loss_stops_improving(trained):
    root, _ = trained
    # lr 0: the weights never move, so the valid loss of epoch 1 is never beaten and
    # training must stop after `patience` epochs without improvement, not run all 10.
    out = quick_run(root, "stalled", "--lr", "0", "--epochs", "10", "--patience", "2")
    history = history_of(out)["fusion"]
    assert history["epoch"] == [1, 2, 3], history["epoch"]
    assert history["best_epoch"] == 1 and Bundle.load(out).data["best_epoch"] == 1


def test_finetune_text_layers_trains_only_the_last_text_layers(trained):
    from safetensors.torch import load_file

    root, _ = trained
    out = quick_run(root, "text-tuned", "--finetune-text-layers", "1", "--finetune-epochs", "1", "--epochs", "1")
    bundle = Bundle.load(out)
    assert bundle.text_encoder == "text_encoder"
    assert bundle.data["encoders"]["text"]["fine_tuned_layers"] == 1
    assert history_of(out)["finetune"]["text"]["epoch"] == [1]
    tuned = load_file(str(out / "text_encoder" / "model.safetensors"))
    base = load_file(str(root / "base" / "text_encoder" / "model.safetensors"))
    changed = {k for k in base if not torch.equal(tuned[k], base[k])}
    # The tiny text encoder has 2 layers: the last one moved, the embeddings and layer 0 did not.
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)
    assert any(k.startswith("encoder.layer.1.") for k in changed)
    # The fusion head trained on the tuned encoder's features, and the bundle serves them.
    results = SentimentPipeline(bundle).predict(["a great film"], [None])
    assert results[0]["label"] in bundle.labels
