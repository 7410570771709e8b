"""``bljust export`` and ``transcribe --model``: the exported ONNX and TorchScript files give PyTorch's
log-posteriors on padded batches of any size and length, carry their units, and decode as the run does."""

from __future__ import annotations

import json
from pathlib import Path

import jiwer
import numpy as np
import onnx
import pytest
import torch

from bljust.checkpoint import atomic_save
from bljust.cli import main as cli_main
from bljust.config import TokenizerConfig, load_config, to_dict
from bljust.data.manifests import load_split
from bljust.data.tokenizer import CharTokenizer, train_tokenizer
from bljust.export import (
    FORMATS,
    TORCHSCRIPT_META,
    OnnxCTC,
    export_model,
    tokenizer_from_metadata,
    tokenizer_json,
    units,
)
from bljust.inference import load_trained, pad_batch, read_audio
from bljust.lm import read_text, write_arpa
from bljust.methods import METHODS
from bljust.models.asr import ASRModel
from tests.conftest import TINY

ATOL = 1e-4


@pytest.fixture(scope="module")
def run(tiny_corpus, tmp_path_factory) -> Path:
    """A 4-step CTC run, decoded in float32 (``train.amp=false``) as the exported graph is, so that the texts
    of the run and of its export can be compared exactly."""
    out = tmp_path_factory.mktemp("export") / "run"
    METHODS["supervised"](load_config(TINY, ["train.max_steps=4", "train.amp=false"]), tiny_corpus, out)
    return out


@pytest.fixture(scope="module")
def exported(run) -> dict[str, Path]:
    paths = {fmt: run.parent / f"model.{fmt}" for fmt in FORMATS if fmt != "sherpa-onnx"}
    for fmt, path in paths.items():
        export_model(run, fmt, path)
    return paths


@pytest.fixture(scope="module")
def wavs(tiny_corpus) -> list[str]:
    return [c.recording.sources[0].source for c in load_split(tiny_corpus, "test").subset(first=4)]


def model_file(tmp_path: Path, *overrides: str) -> Path:
    """An untrained model file of the tiny recipe: enough for what happens before and after training alike."""
    cfg = load_config(TINY, list(overrides))
    tokenizer = CharTokenizer()
    path = tmp_path / "model.pt"
    atomic_save({"model": ASRModel(cfg, tokenizer.vocab_size).inference_state_dict(), "config": to_dict(cfg),
                 "tokenizer": tokenizer.state_dict()}, path)
    return path


def assert_same_log_probs(got: tuple, want: tuple) -> None:
    """Equal lengths, and equal log-posteriors on every utterance's valid frames (padding is the graph's own)."""
    (got_lp, got_lens), (want_lp, want_lens) = (tuple(torch.as_tensor(x) for x in pair) for pair in (got, want))
    assert got_lens.tolist() == want_lens.tolist()
    for b, n in enumerate(want_lens.tolist()):
        torch.testing.assert_close(got_lp[b, :n], want_lp[b, :n], atol=ATOL, rtol=0)


def test_exports_match_pytorch_on_padded_batches_of_any_shape(run, exported, wavs):
    model, _, _ = load_trained(run)
    session = OnnxCTC(exported["onnx"], threads=1)
    script = torch.jit.load(str(exported["torchscript"]))
    audios = [read_audio(w) for w in wavs]
    # real utterances of different lengths batched with padding, then a batch size and lengths unlike export's
    for batch in (audios[:3], audios[3:] + [audios[0][:7000], audios[1][:20000], audios[2][:1500]]):
        wav, lens = pad_batch(batch)
        with torch.no_grad():
            want = model(*model.frontend(torch.from_numpy(wav), torch.from_numpy(lens)))
            got_script = script(torch.from_numpy(wav), torch.from_numpy(lens))
        assert_same_log_probs(session.run(wav, lens), want)
        assert_same_log_probs(got_script, want)


