"""Stage 3 of training: encoder features for a manifest, extracted in batches and cached on disk.

A cache entry is keyed by the encoder (a hash of its weights, config and
tokenizer / feature-extractor settings) and by the data (ids and texts; audio
paths with size, mtime and segment), so changing either re-extracts and an
identical rerun reads the file back. Entries are safetensors files: per-item
frame features concatenated into one fp16 tensor plus the per-item lengths (and,
for audio items without text, the transcripts in the file's metadata).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from model.audio import AudioLimits, audio_duration, decode_audio
from model.audio_encoder import AudioEncoder
from model.data.feature_table import PrecomputedFeatures
from model.data.manifest import Item, Manifest
from model.text_encoder import TextEncoder

Features = list[torch.Tensor | None]  # per item [T_i, D] fp16; None = modality missing


def encoder_fingerprint(encoder: TextEncoder | AudioEncoder) -> str:
    """A hash of what determines the encoder's output: weights, config and preprocessing."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(encoder.model).__name__.encode())
    h.update(encoder.model.config.to_json_string(use_diff=False).encode())
    if isinstance(encoder, TextEncoder):
        backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
        h.update((backend.to_str() if backend is not None else repr(encoder.tokenizer.get_vocab())).encode())
        h.update(f"max_length={encoder.max_length}".encode())
    else:
        h.update(encoder.feature_extractor.to_json_string().encode())
    for name, tensor in sorted(encoder.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def load_waveform(path: Path, rate: int, start: float | None = None, end: float | None = None,
                  max_seconds: float | None = None) -> torch.Tensor:
    """A file (or its [start, end] segment, in seconds) as mono float32 at ``rate``, at most ``max_seconds``.

    Decoded by the service's decoder (``decode_audio``), so training sees exactly the
    waveform serving would for the same file.
    """
    return decode_audio(Path(path), rate, AudioLimits.for_files(max_seconds), start, end)


def _data_key(parts: list) -> str:
    return hashlib.blake2b(json.dumps(parts, ensure_ascii=False).encode(), digest_size=16).hexdigest()


def _read_entry(path: Path, n: int) -> Features | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except Exception:  # a partial or corrupt cache file: extract again
        return None
    lengths = tensors["lengths"].tolist()
    if len(lengths) != n:
        return None
    chunks = torch.split(tensors["features"], lengths)
    return [chunk if length > 0 else None for chunk, length in zip(chunks, lengths)]


def _write_entry(path: Path, features: Features, dim: int, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = torch.tensor([0 if f is None else f.shape[0] for f in features], dtype=torch.int64)
    present = [f for f in features if f is not None]
    flat = torch.cat(present) if present else torch.zeros(0, dim, dtype=torch.float16)
    tmp = path.with_suffix(".tmp")
    save_file({"features": flat.contiguous(), "lengths": lengths}, str(tmp),
              metadata={k: str(v) for k, v in meta.items()})
    tmp.replace(path)  # atomic: a killed run never leaves a half-written entry under the real name


def _batched(order: list[int], batch_size: int):
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size]


def text_features(encoder: TextEncoder, items: list[Item], cache_dir: Path | None,
                  batch_size: int = 64, progress: bool = True, desc: str = "text features",
                  precomputed: PrecomputedFeatures | None = None) -> Features:
    """``precomputed`` (features the batch job extracted with this encoder) fill the cache
    entry for the items it has; only the others are encoded here."""
    key = _data_key([[i.id, i.text] for i in items])
    path = cache_dir / f"text-{encoder_fingerprint(encoder)}-{key}.safetensors" if cache_dir else None
    if path is not None and (cached := _read_entry(path, len(items))) is not None:
        return cached
    out: Features = [precomputed.text_for(i.text) if precomputed else None for i in items]
    # Similar lengths together keeps padding (wasted compute) small.
    order = sorted((i for i in range(len(items)) if out[i] is None), key=lambda i: len(items[i].text))
    with tqdm(total=len(order), desc=desc, unit="text", disable=not progress) as bar:
        for batch in _batched(order, batch_size):
            encoded = encoder.encode([items[i].text for i in batch]).unpad()
            for i, feat in zip(batch, encoded):
                out[i] = feat
            bar.update(len(batch))
    if path is not None:
        _write_entry(path, out, encoder.hidden_size, {"encoder": encoder.name_or_path, "items": len(items)})
    return out


def audio_features(encoder: AudioEncoder, manifest: Manifest, items: list[Item], cache_dir: Path | None,
                   batch_size: int = 16, max_seconds: float | None = 20.0, progress: bool = True,
                   desc: str = "audio features", precomputed: PrecomputedFeatures | None = None) -> Features:
    """Items without audio get None. Clips longer than ``max_seconds`` are cut, to bound the cost."""
    return audio_features_and_transcripts(encoder, manifest, items, cache_dir, batch_size, max_seconds, progress,
                                          desc, precomputed, transcribe=False)[0]


def audio_features_and_transcripts(
    encoder: AudioEncoder, manifest: Manifest, items: list[Item], cache_dir: Path | None, batch_size: int = 16,
    max_seconds: float | None = 20.0, progress: bool = True, desc: str = "audio features",
    precomputed: PrecomputedFeatures | None = None, transcribe: bool = True,
) -> tuple[Features, list[str | None]]:
    """``audio_features`` plus, for items with audio but no text when ``transcribe`` and the encoder can
    transcribe, the greedy transcript from the same forward pass (serving does the same); else None."""
    files = [manifest.audio_file(item) for item in items]
    wanted = [transcribe and encoder.can_transcribe and f is not None and not item.text.strip()
              for item, f in zip(items, files)]
    parts = []
    for item, f in zip(items, files):
        stat = f.stat() if f is not None else None
        parts.append([item.id, str(f), stat and stat.st_size, stat and stat.st_mtime_ns, item.start, item.end])
    key = _data_key([parts, max_seconds] + ([wanted] if any(wanted) else []))
    path = cache_dir / f"audio-{encoder_fingerprint(encoder)}-{key}.safetensors" if cache_dir else None
    if path is not None and (cached := _read_entry(path, len(items))) is not None:
        return cached, _read_transcripts(path, len(items))
    out: Features = [None] * len(items)
    heard: list[str | None] = [None] * len(items)
    for i, (item, f) in enumerate(zip(items, files)):
        if precomputed is not None and f is not None and item.start is None and item.end is None and not wanted[i]:
            out[i] = precomputed.audio_for(f, max_seconds)  # whole files only: the table has no segments
    present = [i for i, f in enumerate(files) if f is not None and out[i] is None]
    durations = {i: _duration(items[i], files[i]) for i in present}
    order = sorted(present, key=durations.get)
    with tqdm(total=len(present), desc=desc, unit="clip", disable=not progress) as bar:
        for batch in _batched(order, batch_size):
            waves = [load_waveform(files[i], encoder.sampling_rate, items[i].start, items[i].end, max_seconds)
                     for i in batch]
            if any(wanted[i] for i in batch):
                encoded, texts = encoder.encode_with_transcripts(waves)
                for i, text in zip(batch, texts):
                    heard[i] = text if wanted[i] else None
            else:
                encoded = encoder.encode(waves)
            for i, feat in zip(batch, encoded.unpad()):
                out[i] = feat
            bar.update(len(batch))
    if path is not None:
        _write_entry(path, out, encoder.hidden_size, {"encoder": encoder.name_or_path, "items": len(items),
                                                      "transcripts": json.dumps(heard)})
    return out, heard


def _read_transcripts(path: Path, n: int) -> list[str | None]:
    with safe_open(str(path), "pt") as entry:
        stored = (entry.metadata() or {}).get("transcripts")
    heard = json.loads(stored) if stored else None
    return heard if isinstance(heard, list) and len(heard) == n else [None] * n


def _duration(item: Item, path: Path) -> float:
    duration = audio_duration(path)
    end = duration if item.end is None else min(item.end, duration)
    return end - (item.start or 0.0)
