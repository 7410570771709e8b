"""Pseudo-labeling: labels from the LM beam search, and a learning-rate warm-up at every round."""

from __future__ import annotations

import json

import pytest
from lhotse import CutSet

from bljust.config import load_config
from bljust.lm import arpa_words, read_text, write_arpa
from bljust.methods import pl
from bljust.engine.optim import lr_factor
from tests.conftest import TINY


def _rows(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lm_pseudo_labels_are_lm_words_with_weights_tuned_on_dev(tiny_corpus, tmp_path):
    arpa = tmp_path / "2gram.arpa"
    write_arpa(read_text(tiny_corpus / "lm_text.txt"), arpa, 2)
    vocab = set(arpa_words(arpa))
    # a high word score makes even a barely trained model's search emit words
    cfg = load_config(TINY, ["train.max_steps=6", "pl.rounds=1", "pl.seed_fraction=0.5", "pl.decode=lm",
                             f"decode.lm={arpa}", "decode.lm_weights=[0.5, 1.0]", "decode.word_scores=[4.0, 8.0]",
                             "pl.min_chars_per_second=0", "pl.max_chars_per_second=1000", "pl.keep_fraction=1.0"])
    summary = pl.train(cfg, tiny_corpus, tmp_path / "run")
    stats = summary["pseudo_labels"]["round1"]
    assert stats["lm_weight"] in (0.5, 1.0) and stats["word_score"] in (4.0, 8.0)
    cuts = CutSet.from_file(tmp_path / "run" / "pseudo" / "round1_cuts.jsonl.gz")
    texts = [c.supervisions[0].text for c in cuts]
    assert texts and all(w in vocab for t in texts for w in t.split())


def test_lm_pseudo_labels_need_an_lm(tiny_corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="decode.lm"):
        pl.train(load_config(TINY, ["pl.decode=lm"]), tiny_corpus, tmp_path / "run")


def test_every_round_warms_its_learning_rate_up(tiny_corpus, tmp_path):
    cfg = load_config(TINY, ["train.max_steps=10", "pl.rounds=2", "pl.seed_fraction=0.4", "pl.round_warmup_steps=2",
                             "optim.warmup_steps=2", "optim.schedule=constant", "pl.min_chars_per_second=0"])
    pl.train(cfg, tiny_corpus, tmp_path / "run")
    lr = {r["step"]: r["lr"] for r in _rows(tmp_path / "run") if r["kind"] == "train"}
    peak = cfg.optim.lr
    # seed model steps 1-4, round 1 steps 5-7, round 2 steps 8-10: each starts at half the peak
    assert [lr[s] / peak for s in range(1, 11)] == pytest.approx([0.5, 1, 1, 1, 0.5, 1, 1, 0.5, 1, 1])


def test_a_global_schedule_runs_through_the_rounds(tiny_corpus, tmp_path):
    cfg = load_config(TINY, ["train.max_steps=10", "pl.rounds=2", "pl.seed_fraction=0.4", "pl.lr_schedule=global",
                             "optim.warmup_steps=2", "optim.schedule=cosine", "pl.min_chars_per_second=0"])
    pl.train(cfg, tiny_corpus, tmp_path / "run")
    rows = [r for r in _rows(tmp_path / "run") if r["kind"] == "train"]
    lr = {r["step"]: r["lr"] for r in rows}
    expected = [cfg.optim.lr * lr_factor(s - 1, 10, 2, "cosine", cfg.optim.min_lr_ratio) for s in range(1, 11)]
    assert [lr[s] for s in range(1, 11)] == pytest.approx(expected)
    assert {r["round"] for r in rows} == {0, 1, 2}  # the rounds still swapped the targets


def test_label_errors_score_pseudo_labels_against_the_unlabeled_transcripts(tiny_corpus, tmp_path):
    from bljust.data.manifests import cut_text, load_split
    unlabeled = load_split(tiny_corpus, "unlabeled")
    truth = {c.recording_id: cut_text(c) for c in load_split(tiny_corpus, "unlabeled_text")}
    cuts = list(unlabeled)[:4]
    right = {c.id: truth[c.recording_id] for c in cuts}
    wrong = {**right, cuts[0].id: "X" * len(truth[cuts[0].recording_id])}  # one label all wrong, same length
    kept = CutSet.from_cuts(cuts[1:])
    assert pl.label_errors(tiny_corpus, unlabeled, right, kept) == {"label_wer_all": 0.0, "label_cer_all": 0.0,
                                                         "label_wer_kept": 0.0, "label_cer_kept": 0.0}
    errors = pl.label_errors(tiny_corpus, unlabeled, wrong, kept)
    n_chars = sum(len(t) for t in right.values())
    assert errors["label_cer_all"] == pytest.approx(len(truth[cuts[0].recording_id]) / n_chars, rel=0.05)
    assert errors["label_cer_kept"] == 0.0  # the wrong label was not kept
    # a data directory without the transcripts scores nothing
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in tiny_corpus.glob("unlabeled_*.jsonl.gz"):
        if not f.name.startswith("unlabeled_text"):
            (bare / f.name).symlink_to(f)
    assert pl.label_errors(bare, unlabeled, right, kept) == {}
