"""Transcripts from a CTC audio checkpoint: one forward pass in-process, and the text branch reading them when served.

A tiny Wav2Vec2ForCTC is trained here, in seconds, to overfit espeak clips of a few
known words, then saved and loaded back through ``from_pretrained(folder)`` like any
hub checkpoint (``facebook/wav2vec2-base-960h`` takes the same path).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

import model.demo.speech as speech
from deployments.http.errors import BadRequest
from deployments.http.parsing import parse_json
from deployments.http.schema import Limits
from model.audio import encode_wav
from model.audio_encoder import AudioEncoder, AudioEncoderFacts
from model.bundle import Bundle
from model.encoded import length_buckets
from model.errors import BundleError
from model.factory import BERT_PRESETS, WAV2VEC2_PRESETS, save_bert, save_untrained_bundle, save_wav2vec2_ctc
from tests.conftest import deploy

pytestmark = pytest.mark.skipif(not speech.available(), reason="no espeak-ng program or espeakng-loader wheel")

WORDS = ["good", "bad", "great", "not bad"]  # a doubled letter and a word break among them
RATE = 16_000
# Training-only settings (saved in config.json, inert at inference): no dropout and no
# SpecAugment masking, so four clips are memorised in about a hundred steps.
TRAINING = dict(mask_time_prob=0.0, layerdrop=0.0, hidden_dropout=0.0, attention_dropout=0.0,
                activation_dropout=0.0, feat_proj_dropout=0.0, final_dropout=0.0)
MAX_STEPS = 800
CANNOT = "this model cannot transcribe speech; type what was said for the text branch"


@pytest.fixture(scope="module")
def clips() -> list[torch.Tensor]:
    return [torch.from_numpy(speech.synthesize(word, speech.Voice("en-us", 150, 50), RATE)) for word in WORDS]


def greedy(model: Wav2Vec2ForCTC, tokenizer, inputs) -> list[str]:
    """The training loop's own check: greedy CTC over each clip's real frames."""
    with torch.no_grad():
        ids = model(**inputs).logits.argmax(dim=-1)
    lengths = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(dim=1))
    rows = [torch.unique_consecutive(row[:n]) for row, n in zip(ids, lengths)]
    return tokenizer.batch_decode([row[row != tokenizer.pad_token_id].tolist() for row in rows], group_tokens=False)


def train_ctc(folder, clips: list[torch.Tensor], words: list[str]) -> int:
    """Overfit the checkpoint in ``folder`` to say ``words`` for ``clips`` (torch's CTC loss, inside
    Wav2Vec2ForCTC); saved back to the folder. Returns the steps it took."""
    model = Wav2Vec2ForCTC.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    inputs = extractor([c.numpy() for c in clips], sampling_rate=RATE, padding=True, return_attention_mask=True,
                       return_tensors="pt")
    inputs = {"input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"]}
    ids = [tokenizer(word).input_ids for word in words]
    labels = torch.full((len(ids), max(map(len, ids))), -100)  # -100: not a label (the loss skips it)
    for i, row in enumerate(ids):
        labels[i, : len(row)] = torch.tensor(row)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small gain nothing from a second thread
    try:
        for step in range(1, MAX_STEPS + 1):
            model.train()
            loss = model(**inputs, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if step % 10 == 0:
                model.eval()
                if greedy(model, tokenizer, inputs) == words:
                    break
        else:
            raise AssertionError(f"the tiny CTC model did not learn {words} in {MAX_STEPS} steps")
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder, safe_serialization=True)
    return step


@pytest.fixture(scope="module")
def ctc_checkpoint(tmp_path_factory, clips):
    folder = save_wav2vec2_ctc(tmp_path_factory.mktemp("ctc") / "w2v-ctc", "".join(WORDS), **TRAINING)
    train_ctc(folder, clips, WORDS)
    return folder


# ---- in-process: model/ ---------------------------------------------------------------


def test_facts_know_which_checkpoint_transcribes(ctc_checkpoint, tiny_bundle):
    assert AudioEncoderFacts.from_pretrained(str(ctc_checkpoint)).can_transcribe
    assert not AudioEncoderFacts.from_pretrained(str(ctc_checkpoint), transcribe=False).can_transcribe
    tiny = Bundle.load(tiny_bundle)
    assert not AudioEncoderFacts.from_pretrained(tiny.resolve(tiny.audio_encoder)).can_transcribe


def test_transcripts_come_from_the_feature_forward_pass(ctc_checkpoint, clips):
    encoder = AudioEncoder(str(ctc_checkpoint), "cpu")
    assert encoder.can_transcribe and type(encoder.model).__name__ == "Wav2Vec2Model"
    passes, heads = [], []
    encoder.model.register_forward_hook(lambda *_: passes.append(1))
    encoder.ctc_head.register_forward_hook(lambda *_: heads.append(1))
    features, transcripts = encoder.encode_each_with_transcripts(clips)
    assert transcripts == WORDS
    buckets = length_buckets([len(c) for c in clips])
    assert len(passes) == len(heads) == len(buckets) < len(clips)  # one base forward (and one head) per batch
    # The features are the base model's, the same as a checkpoint loaded without its head gives.
    plain = AudioEncoder(str(ctc_checkpoint), "cpu", transcribe=False)
    assert not plain.can_transcribe and plain.ctc_head is None
    for ours, theirs in zip(features, plain.encode_each(clips)):
        assert ours.dtype == torch.float16 and torch.equal(ours, theirs)
    # Only the clips that ask get a transcript.
    _, some = encoder.encode_each_with_transcripts(clips, [True, False, False, True])
    assert some == ["good", None, None, "not bad"]


def test_each_clip_is_read_over_its_own_frames(ctc_checkpoint, clips):
    """A short clip padded to a long neighbour: the padded frames must not add characters."""
    encoder = AudioEncoder(str(ctc_checkpoint), "cpu")
    passes = []
    encoder.model.register_forward_hook(lambda *_: passes.append(1))
    short = clips[0]
    batch = [short, clips[3][: int(len(short) * 1.45)], short]  # one bucket: within the padding ratio
    _, transcripts = encoder.encode_each_with_transcripts(batch)
    assert len(passes) == 1
    assert transcripts[0] == transcripts[2] == "good"


def test_checkpoint_without_ctc_head_never_transcribes(tiny_bundle, clips):
    bundle = Bundle.load(tiny_bundle)
    encoder = AudioEncoder(bundle.resolve(bundle.audio_encoder), "cpu")
    assert not encoder.can_transcribe
    features, transcripts = encoder.encode_each_with_transcripts(clips)
    assert transcripts == [None] * len(clips) and all(f.shape[1] == encoder.hidden_size for f in features)


def test_bundle_can_turn_transcription_off(tmp_path, ctc_checkpoint):
    save_untrained_bundle(tmp_path / "b", "text", str(ctc_checkpoint), 32, 32, d_model=32, n_heads=2)
    assert Bundle.load(tmp_path / "b").transcribe is True
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    meta["audio_encoder"]["transcribe"] = False
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    off = Bundle.load(tmp_path / "b")
    assert off.transcribe is False and off.metadata()["audio_encoder"]["transcribe"] is False
    assert not AudioEncoder(off.resolve(off.audio_encoder), "cpu", transcribe=off.transcribe).can_transcribe
    meta["audio_encoder"]["transcribe"] = "false"  # a string would read as true: refused
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="transcribe"):
        Bundle.load(tmp_path / "b")


@pytest.mark.parametrize("value, expected", [(None, True), (True, True), (False, False), ("false", False),
                                             ("1", True)])
def test_request_flag_is_parsed(value, expected):
    payload = {"audio": base64.b64encode(b"RIFF....").decode()} | ({} if value is None else {"transcribe": value})
    assert parse_json(json.dumps(payload).encode(), Limits()).transcribe is expected


def test_request_flag_must_be_a_boolean():
    with pytest.raises(BadRequest, match="'transcribe' must be a boolean"):
        parse_json(json.dumps({"text": "hi", "transcribe": "maybe"}).encode(), Limits())


# ---- training: items without text read their transcript ---------------------------------


def _word_manifest(root, clips, texts: dict[str, list[str]]):
    """Each split holds every clip once; ``texts[split][i]`` is clip i's text ("" = none)."""
    import soundfile as sf

    from model.data.manifest import Item, save_manifest

    (root / "wav").mkdir(parents=True, exist_ok=True)
    items = []
    for split, row_texts in texts.items():
        for i, (word, clip, text) in enumerate(zip(WORDS, clips, row_texts)):
            sf.write(root / "wav" / f"{i}.wav", clip.numpy(), RATE)
            label = "negative" if "bad" in word else "positive"
            items.append(Item(f"{split}-{i}", text, f"wav/{i}.wav", split, label=label))
    return save_manifest(items, root / "manifest.jsonl")


