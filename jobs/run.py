"""The jobs' driver side: read the manifest, build the Ray Data pipeline, write and resume the shards.

The pipeline: read the manifest on the driver -> decode audio in CPU tasks -> AudioEncoder,
TextEncoder and (for ``score``) FusionHead as ``map_batches`` actor pools, on GPUs when the
cluster has them (``jobs.stages``) -> Parquet shards written by the driver (``jobs.tables``).
A rerun with the same ``out`` skips every id already in a complete shard.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from deployments.http.schema import Limits
from jobs.stages import AudioStage, FusionStage, RowError, TextStage, decode_stage, error_fields, merge_segments
from jobs.tables import ShardWriter, features_schema, score_schema, to_table
from model.audio_encoder import AudioEncoderFacts
from model.bundle import Bundle
from model.data.manifest import read_manifest_rows

logger = logging.getLogger("jobs")

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---- inputs ----------------------------------------------------------------------


def manifest_rows(path: str | Path) -> list[dict]:
    """The manifest's rows as the pipeline's row dicts (columns, targets, error fields).

    Read by ``model.data.manifest`` in its lenient mode: a malformed line, a missing or a
    repeated id becomes a row with that error, recorded in the output like any failed row.
    ``split``, ``label`` and ``score`` are optional and passed through as targets.
    """
    manifest = read_manifest_rows(path, require_ids=True)
    rows = []
    for row in manifest.rows:
        audio = manifest.audio_file(row)
        record = {"id": row.id, "text": row.text, "audio_path": None if audio is None else str(audio),
                  "split": row.split, "label": row.label, "score": row.score,
                  "error_code": None, "error": None, "http_status": None}
        if row.error is not None:
            record.update(error_fields(RowError(row.error.code, row.error.message)))
        rows.append(record)
    return rows


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
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy
    from tqdm import tqdm

    if mode not in ("score", "features"):
        raise ValueError(f"mode must be 'score' or 'features', not {mode!r}")
    resources = resources or BatchResources()
    limits = limits or Limits()
    bundle_path = str(Path(bundle).resolve())
    model = Bundle.load(bundle_path)
    # The same facts, and so the same shortest clip, as the driver's.
    facts = AudioEncoderFacts.from_pretrained(model.resolve(model.audio_encoder))
    sampling_rate, min_seconds = facts.sampling_rate, facts.min_seconds

    rows = manifest_rows(manifest)[:limit] if limit else manifest_rows(manifest)
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

        def pool(cls, gpus, batch_size, *args, **extra):
            return dict(fn=cls, fn_constructor_args=(bundle_path, *args), batch_size=batch_size, batch_format="pyarrow",
                        compute=ActorPoolStrategy(min_size=1, max_size=resources.max_actors),
                        num_cpus=actor_cpus, num_gpus=gpus if gpu else 0, **extra)

        blocks = max(1, min(len(todo) // resources.decode_batch, 200))
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
        # A decode task holds a batch of the longest allowed clips, as file bytes and as
        # float32 samples; asking for that memory also keeps Ray Data from fusing decoding
        # into the TextStage actors (their resources differ), which would then hold a GPU
        # while reading and decoding files.
        decode_memory = resources.decode_batch * limits.max_audio_seconds * limits.max_sample_rate * 4 * 2
        # At most one decode task per CPU at a time, and never more than there are blocks.
        # Decoding is CPU-bound, so more would not decode faster, and every task running at
        # once needs a worker process of its own, which imports torch before it decodes.
        decoders = TaskPoolStrategy(size=max(1, min(int(cluster.get("CPU", 1.0)), blocks)))
        ds = ds.map_batches(decode_stage, fn_kwargs={"sampling_rate": sampling_rate, "limits": limits.model_dump(),
                                                          "min_seconds": min_seconds, "segment": mode == "score"},
                            batch_size=resources.decode_batch, batch_format="pyarrow", num_cpus=decode_cpus,
                            memory=decode_memory, compute=decoders)
        # Audio first: in scoring, a row with speech and no text is encoded with its transcript.
        ds = ds.map_batches(**pool(AudioStage, resources.audio_gpus, resources.audio_batch, mode == "score"))
        ds = ds.map_batches(**pool(TextStage, resources.text_gpus, resources.text_batch))
        if mode == "score":
            ds = ds.map_batches(**pool(FusionStage, resources.fusion_gpus, resources.fusion_batch))

        bar = tqdm(total=len(todo), unit="row", desc=mode, disable=not progress, mininterval=1.0)
        last_log = time.monotonic()
        pending: dict[str, list[dict]] = {}  # windows of long recordings whose other windows are yet to come
        for batch in ds.iter_batches(batch_size=shard_rows, batch_format="pyarrow"):
            records = batch.to_pylist()
            if mode == "score":
                records = merge_segments(records, pending, model.labels)
                if not records:
                    continue
            table = to_table(records, schema)
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
    from model.training.feature_cache import encoder_fingerprint
    from model.text_encoder import TextEncoder

    text = TextEncoder(model.resolve(model.text_encoder), model.text_max_length, "cpu")
    audio = AudioEncoder(model.resolve(model.audio_encoder), "cpu")
    return {"text_fingerprint": encoder_fingerprint(text), "audio_fingerprint": encoder_fingerprint(audio)}
