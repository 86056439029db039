"""Distributed batch scoring and feature extraction with Ray Data.

    python -m deployments.batch score    --manifest M --bundle B --out predictions.parquet
    python -m deployments.batch features --manifest M --bundle B --out features.parquet

A manifest is JSONL or CSV with columns ``id,text,audio_path[,split,label,score]``; audio
paths are relative to the manifest. Each row is treated exactly like one HTTP request:
the same input checks and limits (``request_parsing.check_input``, the service ``Limits``),
the same decoding (``model.audio.decode_audio``), the same encoders, length bucketing and
fusion as the Serve deployments, and the same error codes (``api.status_for``). A bad row
is recorded with its error; it never stops the job.

The pipeline: read the manifest on the driver -> decode audio in CPU tasks -> TextEncoder,
AudioEncoder and (for ``score``) FusionHead as ``map_batches`` actor pools, on GPUs when the
cluster has them -> Parquet shards written by the driver.

The output is a folder of shards, each written to a temporary name and renamed when
complete. A rerun with the same ``--out`` skips every id already in a complete shard, so an
interrupted job resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from deployments.api import Limits, status_for
from deployments.request_parsing import check_input
from model.audio import AudioLimits, decode_audio
from model.bundle import Bundle
from model.feature_table import METADATA_KEY, SHARD_GLOB, pack_features, shard_metadata, shard_paths, unpack_features

logger = logging.getLogger("deployments.batch")

MANIFEST_COLUMNS = ("id", "text", "audio_path", "split", "label", "score")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---- errors recorded per row ---------------------------------------------------


class RowError(Exception):
    """A row the manifest itself makes unusable (no HTTP request would even be sent)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def error_fields(exc: Exception) -> dict:
    """The code and status the HTTP API would answer with, via its one mapping."""
    if isinstance(exc, RowError):
        return {"error_code": exc.code, "error": str(exc), "http_status": None}
    status, code, message, _ = status_for(exc)
    if status == 500:  # status_for hides internals from HTTP clients; a batch log may show them
        message = f"{type(exc).__name__}: {exc}"[:500]
    return {"error_code": code, "error": message, "http_status": status}


# ---- the manifest ----------------------------------------------------------------


def _clean(value):
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if not isinstance(value, str) or value != "" else None


def _row(raw: dict, base: Path, number: int) -> dict:
    row = {key: _clean(raw.get(key)) for key in MANIFEST_COLUMNS}
    row["error_code"] = row["error"] = row["http_status"] = None
    if row["id"] is None:
        row["id"] = f"line-{number}"
        row.update(error_fields(RowError("missing_id", "the row has no id")))
    row["id"] = str(row["id"])
    for key in ("text", "split", "label"):
        if row[key] is not None:
            row[key] = str(row[key])
    if row["score"] is not None:
        try:
            row["score"] = float(row["score"])
        except (TypeError, ValueError):
            row["score"] = None
    if row["audio_path"] is not None:
        path = Path(str(row["audio_path"]))
        row["audio_path"] = str(path if path.is_absolute() else (base / path))
    return row


