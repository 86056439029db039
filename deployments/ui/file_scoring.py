"""The UI's file scoring (Batch tab): a manifest plus an optional zip of audio in, one CSV of predictions out.

Every row goes through ``driver.predict``, the same path as the API, so batch
results equal single requests.

Manifest columns (CSV header or JSONL keys, read by ``model.data.manifest``'s lenient
mode): ``text`` and/or ``audio`` (a file name inside the zip; ``audio_path``, the
batch jobs' name, is accepted too), optional ``id``. Other columns are ignored. The output's ``error_code``/``error``
columns match ``jobs`` (the Ray Data batch jobs) and the HTTP API's codes.

The zip is untrusted input. It is never extracted to disk, so a member named
``../../etc/x`` (zip slip) has nowhere to land: members are looked up by name and
read into memory one at a time. Zip bombs are bounded three ways: the upload size,
the member count, and the total *declared* uncompressed size, which ``zipfile``
also enforces while reading (it stops at the declared size and fails the CRC).
"""

from __future__ import annotations

import asyncio
import csv
import logging
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Awaitable, Callable

from deployments.http.errors import ServiceError, status_for
from deployments.http.parsing import PredictInput, check_input
from model.data.manifest import ManifestError, read_manifest_rows

logger = logging.getLogger("ray.serve")


# Room for the multipart framing around an uploaded file.
UPLOAD_OVERHEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class BatchLimits:
    max_manifest_bytes: int = 5 * 1024 * 1024
    max_rows: int = 1_000
    # Every request to the driver, Gradio uploads included, passes the driver's
    # body cap (limits.max_body_bytes); ``for_body_limit`` keeps the zip under it.
    max_zip_bytes: int = 50 * 1024 * 1024
    max_zip_members: int = 2_000
    max_unzipped_bytes: int = 200 * 1024 * 1024
    # Rows in flight at once: enough for the model replicas' batchers to form batches,
    # few enough that one batch job does not crowd out interactive users.
    parallel: int = 8

    @classmethod
    def for_body_limit(cls, max_body_bytes: int) -> "BatchLimits":
        usable = max(1024, max_body_bytes - UPLOAD_OVERHEAD_BYTES)
        defaults = cls()
        return cls(max_zip_bytes=min(defaults.max_zip_bytes, usable),
                   max_manifest_bytes=min(defaults.max_manifest_bytes, usable))


class BatchError(ServiceError):
    """The upload as a whole is unusable (as opposed to one failing row)."""


@dataclass
class Row:
    index: int  # 1-based row number in the manifest
    id: str
    text: str | None
    audio: str | None


def _text(value: str | None) -> str | None:
    return value if value is not None and value.strip() else None


def read_manifest(path: str | Path, limits: BatchLimits) -> list[Row]:
    """The upload's rows, read by ``model.data.manifest`` in its lenient mode (columns
    matched case-insensitively, ``audio`` or ``audio_path``, ids optional). A file unusable
    as a whole, or a line that is not a JSON object, refuses the upload with the reason."""
    try:
        manifest = read_manifest_rows(path, require_ids=False, max_bytes=limits.max_manifest_bytes,
                                      max_rows=limits.max_rows)
    except ManifestError as exc:
        raise BatchError(str(exc)) from None
    if manifest.errors:
        raise BatchError(f"manifest {manifest.errors[0].error.message}")
    return [Row(index=row.number, id=_text(row.id) or str(row.number), text=_text(row.text), audio=_text(row.audio_path))
            for row in manifest.rows]


def _member_key(name: str) -> str:
    return str(PurePosixPath(name.replace("\\", "/"))).lstrip("/")


