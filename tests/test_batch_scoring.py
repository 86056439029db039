"""Batch scoring (Ray Data) gives the same answers as the real HTTP API, row for row.

A generated manifest of 200 rows (text only, audio only, both, and bad rows of every kind)
is scored by ``jobs`` (``python -m jobs``): first through its command line on part of the manifest,
then in-process on all of it, which must resume and skip what the first run wrote. Every
row that could also be an HTTP request is sent to the served app (conftest ``served_app``,
the real Serve deployment over real HTTP) and the two answers are compared: labels, scores
and sentiment within float16 tolerance, and the same error code and status for bad rows.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from jobs.run import BatchResources, manifest_rows, run
from jobs.tables import feature_arrays, read_shards
from tests.conftest import repo_pythonpath

REPO = Path(__file__).resolve().parent.parent
PHRASES = ["what a wonderful film", "this was a waste of time", "the acting felt flat", "i loved every minute",
           "not bad at all", "utterly boring", "a masterpiece", "the plot made no sense"]
# Small actors: the session cluster (4 logical CPUs) also runs the served app.
SMALL = BatchResources(gpu=False, decode_cpus=0.2, actor_cpus=0.2, max_actors=1, decode_batch=16,
                       text_batch=32, audio_batch=8, fusion_batch=32)
# Batch-only errors: rows no HTTP request corresponds to.
BATCH_ONLY = {"audio_unreadable", "malformed_row", "duplicate_id", "missing_id"}


def write_audio(path: Path, seconds: float, rate: int, freq: float, channels: int = 1, subtype="PCM_16"):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    sf.write(path, data.astype("float32"), rate, subtype=subtype)


def make_manifest(folder: Path) -> tuple[Path, dict]:
    """~200 rows; returns the manifest path and, per id, what the row is meant to test."""
    audio = folder / "clips"
    audio.mkdir(parents=True)
    lines, kinds = [], {}
    rates = [16_000, 22_050, 8_000, 44_100]
    for i in range(185):
        kind = ("text", "audio", "both")[i % 3]
        row = {"id": f"clip-{i:03d}", "split": "test", "label": "positive" if i % 2 else "negative",
               "score": round((i % 7) - 3.0, 1)}
        if kind in ("text", "both"):
            row["text"] = f"{PHRASES[i % len(PHRASES)]} number {i}"
        if kind in ("audio", "both"):
            ext = "flac" if i % 10 == 0 else "wav"
            name = f"c{i:03d}.{ext}"
            write_audio(audio / name, 0.4 + (i % 13) * 0.1, rates[i % 4], 120 + 9 * i, channels=1 + (i % 5 == 0))
            row["audio_path"] = f"clips/{name}"
        kinds[row["id"]] = kind
        lines.append(json.dumps(row))

    def bad(id_, kind, **fields):
        kinds[id_] = kind
        lines.append(json.dumps({"id": id_, **fields}))

    (audio / "garbage.wav").write_bytes(b"RIFF\x00\x00\x00\x00not really a wav file at all" * 10)
    write_audio(audio / "long.wav", 601.0, 8_000, 200)  # over max_long_audio_seconds
    write_audio(audio / "recording.wav", 25.0, 16_000, 180)  # scored in windows
    write_audio(audio / "lowrate.wav", 0.5, 4_000, 200)
    write_audio(audio / "three.wav", 0.5, 16_000, 200, channels=3)
    (audio / "empty.wav").write_bytes(b"")
    nan_wave = np.full(1600, np.nan, dtype="float32")
    sf.write(audio / "nan.wav", nan_wave, 16_000, subtype="FLOAT")
    bad("bad-missing-file", "audio_unreadable", text="hello", audio_path="clips/nope.wav")
    bad("bad-garbage", "audio_undecodable", audio_path="clips/garbage.wav")
    bad("bad-nothing", "missing_input")
    bad("bad-blank-text", "missing_input", text="   ")
    bad("bad-long-text", "text_too_long", text="word " * 401)
    bad("bad-long-audio", "audio_too_long", audio_path="clips/long.wav")
    bad("long-recording", "segmented", text="a long call", audio_path="clips/recording.wav")
    bad("bad-low-rate", "audio_format_not_allowed", audio_path="clips/lowrate.wav")
    bad("bad-channels", "audio_format_not_allowed", text="three channels", audio_path="clips/three.wav")
    bad("bad-nan", "audio_non_finite", audio_path="clips/nan.wav")
    bad("empty-audio-with-text", "text", text="only the text counts", audio_path="clips/empty.wav")
    bad("bad-audio-dir", "audio_unreadable", audio_path="clips")
    lines.append(json.dumps({"id": "clip-000", "text": "a second row with a used id"}))
    kinds["clip-000#dup1"] = "duplicate_id"
    lines.append('{"id": "broken", "text": "no closing brace"')
    kinds["line-199"] = "malformed_row"
    lines.append(json.dumps({"text": "a row without an id"}))
    kinds["line-200"] = "missing_id"
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, kinds


def http_answer(client: httpx.Client, url: str, row: dict) -> tuple[int, dict]:
    body = {}
    if row.get("text") is not None:
        body["text"] = row["text"]
    if row.get("audio_path"):
        body["audio"] = base64.b64encode(Path(row["audio_path"]).read_bytes()).decode()
    response = client.post(f"{url}/v1/predict", json=body, timeout=120)
    return response.status_code, response.json()


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_bundle, ray_cluster):
    import ray

    folder = tmp_path_factory.mktemp("batch")
    manifest, kinds = make_manifest(folder)
    out = folder / "predictions.parquet"

    # 1. The README's command line, on the first 60 rows, against the session's cluster.
    env = dict(os.environ, PYTHONPATH=repo_pythonpath(), RAY_AUTH_MODE="token")
    cli = subprocess.run(
        [sys.executable, "-m", "jobs", "score", "--manifest", str(manifest), "--bundle", str(tiny_bundle),
         "--out", str(out), "--limit", "60", "--address", ray.get_runtime_context().gcs_address,
         "--max-actors", "1", "--actor-cpus", "0.2", "--decode-cpus", "0.2", "--no-progress"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    first = json.loads(cli.stdout.strip().splitlines()[-1])

    # 2. In-process on the whole manifest: resumes after the first 60.
    second = run("score", manifest, tiny_bundle, out, resources=SMALL, progress=False)
    print(f"\nBATCH cli run: {first}\nBATCH resumed run: {second}")
    return manifest, kinds, out, first, second


@pytest.mark.slow
def test_cli_then_resume(scored):
    manifest, kinds, out, first, second = scored
    assert first["processed_rows"] == 60 and first["skipped_rows"] == 0
    assert second.total_rows == len(kinds) == 200
    assert second.skipped_rows == 60 and second.processed_rows == 140
    table = read_shards(out)
    ids = table.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 200


@pytest.mark.slow
def test_bad_rows_are_recorded_not_fatal(scored):
    manifest, kinds, out, first, second = scored
    rows = {r["id"]: r for r in read_shards(out).to_pylist()}
    for id_, kind in kinds.items():
        if kind in ("text", "audio", "both", "segmented"):
            row = rows[id_]
            assert row["error_code"] is None, row
            assert row["label"] in ("negative", "positive")
            assert row["modalities"] == {"text": "text", "audio": "audio", "both": "text+audio",
                                         "segmented": "text+audio"}[kind]
            assert (row["segments"] is not None) == (kind == "segmented"), row
        else:
            assert rows[id_]["error_code"] == kind, rows[id_]
            assert rows[id_]["label"] is None
    assert rows["clip-001"]["true_label"] == "positive" and rows["clip-001"]["true_score"] == -2.0


@pytest.mark.slow
def test_same_answers_as_the_http_api(scored, served_app):
    manifest, kinds, out, first, second = scored
    batch = {r["id"]: r for r in read_shards(out).to_pylist()}
    requests = [r for r in manifest_rows(manifest) if kinds[r["id"]] not in BATCH_ONLY]
    with httpx.Client() as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: http_answer(client, served_app, r), requests))

    compared = errors = segmented = 0
    worst = 0.0
    for row, (status, body) in zip(requests, answers):
        mine = batch[row["id"]]
        if status != 200:
            assert mine["error_code"] == body["error"]["code"], (row["id"], mine, body)
            assert mine["http_status"] == status
            errors += 1
            continue
        assert mine["error_code"] is None, (row["id"], mine, body)
        for label, p in body["scores"].items():
            worst = max(worst, abs(mine["scores"][label] - p))
            assert mine["scores"][label] == pytest.approx(p, abs=2e-3), (row["id"], mine["scores"], body["scores"])
        assert mine["sentiment"] == pytest.approx(body["sentiment"], abs=1e-2)
        margin = abs(np.diff(sorted(body["scores"].values()))[-1])
        if margin > 4e-3:  # an untrained model's near-ties may flip on float16 noise
            assert mine["label"] == body["label"], row["id"]
        for name in ("text", "audio"):
            branch = body["modalities"].get(name)
            assert (mine[f"{name}_sentiment"] is None) == (branch is None)
            if branch is not None:
                assert mine[f"{name}_sentiment"] == pytest.approx(branch["sentiment"], abs=1e-2)
        # A long recording: the same windows, each with the same prediction, as the API's timeline.
        assert (mine["segments"] is None) == ("segments" not in body), row["id"]
        if mine["segments"] is not None:
            windows = json.loads(mine["segments"])
            assert len(windows) == len(body["segments"]) >= 3, (windows, body["segments"])
            for window, segment in zip(windows, body["segments"]):
                assert (window["start"], window["end"]) == (segment["start"], segment["end"])
                assert window["sentiment"] == pytest.approx(segment["sentiment"], abs=1e-2)
            segmented += 1
        compared += 1
    print(f"\nBATCH vs HTTP: {compared} predictions compared (max |dp| = {worst:.2e}), {errors} errors matched")
    assert compared >= 180 and errors >= 8 and segmented == 1


@pytest.fixture(scope="module")
def features(tmp_path_factory, ray_cluster, tiny_bundle):
    """One ``features`` run for both tests below (each Ray Data run starts its own actor
    pools): the training test's dataset (40 rows, 8 of them text only) plus 4 audio-only
    rows of its clips. Returns the training manifest, the one extracted, the table, the stats."""
    from test_train_e2e import make_dataset

    folder = tmp_path_factory.mktemp("features")
    training = make_dataset(folder / "data")
    lines = training.read_text().splitlines()
    with_audio = [json.loads(line) for line in lines if json.loads(line).get("audio_path")]
    audio_only = [json.dumps({"id": f"speech-{row['id']}", "audio_path": row["audio_path"]}) for row in with_audio[:4]]
    extracted = training.with_name("features.jsonl")
    extracted.write_text("\n".join(lines + audio_only) + "\n")
    table = folder / "features"
    stats = run("features", extracted, tiny_bundle, table, resources=SMALL, progress=False)
    return training, extracted, table, stats


@pytest.mark.slow
def test_features_mode(features, tiny_bundle):
    from transformers import AutoTokenizer

    from model.bundle import Bundle

    _, manifest, table, stats = features
    assert stats.processed_rows == 44 and stats.error_rows == 0
    bundle = Bundle.load(tiny_bundle)
    tokenizer = AutoTokenizer.from_pretrained(bundle.resolve(bundle.text_encoder))
    rows = {r["id"]: r for r in manifest_rows(manifest)}
    seen = {"text": 0, "audio": 0, "text only": 0, "audio only": 0}
    for row in read_shards(table).to_pylist():
        text, audio = feature_arrays(row, bundle.fusion.text_dim, bundle.fusion.audio_dim)
        source = rows[row["id"]]
        assert (text is not None) == (source["text"] is not None)
        assert (audio is not None) == (source["audio_path"] is not None)
        if text is not None:
            assert text.shape[0] == len(tokenizer(source["text"])["input_ids"])
            assert np.isfinite(text).all()
            seen["text"] += 1
        if audio is not None:
            assert audio.shape[0] > 0 and np.isfinite(audio).all()
            seen["audio"] += 1
        seen["text only"] += audio is None
        seen["audio only"] += text is None
    assert seen == {"text": 40, "audio": 36, "text only": 8, "audio only": 4}, seen


def test_csv_manifest_reads_like_jsonl(tmp_path):
    """No Ray: the CSV reader yields the same rows as JSONL (blank cells are missing values)."""
    import csv

    rows = [{"id": "a", "text": "hello", "audio_path": "", "split": "test", "label": "positive", "score": "1.5"},
            {"id": "b", "text": "", "audio_path": "clips/b.wav", "split": "", "label": "", "score": ""},
            {"id": "a", "text": "again", "audio_path": "", "split": "", "label": "", "score": ""}]
    with open(tmp_path / "m.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if v}) for r in rows))
    from_csv, from_jsonl = manifest_rows(tmp_path / "m.csv"), manifest_rows(tmp_path / "m.jsonl")
    assert from_csv == from_jsonl
    assert from_csv[0]["score"] == 1.5 and from_csv[0]["audio_path"] is None
    assert from_csv[1]["text"] is None and from_csv[1]["audio_path"] == str(tmp_path / "clips" / "b.wav")
    assert from_csv[2]["id"] == "a#dup1" and from_csv[2]["error_code"] == "duplicate_id"


def test_jobs_apply_the_service_audio_limits(tmp_path):
    """No Ray: the decode stage enforces the service's sample_rates and min_audio_seconds
    (through ``Limits.audio_limits``, as the driver does), not the decoder's defaults."""
    import pyarrow as pa

    from deployments.http.schema import Limits
    from jobs.stages import decode_stage

    write_audio(tmp_path / "r22.wav", 1.0, 22_050, 220)
    write_audio(tmp_path / "short.wav", 0.3, 16_000, 220)
    write_audio(tmp_path / "ok.wav", 1.0, 16_000, 220)
    (tmp_path / "m.jsonl").write_text("\n".join(
        json.dumps({"id": name, "audio_path": f"{name}.wav"}) for name in ("r22", "short", "ok")) + "\n")
    rows = manifest_rows(tmp_path / "m.jsonl")
    limits = Limits(sample_rates=[16_000], min_audio_seconds=0.5)

    def decoded(limits: Limits, min_seconds: float = 0.0) -> dict:
        out = decode_stage(pa.Table.from_pylist(rows), 16_000, limits.model_dump(), min_seconds)
        return {r["id"]: r["error_code"] for r in out.to_pylist()}

    assert decoded(limits) == {"r22": "audio_format_not_allowed", "short": "audio_too_short", "ok": None}
    assert decoded(Limits()) == {"r22": None, "short": None, "ok": None}
    # The encoder's receptive field is a floor on min_audio_seconds, never a replacement.
    assert decoded(Limits(), min_seconds=0.5)["short"] == "audio_too_short"
    assert limits.audio_limits(min_seconds=0.01).min_seconds == 0.5


