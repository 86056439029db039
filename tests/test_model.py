"""Unit tests of model/: tiny checkpoints built locally and loaded back via from_pretrained."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from model.audio import AudioLimits, decode_audio, encode_wav
from model.audio_encoder import AudioEncoder
from model.bundle import Bundle
from model.errors import (
    AudioDecodeError,
    AudioEmptyError,
    AudioFormatError,
    AudioNonFiniteError,
    AudioTooLargeError,
    AudioTooLongError,
    BundleError,
)
from model.factory import save_bert, save_wav2vec2
from model.fusion import ARCHITECTURES, DEFAULT_ARCHITECTURE, FusionConfig, build_head
from model.pipeline import FusionItem, SentimentPipeline, fuse
from model.text_encoder import TextEncoder
from tests.conftest import tone


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return SentimentPipeline(Bundle.load(tiny_bundle))


# ---- encoders ---------------------------------------------------------------------


def test_text_encoder_shapes_and_masks(pipeline):
    enc = pipeline.text_encoder
    out = enc.encode(["short", "a much longer sentence with several more tokens in it"])
    assert out.hidden.shape[:2] == out.mask.shape
    assert out.hidden.shape[2] == enc.hidden_size
    lengths = out.mask.sum(dim=1).tolist()
    assert lengths[0] < lengths[1] == out.hidden.shape[1]  # padded to the longest, not max_length
    items = out.unpad()
    assert [t.shape[0] for t in items] == lengths
    # What travels between deployments is compact: fp16, and only the item's own
    # rows (a view would pickle the whole padded batch's storage).
    for item in items:
        assert item.dtype == torch.float16
        assert item.untyped_storage().nbytes() == item.numel() * item.element_size()


def test_text_encoder_truncates_to_max_length(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    enc = TextEncoder(bundle.resolve(bundle.text_encoder), max_length=8)
    out = enc.encode(["word " * 50])
    assert out.hidden.shape[1] == 8
    assert enc.count_tokens("word " * 50) > 8


def test_audio_encoder_shapes_and_frame_masks(pipeline):
    enc = pipeline.audio_encoder
    waves = [torch.from_numpy(tone(0.5)), torch.from_numpy(tone(1.5))]
    out = enc.encode(waves)
    lengths = out.mask.sum(dim=1).tolist()
    assert lengths == [enc.frame_count(len(w)) for w in waves]
    assert out.hidden.shape == (2, max(lengths), enc.hidden_size)


def test_checkpoints_load_through_from_pretrained(tmp_path):
    save_bert(tmp_path / "bert", "tiny")
    save_wav2vec2(tmp_path / "w2v", "tiny")
    assert TextEncoder(str(tmp_path / "bert")).hidden_size == 32
    assert AudioEncoder(str(tmp_path / "w2v")).sampling_rate == 16_000


# ---- fusion head --------------------------------------------------------------------


def _feature(length: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(length, dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("has_text,has_audio", [(True, False), (False, True), (True, True)])
def test_fusion_with_any_modality(has_text, has_audio):
    config = FusionConfig(text_dim=16, audio_dim=12, d_model=16, n_heads=2, labels=["neg", "neu", "pos"])
    head = build_head(config).eval()
    bundle = Bundle("t", "1", "x", "y", config)
    item = FusionItem(_feature(5, 16, 0) if has_text else None, _feature(7, 12, 1) if has_audio else None)
    [result] = fuse(head, bundle, [item], explain=True)
    assert set(result["scores"]) == {"neg", "neu", "pos"}
    assert abs(sum(result["scores"].values()) - 1) < 1e-5
    assert -3 <= result["sentiment"] <= 3
    expected = {"fused"} | ({"text"} if has_text else set()) | ({"audio"} if has_audio else set())
    assert set(result["modalities"]) == expected
    if has_text and has_audio:
        weights = np.array(result["attention"])
        assert weights.shape == (5, 7)
        # Each token's attention over real frames (plus the two special slots) sums to <= 1.
        assert (weights.sum(axis=1) <= 1 + 1e-5).all()
    else:
        assert "attention" not in result


def test_missing_modality_uses_learned_embedding_not_zeros():
    torch.manual_seed(0)
    config = FusionConfig(text_dim=8, audio_dim=8, d_model=8, n_heads=2)
    head = build_head(config).eval()
    bundle = Bundle("t", "1", "x", "y", config)
    text = _feature(4, 8, 0)
    [missing] = fuse(head, bundle, [FusionItem(text, None)])
    with torch.no_grad():
        # Not a constant shift: the blocks layer-normalize their inputs, which removes one.
        head.audio_missing.add_(torch.linspace(-1.0, 1.0, config.d_model))
    [changed] = fuse(head, bundle, [FusionItem(text, None)])
    assert max(abs(missing["scores"][k] - changed["scores"][k]) for k in missing["scores"]) > 1e-4


def test_fusion_prediction_is_padding_invariant():
    config = FusionConfig(text_dim=16, audio_dim=12, d_model=16, n_heads=2)
    head = build_head(config).eval()
    bundle = Bundle("t", "1", "x", "y", config)
    short = FusionItem(_feature(3, 16, 0), _feature(4, 12, 1))
    long = FusionItem(_feature(30, 16, 2), _feature(50, 12, 3))
    [alone] = fuse(head, bundle, [short])
    [batched, _] = fuse(head, bundle, [short, long])
    for label in alone["scores"]:
        assert alone["scores"][label] == pytest.approx(batched["scores"][label], abs=1e-5)


def test_pipeline_padding_invariance_end_to_end(pipeline):
    """A sample's prediction must not change when batched with longer samples."""
    text, wave = "a fine film", torch.from_numpy(tone(0.6))
    [alone] = pipeline.predict([text], [wave])
    [batched, _] = pipeline.predict(
        [text, "a much longer review that goes on and on about many different things"],
        [wave, torch.from_numpy(tone(2.5, freq=330.0))],
    )
    for label in alone["scores"]:
        assert alone["scores"][label] == pytest.approx(batched["scores"][label], abs=1e-4)


