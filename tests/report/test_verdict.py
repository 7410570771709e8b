"""The report's verdict, the papers' claims and the paired bootstrap intervals, from a fabricated
``bljust compare`` output (no training)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from bljust.compare.significance import significance
from bljust.evaluate import error_rates, write_hypotheses
from bljust.report import write_report
from tests.report.conftest import RATES, TOPLINE_RATES, comparison_dir, markdown_section, mean_rate, metric_lines, run_record


# ------------------------------------------------------------------ the papers' claims

CLAIM_RATES = {("supervised", 0): (0.70, 0.50, 0.60, 0.40), ("supervised", 1): (0.72, 0.52, 0.62, 0.42),
               ("bljust-no-explore", 0): (0.60, 0.40, 0.55, 0.35), ("bljust-no-explore", 1): (0.62, 0.42, 0.57, 0.37),
               ("bljust-no-finetune", 0): (0.56, 0.37, 0.45, 0.26),
               ("bljust-no-finetune", 1): (0.58, 0.39, 0.51, 0.30),
               ("bljust-const-gamma", 0): (0.50, 0.30, 0.40, 0.20),
               ("bljust-const-gamma", 1): (0.52, 0.32, 0.42, 0.24)}
ABLATIONS = ("bljust-no-explore", "bljust-no-finetune", "bljust-const-gamma")


def _claims_out_dir(tmp_path: Path, monkeypatch) -> Path:
    """supervised, PT+FT, BL-JUST and its three ablations, two seeds each, also decoded with an LM (the greedy
    rates × 0.9); BL-JUST seed 1's g_heldout (9.0 in ``metric_lines``) gets below PT+FT's 4.2 here too."""
    for key, rates in CLAIM_RATES.items():
        monkeypatch.setitem(RATES, key, rates)
    out = comparison_dir(tmp_path, methods=("supervised", "ptft", "bljust", *ABLATIONS))
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        for split in ("dev", "test"):
            run[split]["lm"] = {"wer": 0.9 * run[split]["wer"], "cer": 0.9 * run[split]["cer"], "lm_weight": 1.0,
                                "word_score": 0.0}
    (out / "results.json").write_text(json.dumps(results))
    metrics = out / "runs" / "bljust-seed1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"g_heldout": 9.0', '"g_heldout": 4.1'))
    return out


def _claims(markdown: str) -> dict[tuple[str, str], tuple[str, str]]:
    """The claims table: (claim number or ablation, measure) → (numbers, verdict)."""
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in markdown_section(markdown, "The papers' claims").splitlines()[1:] if line.startswith("| ")]
    assert rows[0] == ["claim", "measure", "numbers", "verdict"]
    short = {"removing exploration": "4 N1", "removing the final": "4 N3", "(ours) a constant": "4 γ"}
    return {(next((v for k, v in short.items() if k in r[0]), r[0][:1]), r[1]): (r[2], r[3]) for r in rows[1:]}


def test_claims_reproduced(tmp_path, monkeypatch):
    markdown = write_report(_claims_out_dir(tmp_path, monkeypatch))["markdown"].read_text()
    assert markdown.index("## Word and character error rates") < markdown.index("## The papers' claims")
    claims = _claims(markdown)
    # test CER (mean ± std): supervised 41.0 ± 1.4, PT+FT 32.0 ± 2.8, BL-JUST 27.0 ± 2.8: both gaps beat the spread
    numbers, verdict = claims[("1", "test CER")]
    assert verdict == "reproduced"
    assert numbers == ("BL-JUST: 27.0 ± 2.8 %; PT+FT: 32.0 ± 2.8 %; supervised: 41.0 ± 1.4 %; PT+FT − BL-JUST = "
                       "+5.0 points, spread 2.8; supervised − PT+FT = +9.0 points, spread 2.8")
    # BL-JUST's first validation (50 passes) is at PT+FT's mean dev CER 42.0 %: half its 100 passes
    assert claims[("2", "dev CER, batch passes")] == (
        "PT+FT: dev CER 42.0 % in 100 batch passes; BL-JUST reached it after: seed 0: 50 passes (0.50 of PT+FT's), "
        "seed 1: 50 passes (0.50 of PT+FT's)", "reproduced")
    # PT+FT's pre-training ended at g_heldout 4.2 after 60 unlabeled batches; both BL-JUST seeds got there by 30
    assert claims[("3", "g_heldout, unlabeled batches")] == (
        "PT+FT: g_heldout 4.200 after 60 unlabeled batches of pre-training (means over 2 run(s)); BL-JUST reached "
        "it after: seed 0: 30, seed 1: 30", "reproduced")
    numbers, verdict = claims[("4 N1", "test CER")]
    assert verdict == "reproduced" and "BL-JUST, N1 = 0 − BL-JUST = +9.0 points, spread 2.8" in numbers
    assert claims[("4 N1", "test WER (LM)")][1] == "reproduced"  # 50.4 against 42.3, spread 3.8


def test_claims_not_reproduced(tmp_path, monkeypatch, report):
    markdown = write_report(_claims_out_dir(tmp_path, monkeypatch))["markdown"].read_text()
    claims = _claims(markdown)
    # with the LM, supervised − PT+FT (54.9 − 49.5) is within PT+FT's spread over seeds (6.4)
    numbers, verdict = claims[("1", "test WER (LM)")]
    assert verdict == "not reproduced" and "supervised − PT+FT = +5.4 points, spread 6.4" in numbers
    numbers, verdict = claims[("4 N3", "test CER")]
    assert verdict == "not reproduced" and "BL-JUST, N3 = 0 − BL-JUST = +1.0 points, spread 2.8" in numbers
    assert claims[("4 γ", "test CER")][1] == "not reproduced"  # constant γ did better
    # an ablation is in the error table, but not the bold best even with the lowest test CER (constant γ's 22.0)
    errors = markdown_section(markdown, "Word and character error rates")
    assert "| BL-JUST, constant γ | 2 |" in errors and "**22.0" not in errors and "**27.0 ± 2.8**" in errors
    # the default fixture: BL-JUST seed 1 never reaches PT+FT's g_heldout
    numbers, verdict = _claims(report[1])[("3", "g_heldout, unlabeled batches")]
    assert verdict == "not reproduced" and numbers.endswith("seed 0: 30, seed 1: not reached")


def test_claims_not_measured(tmp_path, monkeypatch, report):
    claims = _claims(report[1])  # PT+FT and BL-JUST only
    assert claims[("1", "test CER")] == ("BL-JUST: 27.0 ± 2.8 %; PT+FT: 32.0 ± 2.8 %; supervised: –",
                                         "not measured (needs runs of supervised)")
    assert claims[("4 N1", "test CER")][1] == ("not measured (needs runs of BL-JUST, N1 = 0: --methods "
                                                "bljust-no-explore)")
    assert claims[("4 N3", "test CER")][1].startswith("not measured (needs runs of BL-JUST, N3 = 0")
    assert ("4 γ", "test CER") not in claims  # not one of the papers' claims: only when it ran
    # BL-JUST without exploration is its own N1 = 0 ablation: the report says so instead of asking for the run
    out = comparison_dir(tmp_path / "n1", methods=("ptft", "bljust"))
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        if run["method"] == "bljust":
            run["settings"] += ["bljust.explore_steps=0", "bljust.first_explore_steps=0"]
    (out / "results.json").write_text(json.dumps(results))
    assert _claims(write_report(out)["markdown"].read_text())[("4 N1", "test CER")][1] == (
        "not measured (BL-JUST itself ran without exploration, N1 = 0, so it is its own N1 = 0 ablation; the claim "
        "needs a BL-JUST with exploration steps)")
    for key, rates in CLAIM_RATES.items():
        monkeypatch.setitem(RATES, key, rates)
    out = comparison_dir(tmp_path / "a", methods=("supervised", "bljust"), heldout=False)
    claims = _claims(write_report(out)["markdown"].read_text())
    assert claims[("1", "test CER")][1] == "not measured (needs runs of PT+FT)"
    assert claims[("2", "dev CER, batch passes")] == ("–", "not measured (needs runs of PT+FT)")
    # one seed of supervised: no spread to judge by
    results = json.loads((out / "results.json").read_text())
    results["runs"] = [r for r in results["runs"] if (r["method"], r["seed"]) != ("supervised", 1)]
    results["methods"].insert(1, "ptft")
    results["runs"] += [run_record("ptft", s) for s in (0, 1)]
    for s in (0, 1):  # PT+FT without g_heldout, like BL-JUST here
        d = out / "runs" / f"ptft-seed{s}"
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text("\n".join(metric_lines("ptft", s, heldout=False)) + "\n")
    (out / "results.json").write_text(json.dumps(results))
    claims = _claims(write_report(out)["markdown"].read_text())
    assert claims[("1", "test CER")][1] == "not measured (needs test CER of two or more seeds of supervised)"
    assert claims[("3", "g_heldout, unlabeled batches")] == (
        "–", "not measured (needs g_heldout from PT+FT and every BL-JUST run: data.heldout_unlabeled_fraction > 0)")


# ------------------------------------------------------------------ the verdict and the paired bootstrap intervals

WORD_ERRORS = {"supervised": 0.3, "ptft": 0.3, "bljust": 0.2}
"""Share of the test words each method gets wrong in its hypothesis files: BL-JUST clearly fewer than PT+FT,
PT+FT as many as supervised."""
WORDS = "ALPHA BRAVO CHARLIE DELTA ECHO FOXTROT GOLF HOTEL INDIA JULIET".split()


def _decoded(rng: random.Random, error_rate: float) -> dict:
    """300 test utterances of 8 words, each hypothesis word wrong ("ZULU") with probability ``error_rate``."""
    refs = {f"utt{u:03d}": " ".join(WORDS[(u + i) % len(WORDS)] for i in range(8)) for u in range(300)}
    hyps = {u: " ".join("ZULU" if rng.random() < error_rate else w for w in ref.split()) for u, ref in refs.items()}
    return {"refs": refs, "hyps": hyps}


def _with_hypotheses(out: Path, lm: bool = False) -> Path:
    """Every run of ``out``'s results.json with test hypothesis files (``WORD_ERRORS``; with ``lm`` also an LM
    decode, 0.8 × as many errors), its recorded test rates those of its files, and results.json with the
    intervals, as compare writes them."""
    results = json.loads((out / "results.json").read_text())
    rng = random.Random(0)
    for run in results["runs"]:
        for suffix, scale in (("", 1.0), *((".lm", 0.8),) * lm):
            decoded = _decoded(rng, WORD_ERRORS[run["method"]] * scale)
            write_hypotheses(out / run["run_dir"] / "eval" / f"test{suffix}.hyp.txt", decoded)
            rates = error_rates(list(decoded["refs"].values()), list(decoded["hyps"].values()))
            node = run["test"].setdefault("lm", {"lm_weight": 1.0, "word_score": 0.0}) if suffix else run["test"]
            node.update(wer=rates["wer"], cer=rates["cer"])
    results["significance"] = significance(out, results["runs"])
    (out / "results.json").write_text(json.dumps(results))
    return out


def _points(v: float) -> str:
    """A difference of rates as the report prints it: signed points with a true minus sign."""
    return f"{100 * v:+.1f}".replace("-", "−")


def _iv(interval: dict) -> str:
    return f"{_points(interval['diff'])} [{_points(interval['low'])}, {_points(interval['high'])}]"


def _three_methods(tmp_path: Path, monkeypatch) -> Path:
    """supervised, PT+FT and BL-JUST, seeds 0 and 1, BL-JUST's training 1.5 × as long."""
    monkeypatch.setitem(RATES, ("supervised", 0), TOPLINE_RATES[("supervised", 0)])
    monkeypatch.setitem(RATES, ("supervised", 1), TOPLINE_RATES[("supervised", 1)])
    out = comparison_dir(tmp_path, methods=("supervised", "ptft", "bljust"))
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        run["train_seconds"] *= 1.5 if run["method"] == "bljust" else 1
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_verdict_and_intervals_in_the_report_and_results_json(tmp_path, monkeypatch):
    out = _with_hypotheses(_three_methods(tmp_path, monkeypatch))
    sig = json.loads((out / "results.json").read_text())["significance"]
    gain = sig["scores"]["test"]["bljust"]["ptft"]
    assert gain["seeds"] == [0, 1] and gain["utterances"] == 300 and [p["seed"] for p in gain["per_seed"]] == [0, 1]
    assert gain["wer"]["high"] < 0 and gain["cer"]["high"] < 0  # BL-JUST's 20 % of words wrong against 30 %
    same = sig["scores"]["test"]["ptft"]["supervised"]
    assert same["wer"]["low"] < 0 < same["wer"]["high"]  # both 30 %
    assert "supervised" not in sig["scores"]["test"]  # nor its mirror, supervised against PT+FT
    paths = write_report(out)
    markdown, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert markdown.index("## Verdict") < markdown.index("## Setup") < markdown.index("## Is the difference real?")
    assert "<h2>Verdict</h2>" in page
    verdict = markdown_section(markdown, "Verdict")
    assert ("Best on dev: BL-JUST (dev CER 37.0 ± 1.4 %). The best method is the one with the lowest mean dev "
            "CER") in verdict
    assert (f"Against PT+FT, the usual recipe: BL-JUST's test WER is lower than PT+FT's: {_iv(gain['wer'])} points; "
            f"BL-JUST's test CER is lower than PT+FT's: {_iv(gain['cer'])} points (seeds pooled; 95 % paired "
            "bootstrap interval in brackets).") in verdict
    assert "Compute: BL-JUST trained for 1.50 × PT+FT's training seconds" in verdict
    section = markdown_section(markdown, "Is the difference real? Paired bootstrap intervals")
    assert "2000 resamples (seed 0)" in section and "seed i of a method is paired with seed i" in section
    seeds = "; ".join(f"seed {p['seed']}: {_iv(p['wer'])}" for p in gain["per_seed"])
    assert (f"| BL-JUST | PT+FT | test WER | 0, 1 | {_iv(gain['wer'])} | BL-JUST's test WER is lower than PT+FT's | "
            f"{seeds} |") in section
    assert (f"| PT+FT | supervised | test WER | 0, 1 | {_iv(same['wer'])} | the interval includes zero: no detectable "
            "difference |") in section
    assert "predates" not in section and "left out" not in section


