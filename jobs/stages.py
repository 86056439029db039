"""The jobs' Ray Data stages: request checks and decoding in CPU tasks, encoders and fusion in actors.

Each row is treated exactly like one HTTP request: the same input checks and limits
(``deployments.http.parsing.check_input``, the service ``Limits``), the same decoding
(``model.audio.decode_audio``), the same encoders, length bucketing and fusion as the
Serve deployments, and the same error codes (``deployments.http.errors.status_for``).
A bad row is recorded with its error; it never stops the job.

Batches are Arrow tables, handled as lists of row dicts (Arrow nulls are plain None,
unlike pandas). Tensors travel as raw bytes (float32 audio; float16 features, as between
the Serve deployments) plus a length column: plain binary columns, whatever mix of
present and missing modalities a batch holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from deployments.http.errors import status_for
from deployments.http.parsing import check_input
from deployments.http.schema import Limits
from model.audio import decode_audio
from model.bundle import Bundle
from model.data.feature_table import pack_features, unpack_features


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


def _rows(batch: pa.Table) -> list[dict]:
    return batch.to_pylist()


def _table(rows: list[dict], drop: tuple[str, ...] = ()) -> pa.Table:
    return pa.Table.from_pylist([{k: v for k, v in row.items() if k not in drop} for row in rows])


def decode_stage(batch: pa.Table, sampling_rate: int, limits: dict, min_seconds: float = 0.0) -> pa.Table:
    """CPU task: the HTTP request checks, then audio decoding, for every row of a batch.

    ``limits`` are the service's ``Limits`` (as a dict, for Ray); ``min_seconds`` the audio
    encoder's receptive field, the same floor the driver applies.
    """
    service = Limits(**limits)
    alimits = service.audio_limits(min_seconds=min_seconds)
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
        from deployments.replica import configure_threads, replica_device

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
            tokenized = self.encoder.tokenize_each(texts)
            for row, features, truncated in zip(todo, self.encoder.encode_each(texts, tokenized), tokenized.truncated):
                row["text_features"] = pack_features(features)
                row["text_frames"] = int(features.shape[0])
                row["text_truncated"] = truncated

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

        from model.pipeline import FusionItem, fuse

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
