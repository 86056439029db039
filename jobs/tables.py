"""The jobs' output tables: fixed Arrow schemas, and Parquet shards written atomically and read back."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.data.feature_table import METADATA_KEY, SHARD_GLOB, shard_metadata, shard_paths, unpack_features


def score_schema(labels: list[str]) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("split", pa.string()), ("true_label", pa.string()), ("true_score", pa.float64()),
        ("label", pa.string()), ("sentiment", pa.float64()),
        ("scores", pa.struct([(label, pa.float64()) for label in labels])),
        ("text_label", pa.string()), ("text_sentiment", pa.float64()),
        ("audio_label", pa.string()), ("audio_sentiment", pa.float64()),
        ("modalities", pa.string()), ("text_truncated", pa.bool_()),
        # What the audio encoder heard, for a row with speech and no text on a bundle that transcribes
        # (its text branch read this), as the API's "transcript".
        ("transcript", pa.string()),
        # A recording longer than segment_seconds: its windows' predictions, as the API's "segments" (JSON).
        ("segments", pa.string()),
        ("error_code", pa.string()), ("error", pa.string()), ("http_status", pa.int32()),
    ])


def features_schema() -> pa.Schema:
    """The feature table ``model.data.feature_table`` reads: what was encoded, and the features."""
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


def to_table(records: list[dict], schema: pa.Schema) -> pa.Table:
    """A pipeline batch's rows as a table with the fixed output schema (so every shard agrees)."""
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


def read_shards(out: str | Path) -> pa.Table:
    """All complete shards of an output folder as one table."""
    return pa.concat_tables([pq.read_table(s) for s in shard_paths(out)])


def feature_arrays(row: dict, text_dim: int, audio_dim: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A features row's ``[T, D]`` float16 arrays (None where the modality is missing)."""
    return (unpack_features(row["text_features"], row["text_frames"], text_dim),
            unpack_features(row["audio_features"], row["audio_frames"], audio_dim))
