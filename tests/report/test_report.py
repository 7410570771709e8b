"""The comparison report's files, tables, curves and sections, rendered from a fabricated ``bljust compare``
output (no training)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from bljust.report import headline_table, read_metrics, summarize, write_report
from tests.report.conftest import (GROUPS, RATES, TOPLINE_RATES, comparison_dir, markdown_section, mean_rate,
                                   metric_lines, pct, run_record)


def test_files_and_self_contained_html(report):
    out, _, page = report
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    for banned in ("http://", "https://", "<script src", "<link"):
        assert banned not in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(sources) == len(pngs) == 7
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "train.lr=&lt;b&gt;0.001&lt;/b&gt;" in page  # text is escaped


def test_failed_runs_are_listed(report):
    _, markdown, _ = report
    assert "| PT+FT | 7 | 3 | runs/failed.log |" in markdown


def test_tables_carry_the_means(report):
    _, markdown, page = report
    bljust_cer = pct([RATES[("bljust", s)][3] for s in (0, 1)])
    ptft_wer = pct([RATES[("ptft", s)][2] for s in (0, 1)])
    assert f"<strong>{bljust_cer}</strong>" in page and f"**{bljust_cer}**" in markdown  # best test CER
    assert ptft_wer in page and ptft_wer in markdown
    # relative change of the means against PT+FT; supervised did not run
    wer = (0.47 - 0.55) / 0.55 * 100
    cer = (0.27 - 0.32) / 0.32 * 100
    row = next(line for line in markdown.splitlines() if line.startswith("| BL-JUST | 2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[6:] == [f"{wer:+.1f} %", f"{cer:+.1f} %", "–", "–"]
    # per voice family, mean over seeds
    assert pct([RATES[("bljust", s)][3] * GROUPS["flite"] for s in (0, 1)]) in markdown


def test_title_and_cost_table_state_the_budget_rule(report):
    _, markdown, page = report
    assert markdown.startswith("# bljust compare (equal batch passes): PT+FT, BL-JUST\n")
    assert "<title>bljust compare (equal batch passes): PT+FT, BL-JUST</title>" in page
    assert "| equal-budget rule | equal batch passes: the same passes |" in markdown
    cost = markdown[markdown.index("## Cost (equal batch passes)"):markdown.index("## Every run")]
    assert "| method | labeled batches | unlabeled batches | batch passes | train min | wall min | steps |" in cost
    assert "| PT+FT | 40 | 60 | 100 | 10.5 | 12.2 | 100 |" in cost  # means over the two seeds


def test_setup_states_where_the_runs_trained(report, tmp_path):
    _, markdown, _ = report
    assert "| trained on | not recorded (every run) |" in markdown  # records from before it was kept
    out = comparison_dir(tmp_path)
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        run["precision"] = "float32"
    (out / "results.json").write_text(json.dumps(results))
    assert "| trained on | float32 (every run) |" in write_report(out)["markdown"].read_text()
    for run in results["runs"]:  # PT+FT adopted from a bf16 machine
        run["processor"] = "Xeon (native bf16)" if run["method"] == "ptft" else "EPYC (no native bf16)"
        run["precision"] = "bfloat16" if run["method"] == "ptft" else "float32"
    (out / "results.json").write_text(json.dumps(results))
    mixed = write_report(out)["markdown"].read_text()
    assert ("| trained on | EPYC (no native bf16), float32: 2 runs; Xeon (native bf16), bfloat16: 2 runs (train "
            "minutes compare only between runs trained on the same processor in the same precision) |") in mixed


def test_unlabeled_batches_to_reach_ptft_g_heldout(report):
    _, markdown, _ = report
    section = markdown[markdown.index("## Convergence of the unsupervised loss g"):markdown.index("## Compute to")]
    assert "held-out unlabeled utterances" in section and "eval mode" in section
    # PT+FT's g_heldout when its pre-training ended: 4.0 and 4.4 (not its final 4.5 and 4.9), mean 4.2.
    # BL-JUST seed 0's 4.5, 4.1: reached at its second validation, 30 unlabeled batches and 2.5 minutes in.
    assert "at or below 4.200 (PT+FT's g_heldout at the end of its pre-training, mean over 2 run(s))" in section
    assert "| PT+FT | 0 | 60 | 1.5 | 60 |" in section and "| PT+FT | 1 | not reached | not reached | 60 |" in section
    assert "| BL-JUST | 0 | 30 | 2.5 | 60 |" in section
    assert "| BL-JUST | 1 | not reached | not reached | 60 |" in section


def test_without_g_heldout_the_report_says_so(tmp_path):
    out = comparison_dir(tmp_path, heldout=False)
    markdown = write_report(out)["markdown"].read_text()
    assert "No run logged g_heldout" in markdown and not (out / "plots" / "ssl_convergence.png").exists()


def test_summarize_mean_and_sample_std():
    runs = [run_record(m, s) for m in ("ptft", "bljust") for s in (0, 1)]
    s = summarize(runs)
    assert list(s) == ["ptft", "bljust"]
    cer = s["bljust"]["test_cer"]
    assert cer["n"] == 2 and cer["mean"] == pytest.approx(0.27)
    assert cer["std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2 / 1))  # ddof=1
    assert s["ptft"]["train_seconds"]["mean"] == pytest.approx(630.0)
    one = summarize(runs[:1])["ptft"]["dev_wer"]
    assert one == {"mean": pytest.approx(0.62), "std": None, "n": 1}


def test_headline_table():
    results = {"methods": ["ptft", "bljust"], "runs": [run_record("ptft", 0), run_record("bljust", 0), run_record("bljust", 1)]}
    table = headline_table(results).splitlines()
    assert table[0].startswith("| method | seeds | dev WER % |") and table[0].endswith("| train min | audio h |")
    assert table[2] == "| PT+FT | 1 | 62.0 ±– | 41.0 ±– | 50.0 ±– | 30.0 ±– | 10.0 | 1.50 |"
    assert f"**{pct([0.25, 0.29])}**" in table[3]


def test_without_bljust_or_groups_notes_replace_plots(tmp_path):
    out = comparison_dir(tmp_path, methods=("ptft",), groups=False)
    markdown = write_report(out)["markdown"].read_text()
    assert "No BL-JUST run" in markdown and "no voice-family groups" in markdown
    assert not (out / "plots" / "bljust_gamma.png").exists() and not (out / "plots" / "groups.png").exists()
    assert (out / "plots" / "bars.png").exists() and "![Test WER and CER per method](plots/bars.png)" in markdown


def test_malformed_metrics_lines_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(metric_lines("bljust", 0)) + "\n\n")
    rows = read_metrics(path)
    assert len(rows) == 9 and all(isinstance(r, dict) and "step" in r for r in rows)
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_compute_to_reach_ptft(tmp_path):
    md = write_report(comparison_dir(tmp_path))["markdown"].read_text()
    section = md[md.index("## Compute to reach"):md.index("## Test error rates")]
    assert "42.0 %" in section  # the target: PT+FT's mean selected dev CER
    assert "| BL-JUST | 0 | 50 | 0.50 | 2.0 | 100 |" in section
    assert "| PT+FT | 0 | not reached |" in section  # its validation points (0.6, 0.5) never got to 0.42


# ------------------------------------------------------------------ topline, the optional scored splits and the probes

RANDOM_INIT_CER = 0.9


def _topline_out_dir(tmp_path: Path, monkeypatch) -> Path:
    """supervised, BL-JUST and the topline, two seeds each; every run with test_unseen (test's rates × 1.5) and a
    linear probe (dev CER + 0.1); one probe failed."""
    for key, rates in TOPLINE_RATES.items():
        monkeypatch.setitem(RATES, key, rates)
    out = comparison_dir(tmp_path, methods=("supervised", "bljust", "topline"))
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        run["test_unseen"] = {k: v * 1.5 if k in ("wer", "cer") else v for k, v in run["test"].items()}
        run["probe"] = {"cer": run["dev"]["cer"] + 0.1, "wer": 0.99, "train_loss": 1.0, "model": "best.pt"}
    results["probe"] = {"settings": {"steps": 300}, "random-init": {"cer": RANDOM_INIT_CER, "wer": 1.0}}
    results["failed"].append({"method": "random-init", "seed": 0, "exit_code": 1, "log": "probes/random.log",
                              "job": "probe"})
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_share_of_the_label_gap(tmp_path, monkeypatch):
    markdown = write_report(_topline_out_dir(tmp_path, monkeypatch))["markdown"].read_text()
    section = markdown_section(markdown, "Share of the label gap recovered")
    assert "| method | dev CER share | test CER share | test_unseen CER share |" in section
    shares = []
    for index, scale in ((1, 1.0), (3, 1.0), (3, 1.5)):  # dev CER, test CER, test_unseen CER
        sup, top, bl = (mean_rate(m, index, scale) for m in ("supervised", "topline", "bljust"))
        shares.append(f"{100 * (sup - bl) / (sup - top):.0f} %")
        assert f"{100 * (sup - top):.1f}" in section  # the gap itself, in points
    assert f"| BL-JUST | {' | '.join(shares)} |" in section
    # the topline is a reference: the best test CER in bold is BL-JUST's, not the topline's lower one
    assert f"**{pct([RATES[('bljust', s)][3] for s in (0, 1)])}**" in markdown
    errors = markdown_section(markdown, "Word and character error rates")
    assert "test_unseen WER % | test_unseen CER %" in errors
    assert pct([RATES[("topline", s)][3] * 1.5 for s in (0, 1)]) in errors


def test_linear_probe_table_beside_random_init(tmp_path, monkeypatch):
    markdown = write_report(_topline_out_dir(tmp_path, monkeypatch))["markdown"].read_text()
    section = markdown_section(markdown, "Linear probe dev CER")
    assert "fresh linear CTC head trained for 300 steps" in section
    assert "| encoder | seeds | probe dev CER % | vs random init | own dev CER % |" in section
    probe = [RATES[("bljust", s)][1] + 0.1 for s in (0, 1)]
    diff = 100 * (sum(probe) / 2 - RANDOM_INIT_CER)
    assert (f"| BL-JUST | 2 | {pct(probe)} | {diff:+.1f} | {pct([RATES[('bljust', s)][1] for s in (0, 1)])} |"
            in section)
    assert "| random init | 1 | 90.0 | – | – |" in section
    assert "| topline (all transcribed) | 2 |" in section
    assert "probe dev CER %" in markdown_section(markdown, "Every run")
    # a failed probe is listed apart from failed runs
    assert "Linear probes that failed" in markdown and "| random init | 0 | 1 | probes/random.log |" in markdown


def test_without_topline_or_probes_the_report_says_so(report):
    _, markdown, _ = report
    assert "Needs a supervised and a topline run" in markdown and "No linear probe in these results." in markdown
    for split in ("test_unseen", "dev_other", "test_other"):  # no run was scored on them: no column, no note
        assert split not in markdown


OTHER = {"dev_other": ("dev", 1.2), "test_other": ("test", 1.4)}
"""LibriSpeech's harder splits: each run's rates on them are dev's or test's times this."""


def _with_other_splits(out: Path, lm: bool = False) -> Path:
    """Every run of ``out``'s results.json also scored on dev_other and test_other (``OTHER``); with ``lm``, every
    split also decoded with the LM (its greedy rates × 0.9)."""
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        for split, (source, scale) in OTHER.items():
            run[split] = {k: v * scale if k in ("wer", "cer") else v for k, v in run[source].items()}
        if lm:
            for split in ("dev", "test", *OTHER):
                run[split]["lm"] = {"wer": 0.9 * run[split]["wer"], "cer": 0.9 * run[split]["cer"], "lm_weight": 1.0,
                                    "word_score": 0.0}
    (out / "results.json").write_text(json.dumps(results))
    return out


def test_dev_other_and_test_other_are_reported_beside_test_unseen(tmp_path, monkeypatch):
    paths = write_report(_with_other_splits(_topline_out_dir(tmp_path, monkeypatch)))
    markdown, page = paths["markdown"].read_text(), paths["html"].read_text()
    optional = ((2, 1.5), (3, 1.5), (0, 1.2), (1, 1.2), (2, 1.4), (3, 1.4))  # (RATES index, scale) per column
    errors = markdown_section(markdown, "Word and character error rates")
    assert ("| test CER % | test_unseen WER % | test_unseen CER % | dev_other WER % | dev_other CER % | "
            "test_other WER % | test_other CER % |") in errors
    row = next(line for line in errors.splitlines() if line.startswith("| BL-JUST | 2 |"))
    assert [c.strip() for c in row.strip("|").split("|")][6:12] == [
        pct([RATES[("bljust", s)][index] * scale for s in (0, 1)]) for index, scale in optional]
    assert "dev_other: the corpus's harder dev set" in errors and "chosen on dev alone" in errors
    # the label gap is shared out on every split both references were scored on
    gap = markdown_section(markdown, "Share of the label gap recovered")
    assert ("| method | dev CER share | test CER share | test_unseen CER share | dev_other CER share | "
            "test_other CER share |") in gap
    shares = []
    for index, scale in ((1, 1.0), (3, 1.0), (3, 1.5), (1, 1.2), (3, 1.4)):
        sup, top, bl = (mean_rate(m, index, scale) for m in ("supervised", "topline", "bljust"))
        shares.append(f"{100 * (sup - bl) / (sup - top):.0f} %")
    assert f"| BL-JUST | {' | '.join(shares)} |" in gap
    every = markdown_section(markdown, "Every run")
    assert "| dev_other WER % | dev_other CER % | test_other WER % | test_other CER % | probe dev CER % |" in every
    assert f"| {100 * (RATES[('bljust', 0)][3] * 1.4):.1f} | {100 * (RATES[('bljust', 0)][1] + 0.1):.1f} |" in every
    assert "<th>test_other CER %</th>" in page


def test_dev_other_and_test_other_decoded_with_the_lm(tmp_path):
    out = _with_other_splits(comparison_dir(tmp_path), lm=True)
    summary = summarize(json.loads((out / "results.json").read_text())["runs"])["bljust"]
    # test_other_cer is test_other's, not test's "other_cer"
    assert summary["test_other_cer"]["mean"] == pytest.approx(1.4 * 0.27)
    assert summary["test_cer"]["mean"] == pytest.approx(0.27)
    assert summary["dev_other_lm_wer"]["mean"] == pytest.approx(0.9 * 1.2 * 0.56)
    markdown = write_report(out)["markdown"].read_text()
    errors = markdown_section(markdown, "Word and character error rates")
    assert "| test CER % (LM) | dev_other WER % (LM) | test_other WER % (LM) |" in errors
    assert pct([0.9 * (RATES[("bljust", s)][2] * 1.4) for s in (0, 1)]) in errors
    assert "test_unseen" not in markdown


def test_ssl_health_and_hubert_targets(tmp_path):
    out = comparison_dir(tmp_path)
    run = out / "runs" / "bljust-seed0"
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 40, "kind": "train", "time": 1.7e9, "g": 2.0, "ssl_acc": 0.31,
                            "ssl_acc_majority": 0.08, "ssl_masked_frac": 0.52, "ssl_code_usage": 0.9}) + "\n")
    (run / "summary.json").write_text(json.dumps({"ssl_targets": {
        "path": "/d/ssl_targets/L-1-k100-abc.pt", "clusters": 100,
        "spec": {"source": "run", "run": "runs/sup", "layer": -1},
        "health": {"code_usage": 0.97, "code_perplexity": 71.2, "pnmi": 0.412, "cluster_purity": 0.377}}}))
    section = markdown_section(write_report(out)["markdown"].read_text(), "Health of the self-supervised loss")
    assert "| BL-JUST | 0 | 40 | 31.0 | 8.0 | – | 52.0 | 90.0 |" in section.replace("—", "–")
    assert "| L-1-k100-abc.pt | layer -1 of runs/sup | 100 | 97.0 | 71.2 | 0.412 | 0.377 |" in section
    # PT+FT's rows logged no SSL health: it has none
    assert "| PT+FT |" not in section


def test_pseudo_label_rounds_and_their_errors(tmp_path):
    out = comparison_dir(tmp_path, methods=("ptft", "pl"))
    assert "Pseudo-labels" not in write_report(out)["markdown"].read_text()  # no PL summary: no section
    (out / "runs" / "pl-seed1" / "summary.json").write_text(json.dumps({"pseudo_labels": {
        "round1": {"decoded": 100, "kept": 80, "kept_hours": 0.25, "label_cer_all": 0.3, "label_cer_kept": 0.234,
                   "label_wer_kept": 0.351},
        "round2": {"decoded": 100, "kept": 80, "kept_hours": 0.26}}}))
    section = markdown_section(write_report(out)["markdown"].read_text(), "Pseudo-labels")
    assert "| PL | 1 | 1 | 80 / 100 | 0.25 | 30.0 | 23.4 | 35.1 |" in section
    assert "| PL | 1 | 2 | 80 / 100 | 0.26 | – | – | – |" in section.replace("—", "–")


def test_learning_curves_name_the_supervised_loss_the_runs_trained(tmp_path):
    out = comparison_dir(tmp_path)
    assert "f: CTC loss per token" in markdown_section(write_report(out)["markdown"].read_text(), "Learning curves")
    results = json.loads((out / "results.json").read_text())
    results["decoding"] = "greedy transducer (at most 3 units per frame)"
    section = markdown_section(write_report(out, results)["markdown"].read_text(), "Learning curves")
    assert "f: RNN-T loss per token" in section and "CTC" not in section
