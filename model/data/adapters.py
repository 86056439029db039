"""Converting public corpora (MMSA, MELD) into the manifest format (``model.data.manifest``).

* MMSA's ``label.csv`` (CMU-MOSI, CMU-MOSEI, CH-SIMS): columns read by name
  (video_id, clip_id, text, label, annotation, mode); audio expected at
  ``wav/<video_id>/<clip_id>.wav`` under the audio root (default: the csv's folder).
  ``label`` is the sentiment score; CH-SIMS scores lie in [-1, 1] and are scaled
  by 3 into this project's [-3, 3] convention (``score_scale``).
* MELD's ``{train,dev,test}_sent_emo.csv``: Utterance, Sentiment, Emotion,
  Dialogue_ID, Utterance_ID (and Speaker); audio extracted by the user to
  ``dia{D}_utt{U}.wav``, one folder per split because MELD restarts dialogue ids
  in every split.

Adapters keep every row they can parse and write the audio path whether or not
the file exists: ``model.data.validate`` then reports missing files with counts.
Rows that cannot be parsed at all are skipped and counted in the summary.

CLI::

    python -m model.data.adapters mmsa --csv MOSI/label.csv --dataset mosi --out data/mosi.jsonl
    python -m model.data.adapters meld --csv train=MELD/train_sent_emo.csv --audio train=MELD/wav/train \\
        --csv valid=MELD/dev_sent_emo.csv --audio valid=MELD/wav/dev --target sentiment --out data/meld.jsonl
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from model.data.manifest import Item, relative_audio_path, save_manifest

MMSA_SCORE_SCALE = {"mosi": 1.0, "mosei": 1.0, "sims": 3.0}
MMSA_SPLITS = {"train": "train", "valid": "valid", "test": "test"}
MELD_TARGETS = {"sentiment": "Sentiment", "emotion": "Emotion"}


@dataclass
class AdapterResult:
    items: list[Item]
    skipped: list[str] = field(default_factory=list)  # "where: why", one per unparseable row
    missing_audio: int = 0

    def summary(self) -> dict:
        splits = {}
        for item in self.items:
            splits[item.split] = splits.get(item.split, 0) + 1
        return {"items": len(self.items), "by_split": splits, "skipped_rows": len(self.skipped),
                "skipped_examples": self.skipped[:5], "audio_files_missing": self.missing_audio}


def _read_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # MELD's csvs contain Windows-1252 punctuation in places.
        text = raw.decode("cp1252", errors="replace")
    return list(csv.DictReader(io.StringIO(text, newline="")))


def _require(rows: list[dict], columns: tuple[str, ...], path: Path) -> None:
    present = set(rows[0].keys()) if rows else set()
    missing = [c for c in columns if c not in present]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(sorted(present))}")


def mmsa(label_csv: str | Path, out_manifest: str | Path, dataset: str = "mosi",
         audio_root: str | Path | None = None, score_scale: float | None = None) -> AdapterResult:
    """MMSA label.csv → manifest items (not yet written). Audio paths are relative to ``out_manifest``."""
    label_csv = Path(label_csv)
    root = Path(audio_root) if audio_root else label_csv.parent
    scale = MMSA_SCORE_SCALE[dataset.lower()] if score_scale is None else score_scale
    rows = _read_csv(label_csv)
    _require(rows, ("video_id", "clip_id", "text", "label", "annotation", "mode"), label_csv)
    result = AdapterResult(items=[])
    for n, row in enumerate(rows, start=2):
        where = f"{label_csv.name}:{n}"
        split = MMSA_SPLITS.get(str(row["mode"]).strip().lower())
        if split is None:
            result.skipped.append(f"{where}: mode={row['mode']!r}")
            continue
        try:
            score = round(float(row["label"]) * scale, 6)
        except ValueError:
            result.skipped.append(f"{where}: label={row['label']!r} is not a number")
            continue
        video, clip = str(row["video_id"]).strip(), str(row["clip_id"]).strip()
        audio = root / "wav" / video / f"{clip}.wav"
        result.missing_audio += not audio.is_file()
        annotation = str(row["annotation"]).strip().lower()
        result.items.append(Item(
            id=f"{video}/{clip}", text=str(row["text"]).strip(),
            audio_path=relative_audio_path(audio, out_manifest), split=split,
            label=annotation or None, score=score,
        ))
    return result


def meld(csvs: dict[str, str | Path], audio_dirs: dict[str, str | Path], out_manifest: str | Path,
         target: str = "sentiment") -> AdapterResult:
    """MELD csvs by split (train/valid/test) → manifest items; ``target`` is sentiment or emotion."""
    column = MELD_TARGETS[target]
    result = AdapterResult(items=[])
    for split, csv_path in csvs.items():
        if split not in ("train", "valid", "test"):
            raise ValueError(f"MELD split must be train, valid or test, not {split!r}")
        csv_path = Path(csv_path)
        audio_dir = Path(audio_dirs.get(split, csv_path.parent))
        rows = _read_csv(csv_path)
        _require(rows, ("Utterance", "Sentiment", "Emotion", "Dialogue_ID", "Utterance_ID"), csv_path)
        for n, row in enumerate(rows, start=2):
            try:
                dialogue, utterance = int(row["Dialogue_ID"]), int(row["Utterance_ID"])
            except ValueError:
                result.skipped.append(f"{csv_path.name}:{n}: Dialogue_ID/Utterance_ID not integers")
                continue
            audio = audio_dir / f"dia{dialogue}_utt{utterance}.wav"
            result.missing_audio += not audio.is_file()
            result.items.append(Item(
                # MELD restarts dialogue numbering in every split, so the split is part of the id.
                id=f"{split}/dia{dialogue}_utt{utterance}", text=str(row["Utterance"]).strip(),
                audio_path=relative_audio_path(audio, out_manifest), split=split,
                label=str(row[column]).strip().lower() or None,
                speaker=(row.get("Speaker") or "").strip() or None,
            ))
    return result


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    out = {}
    for value in values or []:
        split, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"{option} expects SPLIT=PATH, got {value!r}")
        out[split] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.data.adapters", description="Convert a corpus to a manifest.")
    sub = parser.add_subparsers(dest="corpus", required=True)
    p = sub.add_parser("mmsa", help="MMSA label.csv (CMU-MOSI, CMU-MOSEI, CH-SIMS)")
    p.add_argument("--csv", required=True, type=Path, help="label.csv")
    p.add_argument("--dataset", choices=sorted(MMSA_SCORE_SCALE), default="mosi")
    p.add_argument("--audio-root", type=Path, help="folder holding wav/<video_id>/<clip_id>.wav (default: the csv's)")
    p.add_argument("--score-scale", type=float, help="multiply scores by this (default: 3 for sims, else 1)")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.jsonl or .csv)")
    p = sub.add_parser("meld", help="MELD *_sent_emo.csv")
    p.add_argument("--csv", action="append", required=True, metavar="SPLIT=CSV", help="repeat per split (train/valid/test)")
    p.add_argument("--audio", action="append", metavar="SPLIT=DIR", help="folder of dia{D}_utt{U}.wav per split")
    p.add_argument("--target", choices=sorted(MELD_TARGETS), default="sentiment")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.corpus == "mmsa":
        result = mmsa(args.csv, args.out, args.dataset, args.audio_root, args.score_scale)
    else:
        result = meld(_pairs(args.csv, "--csv"), _pairs(args.audio, "--audio"), args.out, args.target)
    save_manifest(result.items, args.out)
    print(json.dumps({"manifest": str(args.out), **result.summary()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