def read_manifest(path: str | Path) -> list[dict]:
    """Rows with the manifest columns; malformed lines and duplicate ids become error rows.

    The columns are those of ``model.manifest`` (the training manifest), read tolerantly:
    ``load_manifest`` rejects a whole file for one bad row, which suits training but not a
    scoring job that must record the row and go on. ``split``, ``label`` and ``score`` are
    optional here and passed through to the output as targets.
    """
    path = Path(path)
    base = path.resolve().parent
    rows: list[dict] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            for number, raw in enumerate(csv.DictReader(handle), start=2):
                rows.append(_row(raw, base, number))
    else:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                    if not isinstance(raw, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    row = _row({"id": f"line-{number}"}, base, number)
                    row.update(error_fields(RowError("malformed_row", f"line {number}: {exc}"[:300])))
                    rows.append(row)
                    continue
                rows.append(_row(raw, base, number))
    seen: dict[str, int] = {}
    for row in rows:
        if row["id"] in seen and row["error_code"] is None:
            seen[row["id"]] += 1
            row.update(error_fields(RowError("duplicate_id", f"id {row['id']!r} appears more than once")))
            row["id"] = f"{row['id']}#dup{seen[row['id']]}"  # unique, and the same on every run (resume)
        seen.setdefault(row["id"], 0)
    return rows


# ---- settings --------------------------------------------------------------------


def service_limits(serve_config: str | Path | None) -> Limits:
    """The request limits the HTTP service applies, read from serve_config.yaml."""
    path = Path(serve_config) if serve_config else PROJECT_ROOT / "serve_config.yaml"
    if not path.is_file():
        logger.info("no %s; using the default request limits", path)
        return Limits()
    config = yaml.safe_load(path.read_text())
    for app in config.get("applications", []):
        limits = ((app.get("args") or {}).get("settings") or {}).get("limits")
        if limits is not None:
            return Limits(**limits)
    return Limits()


def audio_limits(limits: Limits) -> AudioLimits:
    return AudioLimits(max_bytes=limits.max_audio_bytes, max_seconds=limits.max_audio_seconds,
                       min_sample_rate=limits.min_sample_rate, max_sample_rate=limits.max_sample_rate,
                       max_channels=limits.max_channels)


@dataclass
class BatchResources:
    """Per-task / per-actor resources and pool sizes. ``None`` means: decided from the cluster
    (GPUs if it has any; a quarter of its CPUs, 0.25 to 2, per decode task and per actor, so
    the three actor pools and decoding always fit, even on a 2-core laptop)."""

    gpu: bool | None = None
    decode_cpus: float | None = None
    actor_cpus: float | None = None
    text_gpus: float = 0.25
    audio_gpus: float = 0.5
    fusion_gpus: float = 0.1
    max_actors: int = 4
    decode_batch: int = 32
    text_batch: int = 64
    audio_batch: int = 16
    fusion_batch: int = 64


# ---- Ray Data stages -------------------------------------------------------------
# Batches are Arrow tables, handled as lists of row dicts (Arrow nulls are plain None,
# unlike pandas). Tensors travel as raw bytes (float32 audio; float16 features, as between
# the Serve deployments) plus a length column: plain binary columns, whatever mix of
# present and missing modalities a batch holds.


def _rows(batch: pa.Table) -> list[dict]:
    return batch.to_pylist()


def _table(rows: list[dict], drop: tuple[str, ...] = ()) -> pa.Table:
    return pa.Table.from_pylist([{k: v for k, v in row.items() if k not in drop} for row in rows])


def decode_stage(batch: pa.Table, sampling_rate: int, limits: dict) -> pa.Table:
    """CPU task: the HTTP request checks, then audio decoding, for every row of a batch."""
    service = Limits(**limits)
    alimits = audio_limits(service)
    rows = _rows(batch)
    for row in rows:
        row["wave"], row["wave_len"] = None, 0
        row["audio_size"] = row["audio_mtime_ns"] = row["audio_seconds"] = None
        if row["error_code"] is not None:
            row["text"] = None
            continue
        try:
            audio = None
            if row["audio_path"] is not None:
                try:
                    audio = Path(row["audio_path"]).read_bytes()
                    stat = Path(row["audio_path"]).stat()
                except OSError as exc:
                    raise RowError("audio_unreadable", f"cannot read {row['audio_path']}: {exc.strerror}") from None
            parsed = check_input(row["text"], audio, service)
            row["text"] = parsed.text
            if parsed.audio is not None:
                wave = decode_audio(parsed.audio, sampling_rate, alimits).numpy().astype(np.float32)
                row["wave"], row["wave_len"] = wave.tobytes(), len(wave)
                # Identify the file the features came from, so training can match them by content.
                row["audio_size"], row["audio_mtime_ns"] = stat.st_size, stat.st_mtime_ns
                row["audio_seconds"] = len(wave) / sampling_rate
        except Exception as exc:  # every failure becomes this row's error
            row.update(error_fields(exc))
            row["text"] = None
    return _table(rows)


class _Stage:
    """Shared by the actor stages: threads and device set up the way Serve replicas do it."""

    def __init__(self, bundle_path: str):
        from deployments.runtime import configure_threads, replica_device

        self.threads = configure_threads()
        self.device = replica_device()
        self.bundle = Bundle.load(bundle_path)

    @staticmethod
    def _run(rows: list[dict], compute) -> None:
        """``compute`` on all ``rows`` at once; if that fails, row by row, so one bad row
        costs only itself."""
        if not rows:
            return
        try:
            compute(rows)
        except Exception:
            for row in rows:
                try:
                    compute([row])
                except Exception as exc:
                    row.update(error_fields(exc))


class TextStage(_Stage):
    def __init__(self, bundle_path: str):
        super().__init__(bundle_path)
        from model.text_encoder import TextEncoder

        self.encoder = TextEncoder(self.bundle.resolve(self.bundle.text_encoder), self.bundle.text_max_length,
                                   self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = _rows(batch)
        for row in rows:
            row["text_features"], row["text_frames"], row["text_truncated"] = None, 0, False

        def compute(todo):
            texts = [row["text"] for row in todo]
            for row, features in zip(todo, self.encoder.encode_each(texts)):
                row["text_features"] = pack_features(features)
                row["text_frames"] = int(features.shape[0])
                row["text_truncated"] = self.encoder.count_tokens(row["text"]) > self.encoder.max_length

        self._run([r for r in rows if r["error_code"] is None and r["text"] is not None], compute)
        return _table(rows)


class AudioStage(_Stage):
    def __init__(self, bundle_path: str):
        super().__init__(bundle_path)
        from model.audio_encoder import AudioEncoder

        self.encoder = AudioEncoder(self.bundle.resolve(self.bundle.audio_encoder), self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        rows = _rows(batch)
        for row in rows:
            row["audio_features"], row["audio_frames"] = None, 0

        def compute(todo):
            waves = [torch.from_numpy(np.frombuffer(row["wave"], dtype=np.float32).copy()) for row in todo]
            # The same length buckets as the AudioEncoder deployment: little padding per forward pass.
            for row, features in zip(todo, self.encoder.encode_each(waves)):
                row["audio_features"] = pack_features(features)
                row["audio_frames"] = int(features.shape[0])

        self._run([r for r in rows if r["error_code"] is None and r["wave"] is not None], compute)
        return _table(rows, drop=("wave", "wave_len"))


class FusionStage(_Stage):
    OUTPUTS = ("label", "sentiment", "scores", "text_label", "text_sentiment", "audio_label", "audio_sentiment")

    def __init__(self, bundle_path: str):
        super().__init__(bundle_path)
        self.head = self.bundle.load_fusion().to(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from model.inference import FusionItem, fuse

        cfg = self.head.config
        rows = _rows(batch)
        for row in rows:
            row.update(dict.fromkeys(self.OUTPUTS))

        def tensor(blob, frames, dim):
            array = unpack_features(blob, frames, dim)
            return None if array is None else torch.from_numpy(array.copy())

        def compute(todo):
            items = [FusionItem(text=tensor(r["text_features"], r["text_frames"], cfg.text_dim),
                                audio=tensor(r["audio_features"], r["audio_frames"], cfg.audio_dim)) for r in todo]
            for row, result in zip(todo, fuse(self.head, self.bundle, items)):
                row.update(label=result["label"], sentiment=result["sentiment"], scores=json.dumps(result["scores"]))
                for name in ("text", "audio"):
                    branch = result["modalities"].get(name)
                    if branch is not None:
                        row[f"{name}_label"], row[f"{name}_sentiment"] = branch["label"], branch["sentiment"]

        self._run([r for r in rows if r["error_code"] is None], compute)
        return _table(rows, drop=("text", "text_features", "audio_features"))


# ---- output shards ---------------------------------------------------------------


def score_schema(labels: list[str]) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("split", pa.string()), ("true_label", pa.string()), ("true_score", pa.float64()),
        ("label", pa.string()), ("sentiment", pa.float64()),
        ("scores", pa.struct([(label, pa.float64()) for label in labels])),
        ("text_label", pa.string()), ("text_sentiment", pa.float64()),
        ("audio_label", pa.string()), ("audio_sentiment", pa.float64()),
        ("modalities", pa.string()), ("text_truncated", pa.bool_()),
        ("error_code", pa.string()), ("error", pa.string()), ("http_status", pa.int32()),
    ])


def features_schema() -> pa.Schema:
    """The feature table ``model.feature_table`` reads: what was encoded, and the features."""
    return pa.schema([
        ("id", pa.string()), ("split", pa.string()), ("true_label", pa.string()), ("true_score", pa.float64()),
        ("text", pa.string()), ("text_features", pa.binary()), ("text_frames", pa.int32()),
        ("text_truncated", pa.bool_()),
        ("audio_path", pa.string()), ("audio_size", pa.int64()), ("audio_mtime_ns", pa.int64()),
        ("audio_seconds", pa.float64()), ("audio_features", pa.binary()), ("audio_frames", pa.int32()),
        ("error_code", pa.string()), ("error", pa.string()), ("http_status", pa.int32()),
    ])


def _value(value):
    return value.item() if isinstance(value, np.generic) else value


def to_table(batch: pa.Table, schema: pa.Schema) -> pa.Table:
    """A pipeline batch as a table with the fixed output schema (so every shard agrees)."""
    records = batch.to_pylist()
    columns = {}
    for field in schema:
        values = [_value(r.get(field.name)) for r in records]
        if field.name == "scores":
            values = [json.loads(v) if v else None for v in values]
        elif field.name == "modalities":
            values = ["+".join(name for name in ("text", "audio") if r.get(f"{name}_frames")) or None
                      for r in records]
        elif field.name in ("text_frames", "audio_frames", "http_status"):
            values = [None if v is None else int(v) for v in values]
            if field.name != "http_status":
                values = [v or 0 for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=schema)


class ShardWriter:
    """Writes Parquet shards atomically into a folder and knows which ids are already done."""

    def __init__(self, out: str | Path, schema: pa.Schema, metadata: dict):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.schema = schema.with_metadata({METADATA_KEY: json.dumps(metadata)})
        self.run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.count = 0
        for stale in self.out.glob(".part-*.tmp"):  # left by a killed run: never complete
            stale.unlink()

    def done_ids(self, expect: dict) -> set[str]:
        done: set[str] = set()
        for shard in sorted(self.out.glob(SHARD_GLOB)):
            meta = shard_metadata(shard)
            for key, value in expect.items():
                if meta.get(key) != value:
                    raise ValueError(f"{shard} was written with {key}={meta.get(key)!r}, this run has {value!r}; "
                                     f"use another --out")
            done.update(pq.read_table(shard, columns=["id"]).column("id").to_pylist())
        return done

    def write(self, table: pa.Table) -> Path:
        name = f"part-{self.run_id}-{self.count:05d}.parquet"
        tmp = self.out / f".{name}.tmp"
        pq.write_table(table.replace_schema_metadata(self.schema.metadata), tmp)
        final = self.out / name
        tmp.rename(final)
        self.count += 1
        return final


# ---- the job ---------------------------------------------------------------------


@dataclass
class RunStats:
    mode: str
    total_rows: int
    skipped_rows: int
    processed_rows: int
    error_rows: int
    errors_by_code: dict
    seconds: float
    rows_per_s: float
    shards_written: int
    out: str


def run(mode: str, manifest: str | Path, bundle: str | Path, out: str | Path,
        resources: BatchResources | None = None, limits: Limits | None = None,
        shard_rows: int = 1000, limit: int | None = None, progress: bool = True,
        log_every_s: float = 10.0) -> RunStats:
    """Score (or extract features for) every row of ``manifest`` not yet in ``out``.

    Runs on the Ray cluster this process is connected to (``ray.init`` first, or let the
    CLI do it).
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext
    from tqdm import tqdm
    from transformers import AutoFeatureExtractor

    if mode not in ("score", "features"):
        raise ValueError(f"mode must be 'score' or 'features', not {mode!r}")
    resources = resources or BatchResources()
    limits = limits or Limits()
    bundle_path = str(Path(bundle).resolve())
    model = Bundle.load(bundle_path)
    sampling_rate = int(AutoFeatureExtractor.from_pretrained(model.resolve(model.audio_encoder)).sampling_rate)

    rows = read_manifest(manifest)[:limit] if limit else read_manifest(manifest)
    schema = score_schema(model.labels) if mode == "score" else features_schema()
    # Stored in every shard; a resumed run must match it, so one output never mixes models.
    identity = {"mode": mode, "bundle": model.name, "bundle_version": model.version, "trained": model.trained}
    if mode == "features":  # training checks these before it uses the features
        identity |= encoder_fingerprints(model)
    writer = ShardWriter(out, schema, identity)
    done = writer.done_ids(identity)
    todo = [row for row in rows if row["id"] not in done]
    for row in todo:  # the manifest's label and score are targets; "label" becomes the prediction
        row["true_label"], row["true_score"] = row.pop("label"), row.pop("score")
    started = time.monotonic()
    logger.info("%s: %d rows in the manifest, %d already in %s, %d to do", mode, len(rows), len(rows) - len(todo), out, len(todo))

    errors: dict[str, int] = {}
    processed = 0
    if todo:
        cluster = ray.cluster_resources()
        gpu = resources.gpu if resources.gpu is not None else cluster.get("GPU", 0) > 0
        share = max(0.25, min(2.0, cluster.get("CPU", 1.0) / 4))
        actor_cpus = resources.actor_cpus if resources.actor_cpus is not None else share
        decode_cpus = resources.decode_cpus if resources.decode_cpus is not None else share
        logger.info("actors: %s, %.2f CPUs each (up to %d per stage); decoding: %.2f CPUs per task",
                    "GPU" if gpu else "CPU", actor_cpus, resources.max_actors, decode_cpus)
        DataContext.get_current().enable_progress_bars = False  # ours below is per row, not per operator

        def pool(cls, gpus, batch_size, **extra):
            return dict(fn=cls, fn_constructor_args=(bundle_path,), batch_size=batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=resources.max_actors),
                        num_cpus=actor_cpus, num_gpus=gpus if gpu else 0, **extra)

        ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // resources.decode_batch, 200)))
        # A decode task holds a batch of the longest allowed clips, as file bytes and as
        # float32 samples; asking for that memory also keeps Ray Data from fusing decoding
        # into the TextStage actors (their resources differ), which would then hold a GPU
        # while reading and decoding files.
        decode_memory = resources.decode_batch * limits.max_audio_seconds * limits.max_sample_rate * 4 * 2
        ds = ds.map_batches(decode_stage, fn_kwargs={"sampling_rate": sampling_rate, "limits": limits.model_dump()},
                            batch_size=resources.decode_batch, batch_format="pyarrow", num_cpus=decode_cpus,
                            memory=decode_memory)
        ds = ds.map_batches(**pool(TextStage, resources.text_gpus, resources.text_batch))
        ds = ds.map_batches(**pool(AudioStage, resources.audio_gpus, resources.audio_batch))
        if mode == "score":
            ds = ds.map_batches(**pool(FusionStage, resources.fusion_gpus, resources.fusion_batch))

        bar = tqdm(total=len(todo), unit="row", desc=mode, disable=not progress, mininterval=1.0)
        last_log = time.monotonic()
        for batch in ds.iter_batches(batch_size=shard_rows, batch_format="pyarrow"):
            table = to_table(batch, schema)
            writer.write(table)
            processed += table.num_rows
            for code in table.column("error_code").drop_null().to_pylist():
                errors[code] = errors.get(code, 0) + 1
            bar.update(table.num_rows)
            if time.monotonic() - last_log >= log_every_s:
                elapsed = time.monotonic() - started
                logger.info("%d/%d rows, %.1f rows/s, %d errors", processed, len(todo), processed / elapsed,
                            sum(errors.values()))
                last_log = time.monotonic()
        bar.close()

    seconds = time.monotonic() - started
    stats = RunStats(mode=mode, total_rows=len(rows), skipped_rows=len(rows) - len(todo), processed_rows=processed,
                     error_rows=sum(errors.values()), errors_by_code=errors, seconds=round(seconds, 2),
                     rows_per_s=round(processed / seconds, 2) if processed else 0.0,
                     shards_written=writer.count, out=str(out))
    logger.info("done: %s", json.dumps(asdict(stats)))
    return stats


def encoder_fingerprints(model: Bundle) -> dict[str, str]:
    """The bundle's encoders' fingerprints, as the training feature cache computes them."""
    from model.audio_encoder import AudioEncoder
    from model.feature_cache import encoder_fingerprint
    from model.text_encoder import TextEncoder

    text = TextEncoder(model.resolve(model.text_encoder), model.text_max_length, "cpu")
    audio = AudioEncoder(model.resolve(model.audio_encoder), "cpu")
    return {"text_fingerprint": encoder_fingerprint(text), "audio_fingerprint": encoder_fingerprint(audio)}


def read_shards(out: str | Path) -> pa.Table:
    """All complete shards of an output folder as one table."""
    return pa.concat_tables([pq.read_table(s) for s in shard_paths(out)])


def feature_arrays(row: dict, text_dim: int, audio_dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A features row's ``[T, D]`` float16 arrays (None where the modality is missing)."""
    return (unpack_features(row["text_features"], row["text_frames"], text_dim),
            unpack_features(row["audio_features"], row["audio_frames"], audio_dim))


# ---- command line ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deployments.batch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for mode, help_text in (("score", "labels, scores and errors per row"),
                            ("features", "encoder features per row, e.g. to fill a training feature cache")):
        p = sub.add_parser(mode, help=help_text)
        p.add_argument("--manifest", required=True, help="JSONL or CSV: id,text,audio_path[,split,label,score]")
        p.add_argument("--bundle", required=True, help="model bundle folder (visible to every node)")
        p.add_argument("--out", required=True, help="output folder of Parquet shards; rerun to resume")
        p.add_argument("--address", default=None,
                       help="Ray cluster address; default: RAY_ADDRESS, else a running local cluster, else a new one. "
                            "'local' always starts a new one")
        p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a new local Ray (default: all)")
        p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                       help="GPU actors when the cluster has GPUs (auto), or force one")
        p.add_argument("--max-actors", type=int, default=4, help="upper bound of each encoder/fusion actor pool")
        p.add_argument("--actor-cpus", type=float, default=None,
                       help="CPUs per actor; torch threads follow it (default: a quarter of the cluster's, 0.25-2)")
        p.add_argument("--decode-cpus", type=float, default=None, help="CPUs per audio decoding task (default: as actors)")
        p.add_argument("--shard-rows", type=int, default=1000, help="rows per output shard")
        p.add_argument("--limit", type=int, default=None, help="only the first N manifest rows (a trial run)")
        p.add_argument("--serve-config", default=None,
                       help="take the request limits from this Serve config (default: the project's serve_config.yaml)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import ray

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    resources = BatchResources(gpu={"auto": None, "cpu": False, "gpu": True}[args.device],
                               max_actors=args.max_actors, actor_cpus=args.actor_cpus, decode_cpus=args.decode_cpus)
    if not ray.is_initialized():
        ray.init(address=args.address, num_cpus=args.num_cpus, log_to_driver=False)
    stats = run(args.mode, args.manifest, args.bundle, args.out, resources, service_limits(args.serve_config),
                shard_rows=args.shard_rows, limit=args.limit, progress=not args.no_progress)
    print(json.dumps(asdict(stats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