def test_training_reads_transcripts_for_items_without_text(tmp_path, ctc_checkpoint, clips):
    from model.text_encoder import TextEncoder
    from model.training.cli import main

    save_bert(tmp_path / "bert", "tiny")
    manifest = _word_manifest(tmp_path / "data", clips, {"train": [""] * 4, "valid": ["", "", "great", "not bad"],
                                                           "test": WORDS})
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--text-encoder", str(tmp_path / "bert"), "--audio-encoder",
            str(ctc_checkpoint), "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--epochs", "2",
            "--d-model", "32", "--n-heads", "2", "--no-progress"]
    assert main(args) == 0
    bundle = Bundle.load(out)
    assert bundle.data["transcribed"] == {"train": 4, "valid": 2, "test": 0}
    assert "read their audio's transcript" in (out / "report" / "report.md").read_text()
    # The transcripts went into the cache beside the audio features, and a rerun reads them back.
    from model.training.cli import extract_features
    from model.training.config import TrainConfig
    from model.training.prepare import prepare_data

    config = TrainConfig(manifest=manifest, out=out, cache_dir=tmp_path / "cache", progress=False)
    manifests, sets, _, _ = prepare_data(config, lambda: True)
    text_encoder = TextEncoder(str(tmp_path / "bert"), 128, "cpu")
    audio_encoder = AudioEncoder(str(ctc_checkpoint), "cpu")
    passes = []
    audio_encoder.model.register_forward_hook(lambda *_: passes.append(1))
    text_feats, _, _, transcribed = extract_features(config, text_encoder, audio_encoder, manifests, sets, {})
    assert transcribed["train"] == 4 and passes == []  # cached: no forward pass at all
    typed = text_encoder.encode_each(WORDS)
    for heard, want in zip(text_feats["train"], typed):
        assert torch.equal(heard, want)  # the transcript's text features are the typed word's


