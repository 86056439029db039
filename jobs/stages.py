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
import torch

from deployments.http.errors import status_for
from deployments.http.parsing import check_input
from deployments.http.schema import Limits
from model.audio import decode_audio
from model.bundle import Bundle
from model.data.feature_table import pack_features, unpack_features
from model.segments import duration_weighted, joined_transcript, segment_entry, split_on_silence, weighted_mean


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


def decode_stage(batch: pa.Table, sampling_rate: int, limits: dict, min_seconds: float = 0.0,
                 segment: bool = False) -> pa.Table:
    """CPU task: the HTTP request checks, then audio decoding, for every row of a batch.

    ``limits`` are the service's ``Limits`` (as a dict, for Ray); ``min_seconds`` the audio
    encoder's receptive field, the same floor the driver applies. With ``segment`` (scoring),
    a recording is checked against the long-recording limits, as ``/v1/predict`` does, and
    one longer than ``segment_seconds`` leaves as one row per window (``model.segments``),
    which ``merge_segments`` joins again after fusion.
    """
    service = Limits(**limits)
    alimits = service.long_audio_limits(min_seconds) if segment else service.audio_limits(min_seconds=min_seconds)
    rows = _rows(batch)
    out = []
    for row in rows:
        row["wave"], row["wave_len"] = None, 0
        row["audio_size"] = row["audio_mtime_ns"] = row["audio_seconds"] = None
        row["segment"] = row["segment_count"] = row["segment_start"] = row["segment_end"] = None
        out.append(row)
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
            parsed = check_input(row["text"], audio, service, long_audio=segment)
            row["text"] = parsed.text
            if parsed.audio is not None:
                wave = decode_audio(parsed.audio, sampling_rate, alimits).numpy().astype(np.float32)
                row["wave"], row["wave_len"] = wave.tobytes(), len(wave)
                # Identify the file the features came from, so training can match them by content.
                row["audio_size"], row["audio_mtime_ns"] = stat.st_size, stat.st_mtime_ns
                row["audio_seconds"] = len(wave) / sampling_rate
                windows = split_on_silence(torch.from_numpy(wave), sampling_rate, service.segment_seconds,
                                           min_seconds=max(0.5, min_seconds)) if segment else []
                if len(windows) > 1:
                    out.pop()
                    for k, window in enumerate(windows):
                        clip = wave[window.start:window.end]
                        start, end = window.seconds(sampling_rate)
                        out.append({**row, "wave": clip.tobytes(), "wave_len": len(clip), "segment": k,
                                    "segment_count": len(windows), "segment_start": start, "segment_end": end})
        except Exception as exc:  # every failure becomes this row's error
            row.update(error_fields(exc))
            row["text"] = None
    return _table(out)


def merge_segments(rows: list[dict], pending: dict[str, list[dict]], labels: list[str]) -> list[dict]:
    """The fused rows with the windows of each long recording joined into one row, once all
    of its windows have arrived (a recording's windows may come in different batches):
    label, scores and sentiments are the windows' duration-weighted mean, as the API's, and
    ``segments`` lists each window's prediction as JSON. A window's error is the row's."""
    merged = []
    for row in rows:
        if row.get("segment") is None:
            merged.append(row)
            continue
        windows = pending.setdefault(row["id"], [])
        windows.append(row)
        if len(windows) < row["segment_count"]:
            continue
        del pending[row["id"]]
        windows.sort(key=lambda w: w["segment"])
        first = {k: v for k, v in windows[0].items() if k not in ("segment", "segment_start", "segment_end")}
        failed = next((w for w in windows if w["error_code"] is not None), None)
        if failed is not None:
            first.update({k: failed[k] for k in ("error_code", "error", "http_status")})
            first.update(dict.fromkeys(FusionStage.OUTPUTS))
            merged.append(first)
            continue
        durations = [w["segment_end"] - w["segment_start"] for w in windows]
        fused = [{"label": w["label"], "scores": json.loads(w["scores"]), "sentiment": w["sentiment"]} for w in windows]
        overall = duration_weighted(fused, durations, labels)
        first.update(label=overall["label"], sentiment=overall["sentiment"], scores=json.dumps(overall["scores"]))
        for name in ("text", "audio"):
            if all(w[f"{name}_sentiment"] is not None for w in windows):
                first[f"{name}_sentiment"] = weighted_mean([w[f"{name}_sentiment"] for w in windows], durations)
                first[f"{name}_label"] = None  # a mean of labels is not a label; the sentiment is
        first["segments"] = json.dumps([segment_entry(w["segment_start"], w["segment_end"], p, w["transcript"])
                                        for w, p in zip(windows, fused)])
        first["transcript"] = joined_transcript([w["transcript"] for w in windows])
        merged.append(first)
    return merged


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
            texts = [row["text"] if row["text"] is not None else row["transcript"] for row in todo]
            tokenized = self.encoder.tokenize_each(texts)
            for row, features, truncated in zip(todo, self.encoder.encode_each(texts, tokenized), tokenized.truncated):
                row["text_features"] = pack_features(features)
                row["text_frames"] = int(features.shape[0])
                row["text_truncated"] = truncated

        # Speech without text reads its transcript, as the driver does; nothing heard: no text branch.
        self._run([r for r in rows if r["error_code"] is None and (r["text"] is not None or r["transcript"])], compute)
        return _table(rows)


class AudioStage(_Stage):
    """Audio features and, with ``transcribe`` on a bundle that can, the transcript of each
    row that has speech but no text (the same forward pass, as in the AudioEncoder
    deployment): TextStage then encodes it, so such a row is answered as the API answers it."""

    def __init__(self, bundle_path: str, transcribe: bool = False):
        super().__init__(bundle_path)
        from model.audio_encoder import AudioEncoder

        self.encoder = AudioEncoder(self.bundle.resolve(self.bundle.audio_encoder), self.device,
                                    transcribe=transcribe and self.bundle.transcribe)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        rows = _rows(batch)
        for row in rows:
            row["audio_features"], row["audio_frames"], row["transcript"] = None, 0, None

        def compute(todo):
            waves = [torch.from_numpy(np.frombuffer(row["wave"], dtype=np.float32).copy()) for row in todo]
            # The same length buckets as the AudioEncoder deployment: little padding per forward pass.
            features, heard = self.encoder.encode_each_with_transcripts(waves, [row["text"] is None for row in todo])
            for row, f, transcript in zip(todo, features, heard):
                row["audio_features"], row["audio_frames"], row["transcript"] = pack_features(f), int(f.shape[0]), transcript

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
