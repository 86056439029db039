"""The Parquet feature table: encoder features computed at scale, read back for training.

``python -m jobs features`` (Ray Data, any number of nodes and GPUs) writes
a folder of Parquet shards with one row per manifest row: the text it encoded, the audio
file it decoded, and both encoders' frame features as float16 bytes plus a frame count.
The shards' metadata holds the fingerprints of the encoders that produced them.

Training reads such a folder with ``PrecomputedFeatures``: an item whose text (or audio
file) is in the table takes its features from there instead of running the encoder, and
the training feature cache is filled with the result. Features are matched by content
(the exact text; the audio file's path, size and modification time), never by id alone,
because two manifests may reuse an id for different audio. This module needs only
pyarrow: no Ray.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

SHARD_GLOB = "part-*.parquet"
METADATA_KEY = b"sentiment_batch"


def pack_features(features: torch.Tensor) -> bytes:
    """``[T, D]`` features as the float16 bytes a table cell holds."""
    return features.detach().to("cpu", torch.float16).contiguous().numpy().tobytes()


def unpack_features(blob: bytes | None, frames: int, dim: int) -> np.ndarray | None:
    """A ``[T, D]`` float16 array from a table cell (None: the modality is missing)."""
    if not blob or not frames:
        return None
    return np.frombuffer(blob, dtype=np.float16).reshape(int(frames), dim)


def shard_paths(folder: str | Path) -> list[Path]:
    shards = sorted(Path(folder).glob(SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"no {SHARD_GLOB} in {folder}: run `python -m jobs features` first")
    return shards


def shard_metadata(shard: Path) -> dict:
    return json.loads((pq.read_schema(shard).metadata or {}).get(METADATA_KEY, b"{}"))


def audio_file_key(path: str | Path) -> tuple[str, int, int]:
    """What identifies an audio file's content cheaply: resolved path, size, mtime."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


class FeatureTableMismatch(ValueError):
    """The table was extracted with other encoders than the ones being trained."""


@dataclass
class PrecomputedFeatures:
    """Features from a feature table, looked up by text and by audio file."""

    source: Path
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    audio: dict[tuple[str, int, int], tuple[torch.Tensor, float]] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=lambda: {"text": 0, "audio": 0})

    @classmethod
    def load(cls, folder: str | Path, text_fingerprint: str, audio_fingerprint: str,
             text_dim: int, audio_dim: int) -> "PrecomputedFeatures":
        table = cls(source=Path(folder))
        for shard in shard_paths(folder):
            meta = shard_metadata(shard)
            if meta.get("mode") != "features":
                raise FeatureTableMismatch(f"{shard} holds {meta.get('mode')!r} output, not features")
            for kind, expected in (("text", text_fingerprint), ("audio", audio_fingerprint)):
                if meta.get(f"{kind}_fingerprint") != expected:
                    raise FeatureTableMismatch(
                        f"{shard} was extracted with another {kind} encoder than the one being trained "
                        f"(fingerprint {meta.get(f'{kind}_fingerprint')!r}, expected {expected!r}); "
                        "extract again with the same bundle, or train without --features")
            for row in pq.read_table(shard).to_pylist():
                table._add(row, text_dim, audio_dim)
        return table

    def _add(self, row: dict, text_dim: int, audio_dim: int) -> None:
        if row.get("error_code") is not None:
            return  # the batch job recorded why; training extracts (or reports) it itself
        text = unpack_features(row["text_features"], row["text_frames"], text_dim)
        if text is not None and row.get("text") is not None:
            self.text[row["text"]] = torch.from_numpy(text.copy())
        audio = unpack_features(row["audio_features"], row["audio_frames"], audio_dim)
        if audio is not None and row.get("audio_path"):
            try:
                key = audio_file_key(row["audio_path"])
            except OSError:
                return  # the file is gone: nothing to match it against
            # The table records the file's size and mtime at extraction; a file changed since
            # then no longer matches, so it is extracted again.
            if key[1:] == (row.get("audio_size"), row.get("audio_mtime_ns")):
                self.audio[key] = (torch.from_numpy(audio.copy()), float(row["audio_seconds"]))

    def text_for(self, text: str) -> torch.Tensor | None:
        found = self.text.get(text)
        self.used["text"] += found is not None
        return found

    def audio_for(self, path: Path, max_seconds: float | None) -> torch.Tensor | None:
        """Features of a whole file, if the table has them and the file fits ``max_seconds``
        (a longer file is cut for training, which the table's full-length features are not)."""
        try:
            found = self.audio.get(audio_file_key(path))
        except OSError:
            return None
        if found is None or (max_seconds is not None and found[1] > max_seconds):
            return None
        self.used["audio"] += 1
        return found[0]