def test_training_without_a_ctc_head_still_refuses_items_without_text(tmp_path, tiny_bundle, clips):
    from model.training.cli import main

    manifest = _word_manifest(tmp_path / "data", clips, {"train": ["", "bad", "great", "not bad"],
                                                           "valid": WORDS})
    args = ["--manifest", str(manifest), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "out"),
            "--no-cache", "--epochs", "1", "--no-progress"]
    assert main(args) == 2  # empty_text is an error there: nothing can stand in for the text


# ---- served: real Ray, HTTP ---------------------------------------------------------


def _bundle(root, audio_encoder, name: str):
    save_bert(root / "text_encoder", "tiny")
    if audio_encoder is not None:
        shutil.copytree(audio_encoder, root / "audio_encoder")
    return save_untrained_bundle(root, "text_encoder", "audio_encoder", BERT_PRESETS["tiny"]["hidden_size"],
                                 WAV2VEC2_PRESETS["tiny-ctc"]["hidden_size"], name=name, d_model=32, n_heads=2)


@pytest.fixture(scope="module")
def ctc_bundle(tmp_path_factory, ctc_checkpoint):
    root = tmp_path_factory.mktemp("ctc-bundle") / "bundle"
    _bundle(root, ctc_checkpoint, "tiny-ctc")
    return root


@pytest.fixture(scope="module")
def ctc_app(ray_cluster, ctc_bundle):
    from ray import serve

    url = deploy(ray_cluster, {"bundle": str(ctc_bundle)}, name="transcript-ctc", route_prefix="/transcript-ctc")
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    serve.delete("transcript-ctc")


@pytest.fixture(scope="module")
def tiny_app(served_app):
    """The tiny bundle (no CTC head), as conftest serves it."""
    with httpx.Client(base_url=served_app, timeout=60) as client:
        yield client


def _wav(clip: torch.Tensor) -> bytes:
    return encode_wav(clip.numpy(), RATE)


def _json_audio(clip: torch.Tensor, **fields) -> dict:
    return {"audio": base64.b64encode(_wav(clip)).decode(), **fields}


