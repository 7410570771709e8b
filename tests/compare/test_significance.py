"""Paired bootstrap intervals of error-rate differences (``bljust.compare.significance``), on synthetic
per-utterance counts and hypothesis files; no training."""

from __future__ import annotations

import numpy as np
import pytest

from bljust.compare.results import SCHEMA, validate_results
from bljust.compare.significance import (
    Interval,
    compare_runs,
    paired_bootstrap,
    read_hypotheses,
    resampled_sums,
    significance,
    utterance_errors,
)
from bljust.evaluate import error_rates, write_hypotheses

N = 2000  # test utterances of the synthetic counts


def _counts(error_rate: float, seed: int, words: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(errors, reference words) per utterance: 5–30 words each, each wrong with probability ``error_rate``."""
    rng = np.random.default_rng(seed)
    words = rng.integers(5, 31, N) if words is None else words
    return rng.binomial(words, error_rate), words


def _one(errors, reference_errors, units, **kw) -> Interval:
    (interval,) = paired_bootstrap(errors[:, None], reference_errors[:, None], units[:, None], **kw)
    return interval


def test_identical_systems_differ_by_nothing():
    errors, words = _counts(0.2, seed=1)
    interval = _one(errors, errors, words)
    assert interval == Interval(0.0, 0.0, 0.0) and interval.direction == 0


def test_systems_of_the_same_error_rate_are_not_told_apart():
    errors, words = _counts(0.2, seed=1)
    other, _ = _counts(0.2, seed=2, words=words)
    interval = _one(other, errors, words)
    assert interval.low < 0 < interval.high and interval.direction == 0
    # about the normal approximation's width: each word wrong or not independently in both systems (binomial)
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * np.sqrt(2 * 0.2 * 0.8 / words.sum()), rel=0.15)


@pytest.mark.parametrize("better", [True, False])
def test_clearly_fewer_errors_exclude_zero_on_the_right_side(better):
    errors, words = _counts(0.2, seed=1)
    fewer, _ = _counts(0.15, seed=2, words=words)
    interval = _one(fewer, errors, words) if better else _one(errors, fewer, words)
    point = (fewer.sum() - errors.sum()) / words.sum() * (1 if better else -1)
    assert interval.diff == pytest.approx(point)
    assert interval.low < interval.diff < interval.high
    assert interval.direction == (-1 if better else 1)
    assert (interval.high < -0.03) if better else (interval.low > 0.03)


def test_pairing_cancels_what_both_systems_share():
    """The second system makes the first one's errors give or take one: the paired interval of the difference is
    far narrower than one from resampling the two systems independently, which ignores that they share each
    utterance's difficulty."""
    rng = np.random.default_rng(3)
    words = rng.integers(5, 31, N)
    difficulty = rng.beta(1, 3, N)  # some utterances are hard for every system
    errors = rng.binomial(words, difficulty)
    other = np.clip(errors + rng.integers(-1, 2, N), 0, None)
    paired = _one(other, errors, words)
    units = words.astype(float)[:, None]
    a = resampled_sums(np.hstack([other[:, None], units]), seed=0)
    b = resampled_sums(np.hstack([errors[:, None], units]), seed=1)
    unpaired = np.quantile(a[:, 0] / a[:, 1] - b[:, 0] / b[:, 1], [0.025, 0.975])
    assert (paired.high - paired.low) * 3 < unpaired[1] - unpaired[0]


def test_the_bootstrap_is_seeded_and_several_measures_share_its_draws():
    errors, words = _counts(0.2, seed=1)
    other, _ = _counts(0.18, seed=2, words=words)
    assert _one(other, errors, words) == _one(other, errors, words)
    assert _one(other, errors, words, seed=1) != _one(other, errors, words)
    both = paired_bootstrap(np.column_stack([other, 2 * other]), np.column_stack([errors, 2 * errors]),
                            np.column_stack([words, 2 * words]))
    assert both[0] == both[1] == _one(other, errors, words)  # the same draws: a ratio of doubled counts is the same
    wide = _one(other, errors, words, level=0.99)
    assert wide.low < both[0].low and wide.high > both[0].high


# ------------------------------------------------------------------ hypothesis files

REFS = {"u1": "the cat sat", "u2": "Hello, world!", "u3": "", "u4": "a b c d"}
HYPS = {"u1": "the bat sat down", "u2": "hello world", "u3": "noise", "u4": ""}


def test_hypothesis_files_round_trip_and_give_the_recorded_rates(tmp_path):
    path = tmp_path / "eval" / "test.hyp.txt"
    write_hypotheses(path, {"refs": REFS, "hyps": HYPS})
    pairs = read_hypotheses(path)
    assert pairs == {cid: (REFS[cid], HYPS[cid]) for cid in REFS}
    errors = utterance_errors(pairs)
    assert errors.ids == ("u1", "u2", "u4")  # an empty reference is not scored, as in error_rates
    # u1: one substitution and one insertion; u2: none once normalised; u4: four deletions
    assert errors.word_errors.tolist() == [2, 0, 4] and errors.words.tolist() == [3, 2, 4]
    assert errors.chars.tolist() == [11, 11, 7] and errors.char_errors.tolist()[2] == 7
    recorded = error_rates(list(REFS.values()), list(HYPS.values()))
    assert errors.rates() == pytest.approx((recorded["wer"], recorded["cer"]), abs=1e-12)


def test_malformed_hypothesis_files_are_refused(tmp_path):
    path = tmp_path / "test.hyp.txt"
    path.write_text("u1\tREF: A B\nu1\tHYP: A B\nu2\tREF: C\n")
    with pytest.raises(ValueError, match="1 utterance.* without both a REF and a HYP line, e.g. u2"):
        read_hypotheses(path)
    path.write_text("u1\tREF: A B\nu1 HYP: A B\n")
    with pytest.raises(ValueError, match=r"test.hyp.txt:2: neither a REF nor a HYP line"):
        read_hypotheses(path)


# ------------------------------------------------------------------ seeds pooled, and results.json

VOCAB = "ALPHA BRAVO CHARLIE DELTA ECHO FOXTROT GOLF HOTEL INDIA JULIET".split()


def _decoded(error_rate: float, seed: int, utterances: int = 300) -> dict:
    """Transcripts of 10 words; each hypothesis word wrong ("ZULU") with probability ``error_rate``."""
    rng = np.random.default_rng(seed)
    refs, hyps = {}, {}
    for u in range(utterances):
        words = [VOCAB[(u + i) % len(VOCAB)] for i in range(10)]
        refs[f"utt{u:04d}"] = " ".join(words)
        hyps[f"utt{u:04d}"] = " ".join("ZULU" if rng.random() < error_rate else w for w in words)
    return {"refs": refs, "hyps": hyps}


def test_seeds_are_paired_and_pooled_over_the_utterances_they_share():
    method = {s: utterance_errors({k: (r, d["hyps"][k]) for k, r in d["refs"].items()})
              for s, d in ((0, _decoded(0.1, 10)), (1, _decoded(0.3, 11)), (2, _decoded(0.1, 12)))}
    reference = {s: utterance_errors({k: (r, d["hyps"][k]) for k, r in d["refs"].items()})
                 for s, d in ((0, _decoded(0.2, 20)), (1, _decoded(0.2, 21, utterances=250)))}
    c = compare_runs(method, reference)
    assert c["seeds"] == [0, 1] and c["utterances"] == 250  # seed 2 has no reference; seed 1 has 250 utterances
    assert [p["seed"] for p in c["per_seed"]] == [0, 1] and [p["utterances"] for p in c["per_seed"]] == [300, 250]
    # seed 0 of the method is better than seed 0 of the reference, seed 1 worse: the pooled difference is the mean
    # of the two seeds' corpus-level differences on the shared utterances
    shared = [f"utt{u:04d}" for u in range(250)]
    diffs = [(method[s].take(shared)[:, 0].sum() - reference[s].take(shared)[:, 0].sum()) / 2500 for s in (0, 1)]
    assert c["wer"]["diff"] == pytest.approx(np.mean(diffs))
    assert c["per_seed"][0]["wer"]["high"] < 0 < c["per_seed"][1]["wer"]["low"]
    assert compare_runs({3: method[0]}, reference) is None


def _results(tmp_path) -> dict:
    """results.json of supervised (20 % of words wrong) and BL-JUST (10 %), seeds 0 and 1; BL-JUST also decoded
    with the LM, supervised's LM hypotheses missing."""
    runs = []
    for method, rate in (("supervised", 0.2), ("bljust", 0.1)):
        for seed in (0, 1):
            run = {"method": method, "seed": seed, "run_dir": f"runs/{method}-seed{seed}"}
            for score, suffix in (("test", ""), ("lm", ".lm")):
                if score == "lm" and method == "supervised":
                    continue
                decoded = _decoded(rate, 100 * seed + len(method) + len(suffix))
                write_hypotheses(tmp_path / run["run_dir"] / "eval" / f"test{suffix}.hyp.txt", decoded)
                rates = error_rates(list(decoded["refs"].values()), list(decoded["hyps"].values()))
                scores = {"wer": rates["wer"], "cer": rates["cer"]}
                if score == "test":
                    run["test"] = scores
                else:
                    run["test"]["lm"] = scores
            runs.append(run)
    runs[1]["test"]["lm"] = {"wer": 0.2, "cer": 0.1}  # recorded, but its file was never written
    return {"runs": runs}


def test_significance_of_a_comparison_output(tmp_path):
    results = _results(tmp_path)
    runs = results["runs"]
    runs[2]["test"]["wer"] += 0.01  # its file is from another evaluation than the record
    sig = significance(tmp_path, runs)
    assert sig["resamples"] == 2000 and sig["level"] == 0.95 and "seed i" in sig["pooling"]
    assert list(sig["scores"]) == ["test"]  # no reference has LM hypotheses
    c = sig["scores"]["test"]["bljust"]["supervised"]
    assert c["seeds"] == [1] and c["wer"]["high"] < 0 and c["cer"]["high"] < 0  # BL-JUST seed 0 left out
    assert "supervised" not in sig["scores"]["test"]  # a reference is not compared with itself
    reasons = {(x["method"], x["seed"], x["score"]): x["reason"] for x in sig["skipped"]}
    assert set(reasons) == {("supervised", 1, "test_lm"), ("bljust", 0, "test")}
    assert "No such file" in reasons[("supervised", 1, "test_lm")]
    assert "results.json" in reasons[("bljust", 0, "test")] and "another evaluation" in reasons[("bljust", 0, "test")]


def test_results_json_validates_the_intervals(tmp_path):
    sig = significance(tmp_path, _results(tmp_path)["runs"])
    results = {"schema": SCHEMA, "data": "d", "corpus": {}, "methods": [], "seeds": [0], "machine": {},
               "failed": [], "runs": [], "significance": sig,
               "budget": {"budget_rule": "labeled", "rule_text": "t", "unit": "labeled_updates", "value": 40}}
    validate_results(results)
    del sig["scores"]["test"]["bljust"]["supervised"]["per_seed"][1]["cer"]["low"]
    with pytest.raises(ValueError, match=r"significance.scores.test.bljust.supervised.per_seed\[1\].cer lacks 'low'"):
        validate_results(results)
    del sig["skipped"]
    with pytest.raises(ValueError, match="significance lacks 'skipped'"):
        validate_results(results)
