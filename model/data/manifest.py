"""Reading and writing manifests (one row per utterance, JSONL or CSV), strictly or leniently.

Columns: ``id, text, audio_path, split`` (train/valid/test), plus ``label`` (a
class name) and/or ``score`` (a float in [-3, 3]); optional ``speaker, start,
end`` (seconds within the audio file). ``audio_path`` is relative to the
manifest's folder; an empty ``audio_path`` marks a text-only item, which trains
the fusion head's "missing audio" path that serving also uses. Column names are
matched case-insensitively; a UTF-8 byte-order mark is ignored.

Two modes over one reader:

* strict, ``load_manifest`` (training): any structural problem (a column, a split
  name, a number) raises ``ManifestError`` listing every one found. Whether the
  content is usable (files exist, audio decodes, labels are known) is
  ``model.data.validate``'s job, so that all content problems are reported together.
* lenient, ``read_manifest_rows`` (scoring: batch jobs, the UI's file tab): every
  field is optional and a bad row becomes a row with an error, so a job records it
  and goes on. Only a file that is unusable as a whole raises ``ManifestError``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "valid", "test")
REQUIRED = ("id", "text", "audio_path", "split")
OPTIONAL = ("label", "score", "speaker", "start", "end")
COLUMNS = REQUIRED + OPTIONAL
# Lenient mode also takes ``audio``, the name the UI's file tab documents.
AUDIO_COLUMNS = ("audio_path", "audio")


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

    def subset(self, keep: list[Item]) -> "Manifest":
        return Manifest(items=list(keep), root=self.root, source=self.source)


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip() == ""
    )


# --------------------------------------------------------------------------- the one reader


@dataclass
class _Record:
    line: int  # JSONL line, or CSV line with the header as line 1
    row: dict | None  # None: the line is not a JSON object
    not_json: str | None = None  # the parser's message when the line is not JSON at all


def _read_records(path: Path, suffixes: tuple[str, ...] | None, max_bytes: int | None = None,
                  max_rows: int | None = None) -> tuple[list[_Record], bool, set[str]]:
    """Every non-blank record (keys stripped and lower-cased), whether the file is CSV, and its columns.

    ``suffixes``: the accepted ones (None: any; all but ``.csv`` are read as JSONL).
    Raises ManifestError for a file unusable as a whole. A line that is not a JSON
    object is returned as a record without a row, for the caller's mode to handle.
    """
    if not path.is_file():
        raise ManifestError(f"no manifest at {path}")
    suffix = path.suffix.lower()
    if suffixes is not None and suffix not in suffixes:
        raise ManifestError(f"a manifest must end in {' or '.join(suffixes)}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ManifestError(f"the manifest is {size} bytes; the limit is {max_bytes}")
    try:
        content = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ManifestError("the manifest is not UTF-8 text") from None
    records: list[_Record] = []
    is_csv = suffix == ".csv"
    if is_csv:
        reader = csv.DictReader(io.StringIO(content, newline=""))
        # Line numbers count the header as line 1.
        for line, raw in enumerate(reader, start=2):
            records.append(_Record(line, {(k or "").strip().lower(): v for k, v in raw.items()}))
        columns = {(name or "").strip().lower() for name in reader.fieldnames or []}
    else:
        # Universal newlines, as a file opened in text mode: U+2028 inside a JSON string is no line break.
        for line, text in enumerate(io.StringIO(content), start=1):
            if not text.strip():
                continue
            try:
                raw = json.loads(text)
            except ValueError as exc:
                records.append(_Record(line, None, getattr(exc, "msg", str(exc))))
                continue
            records.append(_Record(line, {str(k).strip().lower(): v for k, v in raw.items()}
                                   if isinstance(raw, dict) else None))
        columns = set().union(*(r.row.keys() for r in records if r.row is not None))
    if not records:
        raise ManifestError("the manifest has no rows")
    if max_rows is not None and len(records) > max_rows:
        raise ManifestError(f"the manifest has {len(records)} rows; the limit is {max_rows}")
    return records, is_csv, columns


# --------------------------------------------------------------------------- strict mode


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


def load_manifest(path: str | Path) -> Manifest:
    """Parse a manifest strictly (training); raises ManifestError listing every structural problem."""
    path = Path(path)
    try:
        records, _, columns = _read_records(path, (".jsonl", ".csv"))
    except ManifestError as exc:
        message = str(exc)
        raise ManifestError(message if message.startswith("no manifest at") else f"{path}: {message}") from None
    for record in records:
        if record.row is None:
            what = "each line must be a JSON object" if record.not_json is None else f"not valid JSON ({record.not_json})"
            raise ManifestError(f"{path}:{record.line}: {what}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(f"{path}: missing required column(s): {', '.join(missing)}")
    if "label" not in columns and "score" not in columns:
        raise ManifestError(f"{path}: needs a 'label' column, a 'score' column, or both")
    problems: list[str] = []
    items = [item for r in records if (item := _parse_row(r.row, f"{path.name}:{r.line}", problems)) is not None]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ManifestError(f"{path}: {len(problems)} malformed row(s):\n  {shown}{more}")
    return Manifest(items=items, root=path.parent.resolve(), source=path.resolve())


# --------------------------------------------------------------------------- lenient mode


@dataclass
class RowError:
    """Why a row cannot be used as written: ``malformed_row``, ``missing_id`` or ``duplicate_id``."""

    code: str
    message: str


@dataclass
class ManifestRow:
    """One row read leniently: every field optional, never raised about."""

    number: int  # 1-based position among the manifest's rows (blank lines skipped)
    line: int  # where it is: the JSONL line, or the CSV line (header = line 1)
    id: str
    text: str | None = None
    audio_path: str | None = None  # as written; ``ManifestRows.audio_file`` resolves it
    split: str | None = None
    label: str | None = None
    score: float | None = None  # None when blank or not a number
    error: RowError | None = None


@dataclass
class ManifestRows:
    rows: list[ManifestRow]
    root: Path  # the folder relative audio paths are taken from
    source: Path

    @property
    def errors(self) -> list[ManifestRow]:
        """The rows that have an error."""
        return [row for row in self.rows if row.error is not None]

    def audio_file(self, row: ManifestRow) -> Path | None:
        """The row's audio path, relative ones taken from the manifest's folder."""
        if row.audio_path is None:
            return None
        path = Path(row.audio_path)
        return path if path.is_absolute() else self.root / path


def _lenient_text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" else str(value)


def _lenient_score(value) -> float | None:
    try:
        return None if _lenient_text(value) is None else float(value)
    except (TypeError, ValueError):
        return None


def read_manifest_rows(path: str | Path, *, require_ids: bool = True, max_bytes: int | None = None,
                       max_rows: int | None = None) -> ManifestRows:
    """Read a manifest leniently (scoring): rows plus per-row errors.

    A line that is not a JSON object becomes a row with a ``malformed_row`` error.
    With ``require_ids`` (batch jobs, whose output is keyed and resumed by id), a row
    without an id gets ``line-N`` and a ``missing_id`` error, and a repeated id gets
    ``ID#dupK`` (the same on every run) and a ``duplicate_id`` error; without it, a
    missing id is the row's number and repeats are allowed. Any suffix but ``.csv``
    is read as JSONL. Raises ManifestError (messages without the path, which callers
    may not want to show) for a file unusable as a whole: missing, over ``max_bytes``,
    not UTF-8, no rows, over ``max_rows``, or no text and no audio column at all.
    """
    path = Path(path)
    records, is_csv, columns = _read_records(path, None, max_bytes, max_rows)
    if not columns & {"text", *AUDIO_COLUMNS} and any(r.row is not None for r in records):
        where = "CSV header" if is_csv else "manifest"
        raise ManifestError(f"the {where} needs a 'text' and/or an 'audio' column")
    rows: list[ManifestRow] = []
    for number, record in enumerate(records, start=1):
        raw = record.row
        if raw is None:
            why = "is not a JSON object" if record.not_json is None else f"is not JSON: {record.not_json}"
            rows.append(ManifestRow(number, record.line, f"line-{record.line}",
                                    error=RowError("malformed_row", f"line {record.line} {why}"[:300])))
            continue
        audio = next((v for v in (_lenient_text(raw.get(c)) for c in AUDIO_COLUMNS) if v is not None), None)
        row = ManifestRow(number, record.line, id=_lenient_text(raw.get("id")) or "", text=_lenient_text(raw.get("text")),
                          audio_path=audio, split=_lenient_text(raw.get("split")), label=_lenient_text(raw.get("label")),
                          score=_lenient_score(raw.get("score")))
        if not row.id:
            if require_ids:
                row.id, row.error = f"line-{record.line}", RowError("missing_id", "the row has no id")
            else:
                row.id = str(number)
        rows.append(row)
    if require_ids:
        seen: dict[str, int] = {}
        for row in rows:
            if row.id in seen and row.error is None:
                seen[row.id] += 1
                row.error = RowError("duplicate_id", f"id {row.id!r} appears more than once")
                row.id = f"{row.id}#dup{seen[row.id]}"  # unique, and the same on every run (resume)
            seen.setdefault(row.id, 0)
    return ManifestRows(rows=rows, root=path.resolve().parent, source=path.resolve())


# --------------------------------------------------------------------------- writing


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