def test_served_audio_only_reply_reads_the_transcript(ctc_app, clips):
    for word, clip in zip(WORDS, clips):
        heard = ctc_app.post("/v1/predict", json=_json_audio(clip))
        assert heard.status_code == 200, heard.text
        heard = heard.json()
        assert heard["transcript"] == word
        assert set(heard["modalities"]) == {"fused", "text", "audio"}
        assert heard["modalities"]["text"]["source"] == "transcript"
        assert "source" not in heard["modalities"]["audio"] and "source" not in heard["modalities"]["fused"]
        assert not any("No transcript" in w for w in heard["warnings"])
        typed = ctc_app.post("/v1/predict", json={"text": word}).json()
        assert typed["transcript"] is None and typed["modalities"]["text"]["source"] == "request"
        for label, score in typed["modalities"]["text"]["scores"].items():
            assert heard["modalities"]["text"]["scores"][label] == pytest.approx(score, abs=1e-5)


def test_served_transcript_over_multipart_and_with_explain(ctc_app, clips):
    r = ctc_app.post("/v1/predict", data={"explain": "true"}, files={"audio": ("good.wav", _wav(clips[0]), "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transcript"] == "good" and body["modalities"]["text"]["source"] == "transcript"
    assert body["attention"]["tokens"] == ["[CLS]", "good", "[SEP]"]  # the text branch read the transcript


def test_served_request_can_turn_transcription_off(ctc_app, clips):
    replies = [ctc_app.post("/v1/predict", json=_json_audio(clips[1], transcribe=False)),
               ctc_app.post("/v1/predict", data={"transcribe": "false"}, files={"audio": ("bad.wav", _wav(clips[1]))})]
    for r in replies:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["transcript"] is None and set(body["modalities"]) == {"fused", "audio"}
        assert not any("No transcript" in w for w in body["warnings"])  # the client asked for none
    bad = ctc_app.post("/v1/predict", json=_json_audio(clips[1], transcribe="perhaps"))
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_type"


def test_served_text_with_audio_keeps_the_request_text(ctc_app, clips):
    body = ctc_app.post("/v1/predict", json=_json_audio(clips[0], text="bad")).json()
    assert body["transcript"] is None and body["modalities"]["text"]["source"] == "request"
    assert "Speech without text: the text branch reads what the model heard" in ctc_app.get("/config").text


def test_served_checkpoint_without_ctc_head_says_so(tiny_app, clips):
    r = tiny_app.post("/v1/predict", json=_json_audio(clips[0]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transcript"] is None and set(body["modalities"]) == {"fused", "audio"}
    assert any("No transcript was available" in w and CANNOT in w for w in body["warnings"])
    assert CANNOT in tiny_app.get("/config").text  # the UI says it in words, under the inputs


def test_the_scoring_job_reads_speech_without_text_as_the_api_does(ctc_bundle, ctc_app, clips, tmp_path):
    """The Ray Data job transcribes a row with speech and no text, and its text branch reads
    the transcript: the same answer as /v1/predict for the same file."""
    from jobs.run import BatchResources, run
    from jobs.tables import read_shards

    rows = []
    for k, (word, clip) in enumerate(zip(WORDS, clips)):
        path = tmp_path / f"clip-{k}.wav"
        path.write_bytes(_wav(clip))
        rows.append({"id": f"heard-{k}", "audio_path": str(path)})
    rows.append({"id": "typed", "text": "bad", "audio_path": rows[0]["audio_path"]})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    resources = BatchResources(gpu=False, decode_cpus=0.2, actor_cpus=0.2, max_actors=1)
    run("score", manifest, ctc_bundle, tmp_path / "out", resources=resources, progress=False)
    scored = {r["id"]: r for r in read_shards(tmp_path / "out").to_pylist()}
    for row in rows:
        job = scored[row["id"]]
        body = {"audio": base64.b64encode(Path(row["audio_path"]).read_bytes()).decode()}
        if "text" in row:
            body["text"] = row["text"]
        api = ctc_app.post("/v1/predict", json=body).json()
        assert job["error_code"] is None, job
        assert job["transcript"] == api["transcript"], (job["transcript"], api["transcript"])
        assert job["modalities"] == "text+audio" and job["label"] == api["label"]
        assert job["sentiment"] == pytest.approx(api["sentiment"], abs=1e-3)
        assert job["text_sentiment"] == pytest.approx(api["modalities"]["text"]["sentiment"], abs=1e-3)
    assert [scored[f"heard-{k}"]["transcript"] for k in range(len(WORDS))] == WORDS
    assert scored["typed"]["transcript"] is None  # the row's own text wins