class AudioArchive:
    """Read-only, in-memory access to the audio files of an uploaded zip."""

    def __init__(self, path: str | Path, limits: BatchLimits, max_audio_bytes: int):
        path = Path(path)
        if path.stat().st_size > limits.max_zip_bytes:
            raise BatchError(f"the zip is {path.stat().st_size} bytes; the limit is {limits.max_zip_bytes}")
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError):
            raise BatchError("the audio upload is not a valid zip file") from None
        infos = [info for info in self.zip.infolist() if not info.is_dir()]
        if len(infos) > limits.max_zip_members:
            raise BatchError(f"the zip has {len(infos)} files; the limit is {limits.max_zip_members}")
        total = sum(info.file_size for info in infos)
        if total > limits.max_unzipped_bytes:
            raise BatchError(f"the zip unpacks to {total} bytes; the limit is {limits.max_unzipped_bytes}")
        self.max_audio_bytes = max_audio_bytes
        self.members = {_member_key(info.filename): info for info in infos}

    def read(self, name: str) -> bytes:
        """One member's bytes; raises ``BatchError`` (reported on the row) when unusable."""
        info = self.members.get(_member_key(name))
        if info is None:
            raise BatchError(f"'{name}' is not in the zip", "audio_not_in_zip")
        if info.flag_bits & 0x1:
            raise BatchError(f"'{name}' is encrypted", "audio_unreadable")
        if info.file_size > self.max_audio_bytes:
            raise BatchError(f"'{name}' is {info.file_size} bytes; the audio limit is {self.max_audio_bytes}",
                             "audio_too_large")
        try:
            with self.zip.open(info) as member:
                data = member.read(self.max_audio_bytes + 1)
        except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
            raise BatchError(f"'{name}' could not be read from the zip: {str(exc)[:120]}", "audio_unreadable") from None
        if len(data) > self.max_audio_bytes:
            raise BatchError(f"'{name}' exceeds the audio limit of {self.max_audio_bytes} bytes", "audio_too_large")
        return data

    def close(self) -> None:
        self.zip.close()


Predict = Callable[[PredictInput, str], Awaitable[dict]]
Progress = Callable[[int, int], None]


async def _predict_row(row: Row, archive: AudioArchive | None, predict: Predict, limits, batch_id: str) -> dict:
    out = {"row": row.index, "id": row.id, "text": row.text or "", "audio": row.audio or ""}
    try:
        audio = None
        if row.audio is not None:
            if archive is None:
                raise BatchError(f"row names audio '{row.audio}' but no zip of audio was uploaded", "audio_not_in_zip")
            # Inflating a member is CPU work: keep it off the driver's event loop.
            audio = await asyncio.to_thread(archive.read, row.audio)
        request = check_input(row.text, audio, limits)
        result = await predict(request, f"{batch_id}-{row.index}")
    except Exception as exc:  # every failure becomes a reported row, never a dropped one
        status, code, message, _ = status_for(exc)
        if status >= 500 and not isinstance(exc, ServiceError):
            logger.exception("batch %s row %d failed", batch_id, row.index)
        return out | {"status": "error", "error_code": code, "error": message}
    out |= {"status": "ok", "error_code": "", "error": "", "label": result["label"], "sentiment": round(result["sentiment"], 4)}
    out |= {f"score_{label}": round(p, 4) for label, p in result["scores"].items()}
    for branch in ("text", "audio"):
        if branch in result["modalities"]:
            out[f"{branch}_label"] = result["modalities"][branch]["label"]
            out[f"{branch}_sentiment"] = round(result["modalities"][branch]["sentiment"], 4)
    return out


async def run_batch(rows: list[Row], archive: AudioArchive | None, predict: Predict, request_limits,
                    labels: list[str], batch: BatchLimits, progress: Progress) -> list[dict]:
    """Predict every row, ``batch.parallel`` at a time, in manifest order."""
    batch_id = f"batch-{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(batch.parallel)
    done = 0

    async def one(row: Row) -> dict:
        nonlocal done
        async with gate:
            result = await _predict_row(row, archive, predict, request_limits, batch_id)
        done += 1
        progress(done, len(rows))
        return result

    return list(await asyncio.gather(*(one(row) for row in rows)))


def columns(labels: list[str]) -> list[str]:
    return (["row", "id", "text", "audio", "status", "error_code", "error", "label", "sentiment"]
            + [f"score_{label}" for label in labels]
            + ["text_label", "text_sentiment", "audio_label", "audio_sentiment"])


OUTPUT_DIR = Path(tempfile.gettempdir()) / "sentiment-ui-batch"
OUTPUT_TTL_S = 3600


def write_csv(results: list[dict], labels: list[str]) -> Path:
    """Write the results where Gradio can pick them up; results older than an hour are pruned."""
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - OUTPUT_TTL_S
    for old in OUTPUT_DIR.glob("predictions-*.csv"):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            pass
    path = OUTPUT_DIR / f"predictions-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns(labels), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    return path