def test_results_without_intervals_get_them_from_the_hypothesis_files(tmp_path, monkeypatch):
    out = _with_hypotheses(_three_methods(tmp_path, monkeypatch))
    results = json.loads((out / "results.json").read_text())
    gain = results.pop("significance")["scores"]["test"]["bljust"]["ptft"]
    results["schema"] = "bljust.compare/5"
    (out / "results.json").write_text(json.dumps(results))
    markdown = write_report(out)["markdown"].read_text()
    assert f"BL-JUST's test WER is lower than PT+FT's: {_iv(gain['wer'])} points" in markdown_section(markdown, "Verdict")
    assert "results.json predates these intervals" in markdown_section(markdown, "Is the difference real?")


def test_with_the_lm_the_verdict_ranks_by_dev_wer_with_it(tmp_path, monkeypatch):
    """PT+FT has the lowest dev WER with the LM (BL-JUST the lowest dev CER): it is the best itself, and its gain
    is stated against supervised training, on the LM decode's test scores."""
    out = _three_methods(tmp_path, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        run["dev"]["lm"] = {"wer": 0.3 if run["method"] == "ptft" else 0.4, "cer": 0.2, "lm_weight": 1.0,
                            "word_score": 0.0}
    (out / "results.json").write_text(json.dumps(results))
    sig = json.loads((_with_hypotheses(out, lm=True) / "results.json").read_text())["significance"]
    same = sig["scores"]["test_lm"]["ptft"]["supervised"]
    markdown = write_report(out)["markdown"].read_text()
    verdict = markdown_section(markdown, "Verdict")
    assert "Best on dev: PT+FT (dev WER with the LM 30.0 ± 0.0 %)" in verdict
    assert ("PT+FT, the usual recipe, did best itself; against supervised training: PT+FT's test WER (LM) − "
            f"supervised's: {_iv(same['wer'])} points; the interval includes zero: no detectable difference") in verdict
    assert "| BL-JUST | PT+FT | test CER (LM) | 0, 1 |" in markdown_section(markdown, "Is the difference real?")
    assert "![Test WER, WER (LM) and CER per method](plots/bars.png)" in markdown  # the WER the verdict ranks by


def test_verdict_without_ptft_or_hypotheses(tmp_path, monkeypatch):
    markdown = write_report(comparison_dir(tmp_path / "a", methods=("ptft",)))["markdown"].read_text()
    assert "PT+FT, the usual recipe, did best itself; no supervised run to compare it with." in markdown
    for key, rates in TOPLINE_RATES.items():
        monkeypatch.setitem(RATES, key, rates)
    verdict = markdown_section(write_report(comparison_dir(tmp_path / "b", methods=("supervised", "bljust")))["markdown"].read_text(),
                       "Verdict")
    wer = mean_rate("bljust", 2) - mean_rate("supervised", 2)
    assert (f"PT+FT, the usual recipe, did not run; against supervised training instead: BL-JUST's test WER − "
            f"supervised's: {_points(wer)} points") in verdict
    assert "no interval: the runs' test hypotheses were not read" in verdict
    monkeypatch.setitem(RATES, ("supervised", 0), (0.3, 0.2, 0.3, 0.2))
    verdict = markdown_section(write_report(comparison_dir(tmp_path / "c", methods=("supervised", "bljust")))["markdown"].read_text(),
                       "Verdict")
    assert "Best on dev: supervised" in verdict and "no semi-supervised method beat it on dev" in verdict


def test_when_supervised_does_best_the_verdict_states_its_gain_over_ptft(tmp_path, monkeypatch):
    """Intervals are computed against PT+FT and supervised only; supervised against PT+FT is PT+FT's interval
    turned round (the same resamples), with the compute ratio as for any best method."""
    out = _three_methods(tmp_path, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        if run["method"] == "supervised":
            run["dev"]["cer"] = 0.30 + 0.02 * run["seed"]
    (out / "results.json").write_text(json.dumps(results))
    out = _with_hypotheses(out)
    mirror = json.loads((out / "results.json").read_text())["significance"]["scores"]["test"]["ptft"]["supervised"]
    verdict = markdown_section(write_report(out)["markdown"].read_text(), "Verdict")
    assert "Best on dev: supervised (dev CER 31.0 ± 1.4 %)" in verdict
    turned = {"diff": -mirror["wer"]["diff"], "low": -mirror["wer"]["high"], "high": -mirror["wer"]["low"]}
    assert ("no semi-supervised method beat it on dev. Against PT+FT, the usual recipe: supervised's test WER − "
            f"PT+FT's: {_iv(turned)} points; the interval includes zero") in verdict
    assert "Compute: supervised trained for 1.00 × PT+FT's training seconds" in verdict


def test_the_compute_ratio_is_a_median_so_one_paused_seed_does_not_decide_it(tmp_path, monkeypatch):
    """Three seeds; PT+FT's seed 2 ran on a paused machine for 10 × the wall-clock seconds. The ratio reads the
    median seed of each method, as a mean would put BL-JUST at a fraction of PT+FT's cost."""
    out = _three_methods(tmp_path, monkeypatch)
    results = json.loads((out / "results.json").read_text())
    extra = [dict(r, seed=2, run_dir=r["run_dir"].replace("seed1", "seed2")) for r in results["runs"] if r["seed"] == 1]
    for run in extra:
        run["train_seconds"] = (600.0 + 60) * (10 if run["method"] == "ptft" else 1.5 if run["method"] == "bljust"
                                               else 1)
    results["runs"] += extra
    (out / "results.json").write_text(json.dumps(results))
    verdict = markdown_section(write_report(out)["markdown"].read_text(), "Verdict")
    # medians: BL-JUST 1.5 × 660 s, PT+FT 660 s (its 6600 s seed is the outlier)
    assert "Compute: BL-JUST trained for 1.50 × PT+FT's training seconds (16.5 against 11.0 min, medians" in verdict
