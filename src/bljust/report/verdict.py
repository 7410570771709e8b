"""What the numbers say: the paired bootstrap intervals against PT+FT and supervised training, the verdict (the
best method on dev and what it gained on test), the papers' four claims, and the compute each run needed to reach
PT+FT's dev CER."""

from __future__ import annotations

import statistics

from bljust.compare.budget import ABLATIONS, TOPLINE
from bljust.compare.significance import LEVEL, REFERENCES, Interval
from bljust.report.numbers import (DASH, KEY_NAMES, Inputs, batch_passes_at, field, g_end, g_reach, g_threshold,
                                   has_lm, heldout, label, num, pct, reach_ptft, run_value)

SCORE_NAMES = {"test": "test", "test_lm": "test, with the LM"}
"""How the report names the hypotheses of results.json's significance scores."""


def _points(v: float) -> str:
    """A difference of rates in signed points of %, with a true minus sign (a hyphen reads as a dash)."""
    return f"{100 * v:+.1f}".replace("-", "\u2212")


def _interval(iv: dict) -> str:
    return f"{_points(iv['diff'])} [{_points(iv['low'])}, {_points(iv['high'])}]"


def _in_words(method: str, ref: str, key: str, iv: dict) -> str:
    """Whether the interval of ``method`` − ``ref`` in ``key`` (``KEY_NAMES``) excludes zero, and on which side."""
    direction = Interval(**iv).direction
    if direction == 0:
        return "the interval includes zero: no detectable difference"
    return f"{label(method)}'s {KEY_NAMES[key]} is {'lower' if direction < 0 else 'higher'} than {label(ref)}'s"


def _comparison(inp: Inputs, score: str, method: str, ref: str) -> dict | None:
    return inp.significance.get("scores", {}).get(score, {}).get(method, {}).get(ref)


def intervals(inp: Inputs) -> list[tuple]:
    """Every method's test WER and CER minus PT+FT's and supervised training's, with paired bootstrap intervals:
    the error table's relative changes do not say whether another draw of test utterances would agree."""
    sig = inp.significance
    blocks = [("h", 2, "Is the difference real? Paired bootstrap intervals")]
    rows = []
    for ref in REFERENCES:
        for score in sig.get("scores", {}):
            for m in inp.methods:
                if (c := _comparison(inp, score, m, ref)) is None:
                    continue
                for rate in ("wer", "cer"):
                    key = f"{score}_{rate}"
                    per_seed = "; ".join(f"seed {p['seed']}: {_interval(p[rate])}" for p in c["per_seed"])
                    rows.append([label(m), label(ref), KEY_NAMES[key], ", ".join(map(str, c["seeds"])),
                                 _interval(c[rate]), _in_words(m, ref, key, c[rate]), per_seed])
    if not rows:
        blocks.append(("p", "No interval: it needs a PT+FT or supervised run and another method, both with their "
                            "test hypotheses (eval/test.hyp.txt in their run directories)."))
    else:
        blocks += [
            ("p", (f"Test error rate of the method minus the reference's, in points (negative: fewer errors), with "
                   f"its {100 * sig['level']:g} % paired bootstrap interval (Bisani & Ney 2004): {sig['resamples']} "
                   f"resamples (seed {sig['seed']}) of the test utterances with replacement, in each both systems' "
                   "corpus-level rate on the same utterances (errors over reference words or characters). Seeds "
                   f"pooled: {sig['pooling']}. Per seed: that seed's two runs alone. An interval that excludes "
                   "zero is a difference this test set can detect; one that includes zero is not."
                   + (" results.json predates these intervals: they were computed from the runs' hypothesis files "
                      "when this report was written." if inp.significance_recomputed else ""))),
            ("table", ["method", "against", "measure", "seeds", "difference, seeds pooled (points) [interval]",
                       "in words", "per seed (points) [interval]"], rows, 7)]
    if skipped := sig.get("skipped"):
        blocks += [("p", "Runs left out of these intervals:"),
                   ("table", ["method", "seed", "hypotheses", "reason"],
                    [[label(x["method"]), str(x["seed"]), SCORE_NAMES.get(x["score"], x["score"]), x["reason"]]
                     for x in skipped], 4)]
    return blocks


VERDICT_RULE = ("The best method is the one with the lowest mean dev CER over seeds, or, when the runs were also "
                "decoded with the word LM, the lowest mean dev WER with the LM; among the methods in the running "
                "(not the topline, not BL-JUST's ablations). It is chosen on dev so that the test numbers below "
                "played no part in choosing it.")