# ---- audio decoding ------------------------------------------------------------------


def _encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("FLAC", None), ("OGG", "VORBIS"), ("MP3", None)])
def test_decode_formats(fmt, subtype):
    data = _encode(tone(1.0, 22_050), 22_050, fmt, subtype)
    wave = decode_audio(data, 16_000)
    assert wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) - 16_000) < 16_000 * 0.1  # MP3/OGG add a little priming/padding


@pytest.mark.parametrize("rate", [8_000, 16_000, 44_100, 48_000, 96_000, 176_400, 192_000])
def test_decode_resamples_to_target_rate(rate):
    wave = decode_audio(encode_wav(tone(0.5, rate), rate), 16_000)
    assert len(wave) == 8_000


def test_decode_downmixes_stereo():
    left = tone(0.5, 16_000)
    stereo = np.stack([left, -left], axis=1)  # opposite phases average to silence
    wave = decode_audio(_encode(stereo, 16_000, "WAV", "FLOAT"), 16_000)
    assert wave.abs().max() < 1e-6
    assert len(wave) == 8_000


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", AudioEmptyError),
        (b"not audio at all" * 10, AudioDecodeError),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 5, AudioDecodeError),
    ],
)
def test_decode_rejects_garbage(data, error):
    with pytest.raises(error):
        decode_audio(data, 16_000)


def test_decode_rejects_truncated_header():
    with pytest.raises(AudioDecodeError):
        decode_audio(encode_wav(tone(0.5), 16_000)[:20], 16_000)


def test_decode_rejects_zero_samples():
    with pytest.raises((AudioEmptyError, AudioDecodeError)):
        decode_audio(_encode(np.zeros(0, dtype="float32"), 16_000, "WAV", "PCM_16"), 16_000)


def test_decode_rejects_non_finite():
    samples = tone(0.5)
    samples[100] = np.nan
    with pytest.raises(AudioNonFiniteError):
        decode_audio(_encode(samples, 16_000, "WAV", "FLOAT"), 16_000)


def test_decode_enforces_limits():
    with pytest.raises(AudioTooLongError):
        decode_audio(encode_wav(tone(3.0), 16_000), 16_000, AudioLimits(max_seconds=2.0))
    with pytest.raises(AudioTooLargeError):
        decode_audio(encode_wav(tone(3.0), 16_000), 16_000, AudioLimits(max_bytes=2048))
    with pytest.raises(AudioFormatError, match="outside 8000-192000 Hz"):
        decode_audio(encode_wav(tone(0.5, 384_000), 384_000), 16_000)
    # Inside the range but not a standard rate: slow to resample, refused.
    with pytest.raises(AudioFormatError, match="not accepted"):
        decode_audio(encode_wav(tone(0.5, 191_999), 191_999), 16_000)
    many = np.zeros((1600, 4), dtype="float32")
    with pytest.raises(AudioFormatError):
        decode_audio(_encode(many, 16_000, "WAV", "FLOAT"), 16_000)


def test_long_compressed_audio_refused_from_header(monkeypatch):
    """Ten minutes of FLAC silence is a few KB; it must be refused without decoding it."""
    data = _encode(np.zeros(8_000 * 600, dtype="float32"), 8_000, "FLAC")
    assert len(data) < AudioLimits().max_bytes

    def fail_if_decoded(*args, **kwargs):
        raise AssertionError("samples were decoded before the length check")

    monkeypatch.setattr("model.audio.sf.read", fail_if_decoded)
    with pytest.raises(AudioTooLongError):
        decode_audio(data, 16_000)


# ---- bundle ------------------------------------------------------------------------


def test_bundle_round_trip(tiny_bundle, tmp_path):
    bundle = Bundle.load(tiny_bundle)
    head = bundle.load_fusion()
    bundle.metrics = {"acc": 0.5}
    copy = bundle.save(tmp_path / "copy", head)
    again = Bundle.load(copy)
    assert again.metadata() == bundle.metadata()
    for (name, a), (_, b) in zip(head.state_dict().items(), again.load_fusion().state_dict().items()):
        assert torch.equal(a, b), name


