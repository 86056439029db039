"""The training manifest: one row per utterance, as JSONL or CSV.

Columns: ``id, text, audio_path, split`` (train/valid/test), plus ``label`` (a
class name) and/or ``score`` (a float in [-3, 3]); optional ``speaker, start,
end`` (seconds within the audio file). ``audio_path`` is relative to the
manifest's folder; an empty ``audio_path`` marks a text-only item, which trains
the fusion head's "missing audio" path that serving also uses.

Loading checks only the structure (columns, split names, numbers). Whether the
content is usable (files exist, audio decodes, labels are known) is
``model.validate``'s job, so that all content problems are reported together.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")
REQUIRED = ("id", "text", "audio_path", "split")
OPTIONAL = ("label", "score", "speaker", "start", "end")
COLUMNS = REQUIRED + OPTIONAL


class ManifestError(ValueError):
    """The manifest cannot be parsed; the message lists every structural problem found."""


@dataclass
class Item:
    id: str
    text: str
    audio_path: str | None  # relative to the manifest folder; None = no audio
    split: str
    label: str | None = None
    score: float | None = None
    speaker: str | None = None
    start: float | None = None
    end: float | None = None

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class Manifest:
    items: list[Item]
    root: Path  # the folder audio paths are relative to
    source: Path | None = None

    def audio_file(self, item: Item) -> Path | None:
        return None if not item.audio_path else (self.root / item.audio_path)

    def split(self, name: str) -> list[Item]:
        return [item for item in self.items if item.split == name]

    def subset(self, keep: list[Item]) -> "Manifest":
        return Manifest(items=list(keep), root=self.root, source=self.source)


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip() == ""
    )


def _parse_row(row: dict, where: str, problems: list[str]) -> Item | None:
    def text_field(name: str) -> str | None:
        value = row.get(name)
        return None if _blank(value) else str(value)

    def float_field(name: str) -> float | None:
        value = row.get(name)
        if _blank(value):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append(f"{where}: {name}={value!r} is not a number")
            return None
        if not math.isfinite(number):
            problems.append(f"{where}: {name}={value!r} is not finite")
            return None
        return number

    item_id = text_field("id")
    split = text_field("split")
    before = len(problems)
    if item_id is None:
        problems.append(f"{where}: empty id")
    if split not in SPLITS:
        problems.append(f"{where}: split={split!r}; expected one of {', '.join(SPLITS)}")
    item = Item(
        id=item_id or "",
        # Empty text is kept (and reported by validation), not a parse error.
        text="" if _blank(row.get("text")) else str(row["text"]),
        audio_path=text_field("audio_path"),
        split=split or "",
        label=text_field("label"),
        score=float_field("score"),
        speaker=text_field("speaker"),
        start=float_field("start"),
        end=float_field("end"),
    )
    return item if len(problems) == before else None


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    if path.suffix.lower() == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ManifestError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise ManifestError(f"{path}:{n}: each line must be a JSON object")
                rows.append((f"{path.name}:{n}", row))
        return rows
    if path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            # Line numbers count the header as line 1.
            return [(f"{path.name}:{n}", row) for n, row in enumerate(reader, start=2)]
    raise ManifestError(f"{path}: a manifest must end in .jsonl or .csv")


def load_manifest(path: str | Path) -> Manifest:
    """Parse a manifest; raises ManifestError listing every structural problem."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    rows = _read_rows(path)
    if not rows:
        raise ManifestError(f"{path}: the manifest has no rows")
    columns = set().union(*(row.keys() for _, row in rows))
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s): {', '.join(missing)}")
    if "label" not in columns and "score" not in columns:
        raise ManifestError(f"{path}: needs a 'label' column, a 'score' column, or both")
    problems: list[str] = []
    items = [item for where, row in rows if (item := _parse_row(row, where, problems)) is not None]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{path}: {len(problems)} malformed row(s):\n  {shown}{more}")
    return Manifest(items=items, root=path.parent.resolve(), source=path.resolve())


def relative_audio_path(audio_file: str | Path, manifest_path: str | Path) -> str:
    """``audio_file`` relative to the folder of the manifest written at ``manifest_path``."""
    folder = Path(manifest_path).resolve().parent
    return Path(os.path.relpath(Path(audio_file).resolve(), folder)).as_posix()


def save_manifest(items: list[Item], path: str | Path) -> Path:
    """Write items as JSONL or CSV (by suffix). Audio paths are written as given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for item in items:
                row = {k: v for k, v in item.to_row().items() if v is not None or k in REQUIRED}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix.lower() == ".csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
            writer.writeheader()
            for item in items:
                writer.writerow({k: "" if v is None else v for k, v in item.to_row().items()})
    else:
        raise ManifestError(f"{path}: a manifest must end in .jsonl or .csv")
    return path