def _best_on_dev(inp: Inputs) -> tuple[str | None, str]:
    """(the best method by ``VERDICT_RULE``, None when no contender has the dev score; the summary key it used)."""
    s = inp.summary
    contenders = [m for m in inp.methods if m != TOPLINE and m not in ABLATIONS]
    key = "dev_lm_wer" if any(s[m]["dev_lm_wer"]["n"] for m in contenders) else "dev_cer"
    scored = {m: s[m][key]["mean"] for m in contenders if s[m][key]["mean"] is not None}
    return (min(scored, key=scored.get) if scored else None), key


def _either_way(inp: Inputs, score: str, method: str, ref: str) -> dict | None:
    """The interval of ``method`` − ``ref``, also when results hold it the other way round (supervised against
    PT+FT: intervals are computed against the references only). A paired bootstrap of b − a on the same resamples
    is that of a − b negated, so turning it round is exact."""
    if (c := _comparison(inp, score, method, ref)) is not None:
        return c
    if (c := _comparison(inp, score, ref, method)) is None:
        return None

    def neg(x: dict) -> dict:
        return {**x, "diff": -x["diff"], "low": -x["high"], "high": -x["low"]}

    return {**c, "wer": neg(c["wer"]), "cer": neg(c["cer"]),
            "per_seed": [{**q, "wer": neg(q["wer"]), "cer": neg(q["cer"])} for q in c["per_seed"]]}


def _gain(inp: Inputs, best: str, ref: str, score: str) -> str:
    """``best``'s test WER and CER against ``ref``'s with their pooled intervals; the difference of the means
    when results hold no interval for the pair (their hypotheses were not read)."""
    c = _either_way(inp, score, best, ref)
    parts = []
    for rate in ("wer", "cer"):
        key = f"{score}_{rate}"
        difference = f"{label(best)}'s {KEY_NAMES[key]} − {label(ref)}'s"
        if c is None:
            mine, theirs = inp.summary[best][key]["mean"], inp.summary[ref][key]["mean"]
            parts.append(f"{difference}: {DASH if mine is None or theirs is None else _points(mine - theirs)} points")
        elif Interval(**c[rate]).direction:
            parts.append(f"{_in_words(best, ref, key, c[rate])}: {_interval(c[rate])} points")
        else:
            parts.append(f"{difference}: {_interval(c[rate])} points; {_in_words(best, ref, key, c[rate])}")
    if c is None:
        return "; ".join(parts) + (" (differences of the means over seeds; no interval: the runs' test hypotheses "
                                   "were not read, see \"Is the difference real?\").")
    level = inp.significance.get("level", LEVEL)
    return "; ".join(parts) + f" (seeds pooled; {100 * level:g} % paired bootstrap interval in brackets)."


def _compute_ratio(inp: Inputs, best: str, ref: str) -> str:
    """What ``best``'s training cost in seconds against ``ref``'s: an equal budget of batches or updates is not an
    equal bill when a method's passes cost more (or its budget rule lets it make more).

    Medians over seeds, not means: a run's wall-clock seconds include whatever its machine did meanwhile (a paused
    or shared machine, a session that trained it on another processor), and one such seed must not decide the
    ratio."""
    def median_seconds(method: str) -> float | None:
        vals = [v for v in (run_value(r, "train_seconds") for r in inp.runs[method]) if v]
        return statistics.median(vals) if vals else None

    mine, theirs = median_seconds(best), median_seconds(ref)
    if not mine or not theirs:
        return f"Compute: training seconds not recorded for {label(best)} or {label(ref)}."
    return (f"Compute: {label(best)} trained for {mine / theirs:.2f} × {label(ref)}'s training seconds "
            f"({mine / 60:.1f} against {theirs / 60:.1f} min, medians over seeds; the training steps alone).")


def verdict(inp: Inputs) -> list[tuple]:
    """The answer first: which method did best on dev, what it gained on test over the usual recipe (PT+FT; else
    supervised training), whether that gain is real, and what it cost."""
    blocks = [("h", 2, "Verdict")]
    best, key = _best_on_dev(inp)
    if best is None:
        return blocks + [("p", "No method in the running has a dev score: nothing to choose from.")]
    score = "test_lm" if key == "dev_lm_wer" else "test"
    best_text = (f"Best on dev: {label(best)} ({'dev WER with the LM' if key == 'dev_lm_wer' else 'dev CER'} "
                 f"{pct(inp.summary[best][key])} %). {VERDICT_RULE}")
    if best == "supervised":
        alone = "Supervised training on the labeled split alone did best: no semi-supervised method beat it on dev."
        if "ptft" not in inp.runs:
            return blocks + [("p", best_text), ("p", alone)]
        return blocks + [("p", best_text), ("p", f"{alone} Against PT+FT, the usual recipe: "
                                                 + _gain(inp, best, "ptft", score)),
                         ("p", _compute_ratio(inp, best, "ptft"))]
    ref = "supervised" if best == "ptft" else next((r for r in REFERENCES if r in inp.runs), None)
    if ref not in inp.runs:
        return blocks + [("p", best_text), ("p", "PT+FT, the usual recipe, did best itself; no supervised run to "
                                                  "compare it with." if best == "ptft" else
                                                  "Neither PT+FT nor supervised training ran: no gain to state.")]
    if best == "ptft":
        against = "PT+FT, the usual recipe, did best itself; against supervised training: "
    elif ref == "supervised":
        against = "PT+FT, the usual recipe, did not run; against supervised training instead: "
    else:
        against = "Against PT+FT, the usual recipe: "
    return blocks + [("p", best_text), ("p", against + _gain(inp, best, ref, score)),
                     ("p", _compute_ratio(inp, best, ref))]


REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"


def _not_measured(needs: list[str]) -> str:
    return f"not measured (needs {'; '.join(needs)})"


def _lower(s: dict, methods: list[str], key: str) -> tuple[str, str]:
    """The numbers and the verdict of "``methods[0]`` < ``methods[1]`` < …" in ``key``: each step holds when
    the later method's mean over seeds exceeds the earlier one's by more than the larger of their sample
    standard deviations, so it needs two seeds of each."""
    stats = {m: s[m][key] for m in methods if m in s}
    numbers = ["; ".join(f"{label(m)}: {pct(stats[m]) + ' %' if m in stats else DASH}" for m in methods)]
    needs = []
    for m in methods:
        if m not in s:
            needs.append(f"runs of {label(m)}" + (f": --methods {m}" if m in ABLATIONS else ""))
        elif stats[m]["n"] < 2:
            needs.append(f"{KEY_NAMES[key]} of two or more seeds of {label(m)}")
    if needs:
        return numbers[0], _not_measured(needs)
    holds = True
    for better, worse in zip(methods, methods[1:]):
        gap = stats[worse]["mean"] - stats[better]["mean"]
        spread = max(stats[better]["std"], stats[worse]["std"])
        numbers.append(f"{label(worse)} − {label(better)} = {100 * gap:+.1f} points, spread {100 * spread:.1f}")
        holds = holds and gap > spread
    return "; ".join(numbers), REPRODUCED if holds else NOT_REPRODUCED


def _seeds(pairs: list[tuple[dict, str]]) -> str:
    return ", ".join(f"seed {field(run, 'seed')}: {text}" for run, text in pairs)


def _claim_compute(inp: Inputs) -> tuple[str, str]:
    """Claim 2: every BL-JUST run reaches PT+FT's dev CER within half PT+FT's batch passes (``reach_ptft``)."""
    if needs := [f"runs of {label(m)}" for m in ("ptft", "bljust") if m not in inp.runs]:
        return DASH, _not_measured(needs)
    target, budget, hits = reach_ptft(inp)
    runs = inp.runs["bljust"]
    numbers = f"PT+FT: dev CER {100 * target:.1f} % in {budget:.0f} batch passes"
    if any(id(run) not in hits for run in runs):
        return numbers, _not_measured(["the dev CER at the validations of every BL-JUST run (metrics.jsonl)"])
    reached = [(run, None if hits[id(run)] is None else batch_passes_at(hits[id(run)])) for run in runs]
    numbers += "; BL-JUST reached it after: " + _seeds(
        [(run, "not reached" if p is None else f"{p} passes ({p / budget:.2f} of PT+FT's)") for run, p in reached])
    return numbers, REPRODUCED if all(p is not None and p <= budget / 2 for _, p in reached) else NOT_REPRODUCED


def _claim_g(inp: Inputs) -> tuple[str, str]:
    """Claim 3: every BL-JUST run reaches the g_heldout PT+FT ended its pre-training at (``g_threshold``) in
    fewer unlabeled batches (g steps) than PT+FT's pre-training took."""
    if needs := [f"runs of {label(m)}" for m in ("ptft", "bljust") if m not in inp.runs]:
        return DASH, _not_measured(needs)
    ends = [end for run in inp.runs["ptft"] if (end := g_end(inp, "ptft", run)) is not None]
    points = {id(run): heldout(inp.rows[id(run)]) for run in inp.runs["bljust"]}
    if not ends or not all(points.values()):
        return DASH, _not_measured(["g_heldout from PT+FT and every BL-JUST run: data.heldout_unlabeled_fraction > 0"])
    threshold, _ = g_threshold(inp, ["ptft"])
    pretraining = statistics.fmean(end["unlabeled_batches"] for end in ends)
    reached = [(run, hit["unlabeled_batches"] if (hit := g_reach(points[id(run)], threshold)) else None)
               for run in inp.runs["bljust"]]
    numbers = (f"PT+FT: g_heldout {threshold:.3f} after {pretraining:.0f} unlabeled batches of pre-training (means "
               f"over {len(ends)} run(s)); BL-JUST reached it after: "
               + _seeds([(run, "not reached" if b is None else str(b)) for run, b in reached]))
    return numbers, REPRODUCED if all(b is not None and b < pretraining for _, b in reached) else NOT_REPRODUCED