@pytest.mark.slow
def test_features_fill_the_training_cache(tmp_path, features, tiny_bundle):
    """Features the batch job extracts are what training would compute; training uses them."""
    from model.audio_encoder import AudioEncoder
    from model.bundle import Bundle
    from model.data.feature_table import FeatureTableMismatch, PrecomputedFeatures
    from model.data.manifest import load_manifest
    from model.text_encoder import TextEncoder
    from model.training.cli import train
    from model.training.config import TrainConfig
    from model.training.feature_cache import audio_features, encoder_fingerprint, text_features

    manifest_path, _, table, _ = features
    bundle = Bundle.load(tiny_bundle)
    text_encoder = TextEncoder(bundle.resolve(bundle.text_encoder), bundle.text_max_length, "cpu")
    audio_encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), "cpu")
    precomputed = PrecomputedFeatures.load(table, encoder_fingerprint(text_encoder), encoder_fingerprint(audio_encoder),
                                           text_encoder.hidden_size, audio_encoder.hidden_size)
    manifest = load_manifest(manifest_path)
    fresh_text = text_features(text_encoder, manifest.items, None, progress=False)
    fresh_audio = audio_features(audio_encoder, manifest, manifest.items, None, progress=False)
    for item, text, audio in zip(manifest.items, fresh_text, fresh_audio):
        assert torch_close(precomputed.text_for(item.text), text)
        if item.audio_path:
            assert torch_close(precomputed.audio_for(manifest.audio_file(item), 20.0), audio)
    with pytest.raises(FeatureTableMismatch, match="another text encoder"):
        PrecomputedFeatures.load(table, "other", encoder_fingerprint(audio_encoder), 1, 1)

    result = train(TrainConfig(manifest=manifest_path, out=tmp_path / "out", base_bundle=tiny_bundle, features=table,
                               cache_dir=tmp_path / "cache", epochs=2, d_model=32, n_heads=2, progress=False))
    # 10 distinct sentences; 32 of the 40 items have audio: none was encoded again.
    assert result.bundle.data["precomputed_features"] == {"source": str(table), "text": 10, "audio": 32}
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4  # text + one audio entry per split


def torch_close(a, b) -> bool:
    return a is not None and b is not None and a.shape == b.shape and bool(
        np.allclose(a.float().numpy(), b.float().numpy(), atol=2e-2, rtol=2e-2))