def test_the_file_alone_carries_the_units(run, exported):
    _, tokenizer, _ = load_trained(run)
    meta = {p.key: p.value for p in onnx.load(str(exported["onnx"])).metadata_props}
    extra = {TORCHSCRIPT_META: ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    for found in (meta, json.loads(extra[TORCHSCRIPT_META])):
        assert found["bljust.blank_id"] == "0" and found["bljust.sample_rate"] == "16000"
        assert json.loads(found["bljust.units"]) == tokenizer.units
        assert tokenizer_from_metadata(found, "f").units == tokenizer.units


def test_sentencepiece_units_travel_as_metadata():
    sp = train_tokenizer(TokenizerConfig(kind="bpe", vocab_size=40),
                         ["THE CAT SAT ON THE MAT", "A DOG RAN TO THE CAT", "THE MAT WAS RED"] * 5)
    back = tokenizer_from_metadata({"bljust.tokenizer": tokenizer_json(sp)}, "f")
    assert back.model_proto == sp.model_proto and units(back)[0] == "<blk>"
    assert back.decode(sp.encode("THE CAT")) == "THE CAT"


def test_transcribe_with_the_onnx_file_as_with_the_run(run, exported, wavs, tiny_corpus, tmp_path, capsys):
    def transcribe(*args: str) -> list[str]:
        assert cli_main(["transcribe", *args]) == 0
        return capsys.readouterr().out.splitlines()

    greedy = transcribe(str(run), *wavs)
    assert [ln.split("\t")[0] for ln in greedy] == wavs
    assert transcribe("--model", str(exported["onnx"]), *wavs) == greedy
    arpa = tmp_path / "lm.arpa"
    write_arpa(read_text(tiny_corpus / "lm_text.txt"), arpa, order=2)
    lm = ["--lm", str(arpa), "--lm-weight", "2", "--word-score", "1"]
    assert transcribe("--model", str(exported["onnx"]), *wavs, *lm) == transcribe(str(run), *wavs, *lm)


def test_sherpa_onnx_decodes_the_export_as_bljust_does(tmp_path, wavs, capsys):
    import sherpa_onnx
    import soundfile as sf

    # untrained: its posteriors are far from all-blank, so the texts compared are not empty
    torch.manual_seed(0)
    run = model_file(tmp_path, "train.amp=false", "features.normalize=utterance")
    assert cli_main(["export", str(run), str(tmp_path / "sherpa"), "--format", "sherpa-onnx"]) == 0
    assert "from_omnilingual_asr_ctc" in capsys.readouterr().out
    tokens = (tmp_path / "sherpa" / "tokens.txt").read_text().splitlines()
    assert tokens[0] == "<blk> 0" and "▁ 2" in tokens and len(tokens) == CharTokenizer().vocab_size
    recognizer = sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc(
        model=str(tmp_path / "sherpa" / "model.onnx"), tokens=str(tmp_path / "sherpa" / "tokens.txt"), num_threads=1)
    texts = []
    for path in wavs:
        audio, rate = sf.read(path, dtype="float32")
        stream = recognizer.create_stream()
        stream.accept_waveform(rate, audio)
        recognizer.decode_stream(stream)
        texts.append(f"{path}\t{stream.result.text.strip()}")
    assert cli_main(["transcribe", str(run), *wavs]) == 0
    ours = capsys.readouterr().out.splitlines()
    assert [t.split("\t")[0] for t in ours] == wavs and all(t.split("\t")[1] for t in ours)
    assert any(" " in t.split("\t")[1] for t in texts)  # the word separator comes out as a space
    # The untrained model's posteriors are nearly flat, so the log-mel floor's tiny shift under sherpa-onnx's
    # waveform scaling flips a near-tie now and then; a wrong unit table or front-end would change every text.
    assert jiwer.cer(ours, texts) < 0.03, (ours, texts)


def test_what_cannot_be_exported_is_refused_by_name(tmp_path):
    normalised = model_file(tmp_path, "features.normalize=global")
    with pytest.raises(ValueError, match=f"{normalised} normalises .* features.normalize=global.*sherpa-onnx"):
        export_model(normalised, "sherpa-onnx", tmp_path / "sherpa")
    rnnt = model_file(tmp_path, "model.loss=rnnt")
    with pytest.raises(ValueError, match=f"{rnnt} is a transducer model.*cannot be exported"):
        export_model(rnnt, "onnx", tmp_path / "x.onnx")
    lstm = model_file(tmp_path, "model.arch=cnn_lstm")
    with pytest.raises(ValueError, match=f"{lstm} has a cnn_lstm encoder, which exports to TorchScript only"):
        export_model(lstm, "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    export_model(lstm, "torchscript", tmp_path / "lstm.pt")  # checked against PyTorch on another batch shape inside
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"{junk} is not a bljust model file"):
        export_model(junk, "onnx", tmp_path / "x.onnx")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none")):
        export_model(tmp_path / "none", "onnx", tmp_path / "x.onnx")


def test_transcribe_model_refuses_files_that_are_not_bljust_onnx(tmp_path, exported, wavs, capsys):
    foreign = tmp_path / "foreign.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                                            [x], [onnx.helper.make_tensor_value_info(
                                                                "y", onnx.TensorProto.FLOAT, [1])])), foreign)
    cases = {foreign: "is not a model written by 'bljust export'",
             exported["torchscript"]: "is not an ONNX model onnxruntime can load",
             tmp_path / "none.onnx": "no such ONNX model file"}
    for path, message in cases.items():
        assert cli_main(["transcribe", "--model", str(path), wavs[0]]) == 2
        assert f"{path}" in (err := capsys.readouterr().err) and message in err
    short = np.zeros(500, dtype=np.float32)  # shorter than the subsampling's input: no frames, not a failure
    log_probs, lens = OnnxCTC(exported["onnx"], threads=1).run(*pad_batch([short]))
    assert lens.tolist() == [0]


def test_the_parser_offers_the_export_formats():
    from bljust.cli import build_parser

    export = build_parser()._subparsers._group_actions[0].choices["export"]
    assert next(a for a in export._actions if a.dest == "format").choices == list(FORMATS)