def claims(inp: Inputs) -> list[tuple]:
    """The papers' four claims (method.md §7 and §4), each reproduced, not reproduced or not measured, beside
    the numbers its verdict rests on."""
    s = inp.summary
    keys = ["test_cer"] + (["test_lm_wer"] if has_lm(s, inp.methods) else [])
    rows = [["1. BL-JUST < PT+FT < supervised", KEY_NAMES[k], *_lower(s, ["bljust", "ptft", "supervised"], k)]
            for k in keys]
    rows.append(["2. BL-JUST reaches PT+FT's error with at most half its compute", "dev CER, batch passes",
                 *_claim_compute(inp)])
    rows.append(["3. g falls faster under BL-JUST than in PT+FT's pre-training", "g_heldout, unlabeled batches",
                 *_claim_g(inp)])
    ablations = [("bljust-no-explore", "4. removing exploration (N1 = 0) hurts"),
                 ("bljust-no-finetune", "4. removing the final fine-tuning (N3 = 0) hurts")]
    if "bljust-const-gamma" in s:  # not one of the papers' claims: shown when it ran
        ablations.append(("bljust-const-gamma", "(ours) a constant γ instead of the ramp hurts"))
    # BL-JUST that already ran with N1 = 0 is its own N1 = 0 ablation: bljust-no-explore would retrain it
    own_n1 = "bljust-no-explore" not in s and inp.runs.get("bljust") and all(
        set(ABLATIONS["bljust-no-explore"]) <= set(r.get("settings", [])) for r in inp.runs["bljust"])
    own = ("not measured (BL-JUST itself ran without exploration, N1 = 0, so it is its own N1 = 0 ablation; the "
           "claim needs a BL-JUST with exploration steps)")
    rows += [[claim, KEY_NAMES[k], *((_lower(s, ["bljust", m], k)[0], own) if own_n1 and m == "bljust-no-explore"
                                     else _lower(s, ["bljust", m], k))] for m, claim in ablations for k in keys]
    return [("h", 2, "The papers' claims"),
            ("p", ("Rule for claims 1 and 4: one method beats another when its mean error over seeds is lower by more "
                   "than the larger of the two sample standard deviations (points of the rate), so each needs two or "
                   "more seeds; claim 1 needs both steps. Claims 2 and 3 must hold for every BL-JUST seed: claim 2 "
                   "reads the validation points of \"Compute to reach PT+FT's dev CER\" (half = at most 0.50 of "
                   "PT+FT's batch passes), claim 3 those of \"Convergence of the unsupervised loss g\" (fewer "
                   "unlabeled batches than PT+FT's pre-training took to its final g_heldout). "
                   + ("Test WER (LM): the beam search with the word LM. " if len(keys) > 1 else "")
                   + "Validation points are train.valid_every steps apart, so claims 2 and 3 are read at that "
                   "resolution.")),
            ("table", ["claim", "measure", "numbers", "verdict"], rows, 4)]


def reach(inp: Inputs) -> list[tuple]:
    """Training compute each run needed to first reach PT+FT's dev CER (the papers' "half the
    compute" claim), read off the validation points."""
    blocks = [("h", 2, "Compute to reach PT+FT's dev CER")]
    if "ptft" not in inp.runs:
        return blocks + [("p", "No PT+FT run in these results.")]
    target, budget, hits = reach_ptft(inp)
    rows = []
    for m in inp.methods:
        for run in inp.runs[m]:
            if id(run) not in hits:
                rows.append([label(m), field(run, "seed"), DASH, DASH, DASH, "not logged"])
            elif (hit := hits[id(run)]) is None:
                rows.append([label(m), field(run, "seed"), "not reached", DASH, DASH, field(run, "batch_passes")])
            else:
                passes = batch_passes_at(hit)
                rows.append([label(m), field(run, "seed"), str(passes), f"{passes / budget:.2f}",
                             num(hit.get("train_seconds"), ".1f", 1 / 60), field(run, "batch_passes")])
    return blocks + [
        ("p", (f"Target: PT+FT's selected dev CER, {100 * target:.1f} % (mean over its seeds). The first "
               "validation point at or below it, in batch passes (labeled + unlabeled batches so far) and training "
               f"minutes (validation excluded); the ratio is to PT+FT's whole budget of {budget:.0f} passes. "
               "Validation points are train.valid_every steps apart, so these are upper bounds at that resolution.")),
        ("table", ["method", "seed", "batch passes to reach", "÷ PT+FT budget", "train min to reach",
                   "batch passes in all"], rows, 2)]
