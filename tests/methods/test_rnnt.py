"""Transducer models (``model.loss: rnnt``) end to end on the tiny corpus: a transducer memorises a handful of
utterances, every method trains one and writes a model that evaluates, transcribes and probes, and the word-LM
beam search (CTC-only) is refused before any work."""

from __future__ import annotations

import json

import pytest
import torch

from bljust import cli
from bljust.config import load_config
from bljust.data.manifests import load_split, write_split
from bljust.evaluate import evaluate_run
from bljust.inference import load_trained
from bljust.methods import METHOD_NAMES, METHODS, supervised
from bljust.probe import ProbeConfig, probe_run
from tests.conftest import TINY

RNNT = ["model.loss=rnnt", "model.predictor_dim=32", "model.joiner_dim=32"]


def test_overfits_a_handful_of_utterances(tiny_corpus, tmp_path):
    """A small transducer memorises 8 utterances: greedy decoding transcribes them back with CER < 0.2 (its loss
    ends near 0.01 per unit; what greedy decoding still misses are units bunched at one frame, up to 10 of them)."""
    few = load_split(tiny_corpus, "labeled").subset(first=8)
    recs, sups = few.decompose()[:2]
    for split in ("labeled", "dev"):
        write_split(tmp_path / "data", split, recs, sups)
    cfg = load_config(TINY, [
        "model.loss=rnnt", "model.predictor_dim=64", "model.joiner_dim=64", "model.d_model=96", "model.num_layers=2",
        "model.num_heads=4", "model.subsampling_channels=64", "features.spec_augment=false", "train.max_steps=400",
        "train.valid_every=100", "train.checkpoint_every=400", "optim.lr=5e-3", "optim.warmup_steps=20",
        "data.max_duration=120", "data.max_utterance_seconds=30", "train.log_every=20"])
    summary = supervised.train(cfg, tmp_path / "data", tmp_path / "run")
    assert summary["best_dev_cer"] < 0.2, summary
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["f"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.1 * losses[0]
    model, _, _ = load_trained(tmp_path / "run")
    assert model.transducer is not None and not hasattr(model, "ctc_head")


@pytest.fixture(scope="module")
def runs(tiny_corpus, tmp_path_factory):
    """Every method, 4 steps of the tiny recipe with a transducer head (PL keeps every non-empty label)."""
    out = tmp_path_factory.mktemp("rnnt")
    cfg = load_config(TINY, [*RNNT, "pl.min_chars_per_second=0", "pl.max_chars_per_second=1000",
                             "pl.keep_fraction=1.0"])
    return {m: (METHODS[m](cfg, tiny_corpus, out / m), out / m) for m in METHOD_NAMES}


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_trains_a_transducer_that_evaluates(method, runs, tiny_corpus):
    summary, run = runs[method]
    assert summary["steps"] == 4 and summary["bad_steps"] == 0
    model, _, cfg = load_trained(run)
    assert cfg.model.loss == "rnnt" and model.transducer is not None
    scores = evaluate_run(run, tiny_corpus, ("dev", "test"))
    for split in ("dev", "test"):
        assert 0 <= scores[split]["cer"] < 10 and scores[split]["loss"] > 0
        assert scores[split]["decoding"] == "greedy transducer (at most 3 units per frame)"
    assert (run / "eval" / "test.hyp.txt").is_file()
    if method == "pl":  # the labels came from greedy transducer decoding, ranked by their units' mean log-prob
        for stats in summary["pseudo_labels"].values():
            assert stats["decoded"] > 0 and stats["mean_confidence_kept"] <= 0


def test_evaluate_and_transcribe_decode_with_the_beam_search_or_greedily(runs, tiny_corpus, capsys):
    _, run = runs["supervised"]
    assert cli.main(["evaluate", str(run), "--data", str(tiny_corpus), "--split", "test", "--rnnt-beam", "2"]) == 0
    result = json.loads((run / "eval" / "test.json").read_text())
    assert result["decoding"].startswith("transducer modified beam search (beam 2")
    greedy = evaluate_run(run, tiny_corpus, ("dev",), rnnt_beam=0)["dev"]
    assert greedy["decoding"] == "greedy transducer (at most 3 units per frame)" and 0 <= greedy["cer"] < 10
    wav = load_split(tiny_corpus, "dev")[0].recording.sources[0].source
    capsys.readouterr()
    for beam in ([], ["--rnnt-beam", "0"]):
        assert cli.main(["transcribe", str(run), wav, *beam]) == 0
        assert capsys.readouterr().out.startswith(f"{wav}\t")


def test_the_word_lm_is_refused_before_any_decoding(runs, tiny_corpus, tmp_path, capsys):
    """--lm reads CTC posteriors: a transducer is refused with a reason, before the LM file is even looked for."""
    _, run = runs["supervised"]
    missing = str(tmp_path / "no.arpa")
    with pytest.raises(ValueError, match="transducer model.*CTC models only"):
        evaluate_run(run, tiny_corpus, ("dev",), lm=missing)
    wav = load_split(tiny_corpus, "dev")[0].recording.sources[0].source
    assert cli.main(["transcribe", str(run), wav, "--lm", missing]) == 2
    assert "CTC models only" in capsys.readouterr().err


def test_the_linear_probe_reads_a_transducer_runs_encoder(runs, tiny_corpus):
    """The probe is a CTC head on the encoder alone, whatever head the run trained."""
    _, run = runs["supervised"]
    result = probe_run(run, tiny_corpus, ProbeConfig(steps=20))
    assert 0 <= result["dev"]["cer"] < 10 and result["train"]["loss_end"] < result["train"]["loss_start"]
    model, _, _ = load_trained(run)
    assert result["encoder_width"] == model.encoder.output_dim
    assert torch.isfinite(torch.tensor(result["train"]["loss_end"]))


def test_hubert_target_purity_is_not_measured_against_a_transducer(runs, tiny_corpus, caplog):
    """PNMI and purity align with CTC posteriors; a transducer run (``ssl-targets --from``'s default aligner)
    leaves them out with a note instead of failing after the k-means."""
    from bljust.ssl_targets import purity

    _, run = runs["supervised"]
    assert purity(tiny_corpus, None, None, run, "cpu", 60.0) == {}
    assert "need a CTC run's alignments" in caplog.text
