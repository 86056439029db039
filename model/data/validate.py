"""Checking a manifest's content before training, with one report of everything found.

Audio is decoded by ``model.audio.decode_audio`` with the limits training reads
files with (``AudioLimits.for_files``), so a file passes here exactly when training
(and, within the service limits, serving) can read it.

Errors (the item cannot be trained or evaluated on as written):
missing_audio, undecodable_audio, bad_segment, empty_text, no_target,
unknown_label, score_out_of_range, duplicate_id, split_leakage. An item with audio
but no text is no error when ``transcribes`` (the audio encoder's transcript stands in).

Training refuses a manifest with errors unless asked to drop the bad items;
then every dropped item is counted in the report and in the bundle's data
provenance, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from model.audio import AudioLimits, decode_audio
from model.data.manifest import SPLITS, Item, Manifest
from model.errors import ModelInputError
from model.fusion import SCORE_RANGE

EXAMPLES_SHOWN = 5
# Files are decoded to this rate to measure them: any rate would do, and this is the
# encoders' usual one, whose resampling kernels training then finds cached.
VALIDATION_RATE = 16_000


@dataclass
class Problem:
    kind: str
    index: int  # position in manifest.items, so one duplicate can be dropped and not the other
    item_id: str
    split: str
    detail: str


@dataclass
class ValidationReport:
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    labels: list[str]
    text_only: dict[str, int]
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_indices(self) -> set[int]:
        return {p.index for p in self.problems}

    def problem_counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "counts": self.counts,
            "label_counts": self.label_counts,
            "labels": self.labels,
            "text_only": self.text_only,
            "problem_counts": self.problem_counts(),
            "problems": [asdict(p) for p in self.problems],
            "warnings": self.warnings,
        }

    def format(self) -> str:
        lines = ["Manifest validation"]
        for split in SPLITS:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(self.label_counts.get(split, {}).items()))
            lines.append(
                f"  {split:<5} {self.counts.get(split, 0):>7} items"
                f" ({self.text_only.get(split, 0)} text-only){'; ' + labels if labels else ''}"
            )
        if self.ok:
            lines.append("  no errors")
        else:
            lines.append(f"  {len(self.problems)} error(s) in {len(self.bad_indices())} item(s):")
            by_kind = defaultdict(list)
            for p in self.problems:
                by_kind[p.kind].append(p)
            for kind, found in sorted(by_kind.items()):
                lines.append(f"    {kind}: {len(found)}")
                for p in found[:EXAMPLES_SHOWN]:
                    lines.append(f"      - {p.item_id!r} ({p.split}): {p.detail}")
                if len(found) > EXAMPLES_SHOWN:
                    lines.append(f"      ... and {len(found) - EXAMPLES_SHOWN} more")
        for warning in self.warnings:
            lines.append(f"  warning: {warning}")
        return "\n".join(lines)

    def save(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)


def _check_audio(manifest: Manifest, index: int, item: Item, problems: list[Problem]) -> None:
    path = manifest.audio_file(item)

    def problem(kind: str, detail: str) -> None:
        problems.append(Problem(kind, index, item.id, item.split, detail))

    if not path.is_file():
        problem("missing_audio", f"no file at {item.audio_path}")
        return
    try:
        # A full decode, not only the header: truncated files often have a valid header.
        wave = decode_audio(path, VALIDATION_RATE, AudioLimits.for_files())
    except ModelInputError as exc:
        problem("undecodable_audio", f"{item.audio_path}: {str(exc).splitlines()[0][:160]}")
        return
    duration = wave.shape[0] / VALIDATION_RATE
    start = item.start or 0.0
    end = duration if item.end is None else item.end
    if start < 0 or end <= start or start >= duration:
        problem("bad_segment", f"start={item.start} end={item.end} but the file lasts {duration:.2f} s")


def validate_manifest(
    manifest: Manifest,
    labels: list[str] | None = None,
    check_audio: bool = True,
    progress: bool = True,
    expected_splits: tuple[str, ...] = SPLITS,
    transcribes: bool = False,
) -> ValidationReport:
    """Check every item. ``labels`` is the allowed label set; by default the train split's labels.

    An empty split among ``expected_splits`` is reported as a warning.
    """
    items = manifest.items
    if labels is None:
        labels = sorted({i.label for i in items if i.split == "train" and i.label is not None})
    allowed = set(labels)
    problems: list[Problem] = []

    def problem(kind: str, index: int, item: Item, detail: str) -> None:
        problems.append(Problem(kind, index, item.id, item.split, detail))

    seen_in_split: dict[tuple[str, str], int] = {}
    splits_of: dict[str, set[str]] = defaultdict(set)
    for index, item in enumerate(items):
        if not item.text.strip() and not (transcribes and item.audio_path):
            problem("empty_text", index, item, "the text is empty")
        if item.label is None and item.score is None:
            problem("no_target", index, item, "neither label nor score is set")
        if item.label is not None and item.label not in allowed:
            problem("unknown_label", index, item, f"label {item.label!r} is not one of {sorted(allowed)}")
        if item.score is not None and abs(item.score) > SCORE_RANGE:
            problem("score_out_of_range", index, item, f"score {item.score} is outside [-3, 3]")
        if (item.start is not None or item.end is not None) and not item.audio_path:
            problem("bad_segment", index, item, "start/end given for an item without audio")
        key = (item.split, item.id)
        if key in seen_in_split:
            problem("duplicate_id", index, item, f"id repeated within {item.split} (first at row {seen_in_split[key] + 1})")
        else:
            seen_in_split[key] = index
        splits_of[item.id].add(item.split)

    # An id in two splits means the same utterance is trained on and evaluated on.
    # The copies outside train are flagged, so dropping them keeps the training data.
    for index, item in enumerate(items):
        if len(splits_of[item.id]) > 1 and item.split != min(splits_of[item.id], key=SPLITS.index):
            problem("split_leakage", index, item, f"id also appears in {sorted(splits_of[item.id] - {item.split})}")

    if check_audio:
        with_audio = [(i, item) for i, item in enumerate(items) if item.audio_path]
        for index, item in tqdm(with_audio, desc="checking audio", unit="file", disable=not progress):
            _check_audio(manifest, index, item, problems)

    counts = Counter(item.split for item in items)
    label_counts: dict[str, dict[str, int]] = defaultdict(dict)
    for (split, label), n in Counter((i.split, i.label) for i in items if i.label is not None).items():
        label_counts[split][label] = n
    text_only = Counter(item.split for item in items if not item.audio_path)

    warnings = []
    for split in expected_splits:
        if counts.get(split, 0) == 0:
            warnings.append(f"the {split} split is empty")
    texts_by_split: dict[str, set[str]] = defaultdict(set)
    for item in items:
        if item.text.strip():
            texts_by_split[item.text.strip().lower()].add(item.split)
    shared = sum(1 for splits in texts_by_split.values() if len(splits) > 1)
    if shared:
        # Not an error: short utterances ("yeah.") recur legitimately across dialogues.
        warnings.append(f"{shared} distinct text(s) occur in more than one split")

    problems.sort(key=lambda p: p.index)
    return ValidationReport(
        counts={s: counts.get(s, 0) for s in SPLITS},
        label_counts=dict(label_counts),
        labels=list(labels),
        text_only={s: text_only.get(s, 0) for s in SPLITS},
        problems=problems,
        warnings=warnings,
    )
