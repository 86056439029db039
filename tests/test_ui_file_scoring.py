"""The UI's file scoring (Batch tab) input handling: manifests and the untrusted zip (no Ray, no browser).

The end-to-end batch path (upload, predictions through the real deployments,
failed rows kept, CSV download) is covered in ``test_ui_browser.py``.
"""

from __future__ import annotations

import zipfile

import pytest

from deployments.ui.file_scoring import AudioArchive, BatchError, BatchLimits, Row, read_manifest

SMALL = BatchLimits(max_rows=3, max_zip_members=3, max_unzipped_bytes=100_000, max_zip_bytes=50_000)


def test_csv_and_jsonl_manifests_read_to_the_same_rows(tmp_path):
    (tmp_path / "m.csv").write_text('\ufeffID,Text,Audio\nx,"Hello, there",a.wav\n,,b.wav\n')
    # audio_path: the name the offline batch tool (jobs) uses.
    (tmp_path / "m.jsonl").write_text('{"id": "x", "text": "Hello, there", "audio": "a.wav"}\n\n{"audio_path": "b.wav"}\n')
    expected = [Row(1, "x", "Hello, there", "a.wav"), Row(2, "2", None, "b.wav")]
    assert read_manifest(tmp_path / "m.csv", SMALL) == expected
    assert read_manifest(tmp_path / "m.jsonl", SMALL) == expected


@pytest.mark.parametrize("name, content, message", [
    ("m.csv", "name,label\nx,y\n", "needs a 'text'"),
    ("m.csv", "text\n", "no rows"),
    ("m.csv", "text\na\nb\nc\nd\n", "4 rows; the limit is 3"),
    ("m.jsonl", '{"text": "a"}\nnot json\n', "line 2 is not JSON"),
    ("m.jsonl", '["text"]\n', "not a JSON object"),
])
def test_unusable_manifests_are_refused_with_the_reason(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(BatchError, match=message):
        read_manifest(tmp_path / name, SMALL)


def test_zip_members_are_read_in_memory_and_never_extracted(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("../../escape.wav", b"RIFF-slip")
        zf.writestr("clips/ok.wav", b"RIFF-ok")
    archive = AudioArchive(path, SMALL, max_audio_bytes=1_000)
    # The hostile name is only a dictionary key: nothing is written anywhere.
    assert archive.read("../../escape.wav") == b"RIFF-slip"
    assert archive.read("clips/ok.wav") == b"RIFF-ok"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.zip"]
    assert not (tmp_path.parent.parent / "escape.wav").exists()
    with pytest.raises(BatchError, match="not in the zip"):
        archive.read("clips/other.wav")


def test_zip_bomb_is_refused_by_its_declared_unpacked_size(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.wav", b"\0" * 200_000)  # compresses to a few hundred bytes
    assert path.stat().st_size < SMALL.max_zip_bytes
    with pytest.raises(BatchError, match="unpacks to 200000 bytes"):
        AudioArchive(path, SMALL, max_audio_bytes=1_000_000)


def test_zip_with_too_many_members_or_bytes_is_refused(tmp_path):
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(4):
            zf.writestr(f"{i}.wav", b"x")
    with pytest.raises(BatchError, match="4 files; the limit is 3"):
        AudioArchive(many, SMALL, max_audio_bytes=1_000)
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("noise.wav", bytes(range(256)) * 300)  # stored: 76.8 kB on disk
    with pytest.raises(BatchError, match="the limit is 50000"):
        AudioArchive(big, SMALL, max_audio_bytes=1_000_000)
    (tmp_path / "fake.zip").write_bytes(b"PK not really")
    with pytest.raises(BatchError, match="not a valid zip"):
        AudioArchive(tmp_path / "fake.zip", SMALL, max_audio_bytes=1_000)


def test_member_over_the_audio_limit_fails_only_its_row(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("big.wav", b"x" * 2_000)
    archive = AudioArchive(path, SMALL, max_audio_bytes=1_000)
    with pytest.raises(BatchError, match="2000 bytes; the audio limit is 1000"):
        archive.read("big.wav")