def test_bundle_resolves_relative_encoders_and_keeps_hub_ids(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    assert bundle.resolve("text_encoder") == str((tiny_bundle / "text_encoder").resolve())
    assert bundle.resolve("bert-base-uncased") == "bert-base-uncased"


def test_bundle_errors_are_clear(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="no bundle.json"):
        Bundle.load(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bundle.json").write_text((tiny_bundle / "bundle.json").read_text())
    (broken / "fusion.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError, match="corrupt"):
        Bundle.load(broken).load_fusion()
    (broken / "bundle.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(BundleError, match="malformed"):
        Bundle.load(broken)


def test_encode_each_matches_one_text_at_a_time(pipeline):
    # Length buckets change how texts are grouped, never what each one gets back.
    enc = pipeline.text_encoder
    texts = ["ok", "a rather longer sentence with quite a few more tokens in it than the others", "fine then",
             "short one", "another sentence of middling length here"]
    batched = enc.encode_each(texts)
    for text, features in zip(texts, batched):
        alone = enc.encode([text]).unpad()[0]
        assert features.shape == alone.shape
        assert torch.allclose(features.float(), alone.float(), atol=2e-2)


def test_length_buckets_keep_padding_small():
    from model.encoded import length_buckets

    lengths = [100, 10, 140, 12, 30, 101]
    buckets = length_buckets(lengths, max_ratio=1.5)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    for bucket in buckets:
        assert max(lengths[i] for i in bucket) <= 1.5 * min(lengths[i] for i in bucket)
    assert [sorted(b) for b in buckets] == [[1, 3], [4], [0, 2, 5]]


# ---- fusion registry, bundle format, encoder facts ---------------------------------


def test_bundles_name_their_fusion_architecture_and_old_ones_default(tiny_bundle, tmp_path):
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert meta["fusion"]["architecture"] == DEFAULT_ARCHITECTURE
    assert isinstance(Bundle.load(tiny_bundle).load_fusion(), ARCHITECTURES[DEFAULT_ARCHITECTURE])
    # A bundle written before the key existed loads as the cross-modal attention head.
    old = tmp_path / "old"
    old.mkdir()
    del meta["fusion"]["architecture"]
    (old / "bundle.json").write_text(json.dumps(meta))
    (old / "fusion.safetensors").write_bytes((tiny_bundle / "fusion.safetensors").read_bytes())
    assert Bundle.load(old).fusion.architecture == DEFAULT_ARCHITECTURE
    meta["fusion"]["architecture"] = "no_such_head"
    (old / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="no_such_head"):
        Bundle.load(old)


def test_the_head_reports_its_token_attention():
    config = FusionConfig(text_dim=8, audio_dim=6, d_model=8, n_heads=2)
    head = build_head(config).eval()
    with torch.no_grad():
        out = head.run([_feature(3, 8, 0), _feature(5, 8, 1), None], [_feature(4, 6, 2), None, _feature(2, 6, 3)],
                       explain=True)
    assert out.has_text.tolist() == [True, True, False] and out.has_audio.tolist() == [True, False, True]
    assert out.attention[0].shape == (3, 4)  # real tokens x real frames, padding and special slots left out
    assert out.attention[1] is None and out.attention[2] is None
    assert head.run([_feature(3, 8, 0)], [_feature(4, 6, 2)]).attention is None  # only when asked


def test_audio_encoder_facts_without_weights(tmp_path):
    from model.audio_encoder import AudioEncoderFacts, receptive_field

    folder = save_wav2vec2(tmp_path / "w2v", "tiny")
    (folder / "model.safetensors").unlink()  # the facts need the config files only
    facts = AudioEncoderFacts.from_pretrained(str(folder))
    assert facts.sampling_rate == 16_000
    assert facts.frame_seconds == pytest.approx(5 * 4 * 4 / 16_000)
    assert facts.receptive_field == receptive_field((10, 4, 4), (5, 4, 4)) == 10 + 3 * 5 + 3 * 20
    assert facts.min_seconds == pytest.approx(facts.receptive_field / 16_000)
    assert receptive_field((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == 400  # wav2vec2-base: 25 ms


def test_decode_audio_reads_files_and_segments_like_bytes(tmp_path):
    samples = tone(1.0, 22_050)
    path = tmp_path / "a.wav"
    path.write_bytes(encode_wav(samples, 22_050))
    assert torch.equal(decode_audio(path, 16_000), decode_audio(path.read_bytes(), 16_000))
    segment = decode_audio(path, 16_000, AudioLimits.for_files(), start=0.25, end=0.75)
    assert abs(len(segment) - 8_000) <= 1
    # Training's limits cut long audio instead of refusing it, and accept any rate.
    assert len(decode_audio(path, 16_000, AudioLimits.for_files(max_seconds=0.5))) == 8_000
    with pytest.raises(AudioTooLongError):
        decode_audio(path, 16_000, AudioLimits(max_seconds=0.5))
    odd = tmp_path / "odd.wav"
    odd.write_bytes(encode_wav(tone(0.2, 11_111), 11_111))
    with pytest.raises(AudioFormatError):
        decode_audio(odd, 16_000)
    assert decode_audio(odd, 16_000, AudioLimits.for_files()).shape[0] > 0
