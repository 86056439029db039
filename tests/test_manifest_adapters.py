"""Manifest format, corpus adapters (MMSA, MELD) and manifest validation, on small fixtures."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.data import adapters
from model.data.manifest import Item, ManifestError, load_manifest, read_manifest_rows, save_manifest
from model.data.validate import validate_manifest
from model.training.config import TrainConfig
from model.training.prepare import TrainingDataError, prepare_data


def write_wav(path: Path, seconds: float = 0.2, rate: int = 16_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ------------------------------------------------------------------ manifest format


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_round_trip(tmp_path, suffix):
    items = [
        Item("a", "good film", "wav/a.wav", "train", label="positive", score=2.5, speaker="s1", start=0.1, end=1.0),
        Item("b", "bad film, really", None, "valid", label="negative"),
        Item("c", 'quotes "and" commas, too', "wav/c.wav", "test", score=-1.25),
    ]
    path = save_manifest(items, tmp_path / f"m{suffix}")
    manifest = load_manifest(path)
    assert manifest.items == items
    assert manifest.root == tmp_path.resolve()
    assert manifest.audio_file(manifest.items[0]) == tmp_path.resolve() / "wav/a.wav"
    assert manifest.audio_file(manifest.items[1]) is None


def test_manifest_structural_errors_are_all_listed(tmp_path):
    path = tmp_path / "m.jsonl"
    rows = [
        {"id": "a", "text": "x", "audio_path": "", "split": "train", "label": "positive"},
        {"id": "b", "text": "x", "audio_path": "", "split": "dev", "label": "positive"},
        {"id": "", "text": "x", "audio_path": "", "split": "test", "label": "positive"},
        {"id": "d", "text": "x", "audio_path": "", "split": "test", "score": "high"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    message = str(err.value)
    assert "3 malformed row(s)" in message
    assert "m.jsonl:2: split='dev'" in message
    assert "m.jsonl:3: empty id" in message
    assert "m.jsonl:4: score='high' is not a number" in message


def test_manifest_missing_columns(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["id", "text", "split", "label"], [["a", "x", "train", "positive"]])
    with pytest.raises(ManifestError, match="audio_path"):
        load_manifest(path)
    path = write_csv(tmp_path / "n.csv", ["id", "text", "audio_path", "split"], [["a", "x", "", "train"]])
    with pytest.raises(ManifestError, match="'label' column, a 'score' column"):
        load_manifest(path)


def test_lenient_mode_keeps_every_row_and_records_its_error(tmp_path):
    """Scoring reads leniently: CSV and JSONL give the same rows; bad rows carry an error."""
    rows = [{"id": "a", "text": "hello", "audio_path": "", "split": "test", "label": "positive", "score": "1.5"},
            {"id": "b", "text": "", "audio_path": "clips/b.wav", "split": "", "label": "", "score": "high"},
            {"id": "a", "text": "again", "audio_path": "", "split": "", "label": "", "score": ""},
            {"id": "", "text": "no id", "audio_path": "", "split": "", "label": "", "score": ""}]
    write_csv(tmp_path / "m.csv", list(rows[0]), [list(r.values()) for r in rows])
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps({k: v for k, v in r.items() if v}) for r in rows))
    from_csv, from_jsonl = read_manifest_rows(tmp_path / "m.csv"), read_manifest_rows(tmp_path / "m.jsonl")
    fields = lambda m: [(r.number, r.id, r.text, r.audio_path, r.split, r.label, r.score, r.error) for r in m.rows]  # noqa: E731
    assert fields(from_csv)[:3] == fields(from_jsonl)[:3]
    assert from_jsonl.rows[3].id == "line-4"  # a missing id is named after its line, which differs in CSV
    first, second, dup, anonymous = from_csv.rows
    assert (first.score, first.audio_path, first.error) == (1.5, None, None)
    assert second.text is None and second.score is None  # blank and unparseable values are missing, not errors
    assert from_csv.audio_file(second) == tmp_path.resolve() / "clips" / "b.wav"
    assert (dup.id, dup.error.code) == ("a#dup1", "duplicate_id")
    assert (anonymous.id, anonymous.error.code) == ("line-5", "missing_id")
    assert [r.id for r in from_csv.errors] == ["a#dup1", "line-5"]


def test_lenient_mode_for_the_ui_tab(tmp_path):
    (tmp_path / "m.csv").write_text('\ufeffID,Text,Audio\nx,"Hello, there",a.wav\n,,b.wav\n')
    (tmp_path / "m.jsonl").write_text('{"id": "x", "text": "Hello, there", "audio": "a.wav"}\n\n'
                                      '{"audio_path": "b.wav"}\nnot json\n["a list"]\n')
    expected = [(1, "x", "Hello, there", "a.wav"), (2, "2", None, "b.wav")]
    read = lambda name: read_manifest_rows(tmp_path / name, require_ids=False)  # noqa: E731
    assert [(r.number, r.id, r.text, r.audio_path) for r in read("m.csv").rows] == expected
    rows = read("m.jsonl").rows
    assert [(r.number, r.id, r.text, r.audio_path) for r in rows[:2]] == expected
    assert [(r.line, r.error.code) for r in rows[2:]] == [(4, "malformed_row"), (5, "malformed_row")]
    assert rows[2].error.message.startswith("line 4 is not JSON") and rows[3].error.message == "line 5 is not a JSON object"


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("m.csv", "name,label\nx,y\n", {}, "needs a 'text'"),
    ("m.csv", "text\n", {}, "no rows"),
    ("m.csv", "text\na\nb\nc\nd\n", {"max_rows": 3}, "4 rows; the limit is 3"),
    ("m.csv", "text\n" + "a\n" * 100, {"max_bytes": 50}, "the limit is 50"),
])
def test_lenient_mode_refuses_unusable_files(tmp_path, name, content, kwargs, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest_rows(tmp_path / name, **kwargs)
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "\xff"}\n')
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifest_rows(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------ MMSA adapter


def mmsa_fixture(root: Path) -> Path:
    # Column order differs from MMSA's, and extra columns are present: columns are read by name.
    header = ["mode", "clip_id", "annotation", "label_T", "text", "label", "video_id", "label_A"]
    rows = [
        ["train", "1", "Positive", "0", "a fine film", "1.8", "vidA", "0"],
        ["train", "2", "Negative", "0", "a poor film", "-2.2", "vidA", "0"],
        ["valid", "1", "Neutral", "0", "it is a film", "0.0", "vidB", "0"],
        ["test", "3", "Positive", "0", "great", "0.6", "vidC", "0"],
        ["test", "4", "Negative", "0", "awful", "oops", "vidC", "0"],  # unparseable score: skipped, counted
    ]
    write_csv(root / "label.csv", header, rows)
    for video, clip in [("vidA", "1"), ("vidA", "2"), ("vidB", "1")]:  # vidC/3 has no audio
        write_wav(root / "wav" / video / f"{clip}.wav")
    return root / "label.csv"


def test_mmsa_adapter(tmp_path):
    label_csv = mmsa_fixture(tmp_path / "MOSI")
    out = tmp_path / "manifests" / "mosi.jsonl"
    result = adapters.mmsa(label_csv, out, dataset="mosi")
    assert [i.id for i in result.items] == ["vidA/1", "vidA/2", "vidB/1", "vidC/3"]
    assert [i.split for i in result.items] == ["train", "train", "valid", "test"]
    assert [i.label for i in result.items] == ["positive", "negative", "neutral", "positive"]
    assert [i.score for i in result.items] == [1.8, -2.2, 0.0, 0.6]
    assert result.items[0].audio_path == "../MOSI/wav/vidA/1.wav"  # relative to the manifest's folder
    assert result.missing_audio == 1
    assert len(result.skipped) == 1 and "oops" in result.skipped[0]

    save_manifest(result.items, out)
    manifest = load_manifest(out)
    assert manifest.audio_file(manifest.items[1]).resolve() == (tmp_path / "MOSI/wav/vidA/2.wav").resolve()
    report = validate_manifest(manifest, progress=False)
    assert report.problem_counts() == {"missing_audio": 1, "unknown_label": 1}  # no audio for vidC/3; neutral not in train
    assert {p.item_id for p in report.problems} == {"vidC/3", "vidB/1"}


def test_mmsa_sims_scores_are_scaled_into_minus3_3(tmp_path):
    root = tmp_path / "SIMS"
    write_csv(root / "label.csv", ["video_id", "clip_id", "text", "label", "annotation", "mode"],
              [["v", "0001", "很好", "0.8", "Positive", "train"], ["v", "0002", "不好", "-0.4", "Negative", "test"]])
    result = adapters.mmsa(root / "label.csv", tmp_path / "sims.csv", dataset="sims")
    assert [i.score for i in result.items] == pytest.approx([2.4, -1.2])
    assert result.items[0].text == "很好"


def test_mmsa_adapter_cli(tmp_path, capsys):
    label_csv = mmsa_fixture(tmp_path / "MOSI")
    out = tmp_path / "mosi.csv"
    assert adapters.main(["mmsa", "--csv", str(label_csv), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 4 and summary["skipped_rows"] == 1 and summary["audio_files_missing"] == 1
    assert len(load_manifest(out).items) == 4


def test_mmsa_adapter_reports_missing_columns(tmp_path):
    write_csv(tmp_path / "label.csv", ["video_id", "clip_id", "text"], [["v", "1", "x"]])
    with pytest.raises(ValueError, match="annotation"):
        adapters.mmsa(tmp_path / "label.csv", tmp_path / "m.jsonl")


# ------------------------------------------------------------------ MELD adapter


def test_meld_adapter(tmp_path):
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
              "Season", "Episode", "StartTime", "EndTime"]
    train = write_csv(tmp_path / "MELD/train_sent_emo.csv", header, [
        [1, "Oh my God!", "Rachel", "surprise", "positive", 0, 0, 1, 1, "00:16:16,059", "00:16:21,731"],
        [2, "I hate this.", "Ross", "anger", "negative", 0, 1, 1, 1, "00:16:22,000", "00:16:24,000"],
    ])
    dev = write_csv(tmp_path / "MELD/dev_sent_emo.csv", header, [
        [1, "Okay.", "Joey", "neutral", "neutral", 0, 0, 1, 2, "00:01:00,000", "00:01:01,000"],
    ])
    write_wav(tmp_path / "audio/train/dia0_utt0.wav")
    write_wav(tmp_path / "audio/train/dia0_utt1.wav")
    write_wav(tmp_path / "audio/dev/dia0_utt0.wav")
    out = tmp_path / "meld.jsonl"
    result = adapters.meld({"train": train, "valid": dev},
                           {"train": tmp_path / "audio/train", "valid": tmp_path / "audio/dev"}, out)
    # MELD restarts dialogue ids per split: the split keeps the ids unique.
    assert [i.id for i in result.items] == ["train/dia0_utt0", "train/dia0_utt1", "valid/dia0_utt0"]
    assert [i.label for i in result.items] == ["positive", "negative", "neutral"]
    assert [i.speaker for i in result.items] == ["Rachel", "Ross", "Joey"]
    assert result.items[2].audio_path == "audio/dev/dia0_utt0.wav"
    assert result.missing_audio == 0

    emotions = adapters.meld({"train": train}, {"train": tmp_path / "audio/train"}, out, target="emotion")
    assert [i.label for i in emotions.items] == ["surprise", "anger"]

    save_manifest(result.items, out)
    report = validate_manifest(load_manifest(out), labels=["negative", "neutral", "positive"], progress=False)
    assert report.ok, report.format()
    assert report.counts == {"train": 2, "valid": 1, "test": 0}
    assert "the test split is empty" in report.warnings


# ------------------------------------------------------------------ validation


def broken_manifest(tmp_path: Path) -> Path:
    write_wav(tmp_path / "wav/ok.wav", seconds=0.5)
    (tmp_path / "wav/garbage.wav").write_bytes(b"RIFF not really a wav file")
    items = [
        Item("t1", "good", "wav/ok.wav", "train", label="positive"),
        Item("t2", "bad", "wav/ok.wav", "train", label="negative"),
        Item("t3", "   ", None, "train", label="negative"),  # empty text
        Item("t4", "meh", "wav/missing.wav", "train", label="positive"),  # missing file
        Item("t5", "hmm", "wav/garbage.wav", "train", label="positive"),  # undecodable
        Item("t6", "wow", None, "train", score=4.0),  # score out of range
        Item("v1", "fine", None, "valid", label="mixed"),  # unknown label
        Item("t1", "good", None, "test", label="positive"),  # leakage: t1 is in train
        Item("v2", "okay", "wav/ok.wav", "valid", label="positive", start=0.4, end=0.3),  # bad segment
        Item("v2", "okay", None, "valid", label="positive"),  # duplicate id within valid
        Item("v3", "ok", None, "valid"),  # neither label nor score
        Item("v4", "a fine film", None, "valid", label="positive"),
    ]
    return save_manifest(items, tmp_path / "broken.jsonl")


def test_validation_reports_every_problem(tmp_path):
    report = validate_manifest(load_manifest(broken_manifest(tmp_path)), progress=False)
    assert not report.ok
    assert report.problem_counts() == {
        "empty_text": 1, "missing_audio": 1, "undecodable_audio": 1, "score_out_of_range": 1,
        "unknown_label": 1, "split_leakage": 1, "bad_segment": 1, "duplicate_id": 1, "no_target": 1,
    }
    by_kind = {p.kind: p for p in report.problems}
    assert by_kind["split_leakage"].split == "test"  # the evaluation copy is flagged, not the train one
    assert by_kind["duplicate_id"].index == 9  # the second occurrence
    assert report.labels == ["negative", "positive"]  # taken from the train split
    text = report.format()
    assert "9 error(s) in 9 item(s)" in text
    assert "missing_audio: 1" in text and "'t4'" in text


def test_validation_passes_a_clean_manifest(tmp_path):
    write_wav(tmp_path / "a.wav")
    items = [Item("a", "good", "a.wav", "train", label="positive"), Item("b", "bad", None, "valid", label="negative"),
             Item("c", "so so", "a.wav", "test", label="negative", start=0.05, end=0.15)]
    report = validate_manifest(load_manifest(save_manifest(items, tmp_path / "m.csv")),
                               labels=["negative", "positive"], progress=False)
    assert report.ok, report.format()
    assert report.text_only == {"train": 0, "valid": 1, "test": 0}


def test_training_refuses_invalid_data_unless_dropping_is_asked(tmp_path):
    manifest = broken_manifest(tmp_path)
    config = TrainConfig(manifest=manifest, out=tmp_path / "out", progress=False)
    with pytest.raises(TrainingDataError, match="9 item"):
        prepare_data(config)
    config.drop_invalid = True
    _, sets, labels, provenance = prepare_data(config)
    assert labels == ["negative", "positive"]
    assert [i.id for i in sets["train"]] == ["t1", "t2"]
    assert sets["test"] == []  # its only item leaked from train
    assert provenance["validation"]["items_with_errors"] == 9
    assert provenance["validation"]["dropped"] == 9
    assert provenance["validation"]["problem_counts"]["missing_audio"] == 1
    assert provenance["counts"] == {"train": 2, "valid": 1, "test": 0}


def test_labels_are_derived_from_scores_when_missing(tmp_path):
    items = [Item("a", "x", None, "train", score=1.2), Item("b", "y", None, "train", score=-0.5),
             Item("c", "z", None, "valid", score=0.0)]
    config = TrainConfig(manifest=save_manifest(items, tmp_path / "m.jsonl"), out=tmp_path / "o",
                         labels=["negative", "neutral", "positive"], progress=False)
    _, sets, labels, provenance = prepare_data(config)
    assert [i.label for i in sets["train"] + sets["valid"]] == ["positive", "negative", "neutral"]
    assert provenance["labels_derived_from_score"] == 3
