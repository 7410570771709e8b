"""The comparison report: ``results.json`` from ``bljust compare`` → ``report.md``, ``report.html``, ``plots/``.

Both documents are rendered from one list of blocks (headings, paragraphs, tables, figures), so
they cannot disagree. The HTML is one self-contained file (figures as base64 PNG, inline CSS, no
external reference), for mailing or archiving next to the run directories.

Error rates are corpus-level fractions in ``results.json``, printed as percentages with one
decimal; "±" is the sample standard deviation over seeds (ddof=1), "±–" when only one seed ran.
Differences to PT+FT and supervised training are printed in points with their paired bootstrap interval
(``bljust.compare.significance``), which results.json holds from schema /6 on and the report computes from
the runs' hypothesis files for older results.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the report only writes files: no display needed, no window opened
import matplotlib.pyplot as plt

from bljust.compare.budget import ABLATIONS, RULE_TITLES, TOPLINE
from bljust.compare.jobs import EVAL_SPLITS, OPTIONAL_EVAL_SPLITS, RANDOM_INIT
from bljust.compare.significance import LEVEL, REFERENCES, Interval, significance
from bljust.methods import METHOD_LABELS

SCORED_SPLITS = (*EVAL_SPLITS, *OPTIONAL_EVAL_SPLITS)
SUMMARY_KEYS = (*(f"{split}_{rate}" for split in SCORED_SPLITS for rate in ("wer", "cer", "lm_wer", "lm_cer")),
                "probe_cer", "train_seconds", "audio_hours", "batch_passes")
NODES = tuple(sorted((*SCORED_SPLITS, "probe"), key=len, reverse=True))
"""Run-record entries that hold rates: key ``test_other_cer`` is ``run["test_other"]["cer"]`` (longest first, so
that it is not read as test's), ``probe_cer`` the linear probe's dev CER."""
SPLIT_NOTES = {"test_unseen": "a test set of voices in no other split",
               "dev_other": ("the corpus's harder dev set (LibriSpeech's dev-other), reported only: the checkpoint and "
                             "the LM's weight and word score are chosen on dev alone"),
               "test_other": "the corpus's harder test set (LibriSpeech's test-other)"}
"""What the error table says of each of OPTIONAL_EVAL_SPLITS that it shows."""
EXTRA_LABELS = {TOPLINE: "topline (all transcribed)", RANDOM_INIT: "random init",
                "bljust-no-explore": "BL-JUST, N1 = 0", "bljust-no-finetune": "BL-JUST, N3 = 0",
                "bljust-const-gamma": "BL-JUST, constant γ"}
GAP_KEYS = (*((f"{split}_cer", f"{split} CER") for split in SCORED_SPLITS),
            *((f"{split}_lm_wer", f"{split} WER (LM)") for split in SCORED_SPLITS))
"""The error rates whose label gap (supervised − topline) the report shares out, when both have them."""
COST_COLUMNS = (  # (header, results key, format, scale)
    ("labeled batches", "labeled_batches", ",.0f", 1), ("unlabeled batches", "unlabeled_batches", ",.0f", 1),
    ("batch passes", "batch_passes", ",.0f", 1), ("train min", "train_seconds", ".1f", 1 / 60),
    ("wall min", "wall_seconds", ".1f", 1 / 60), ("steps", "steps", ",.0f", 1),
    ("audio h", "audio_hours", ".2f", 1), ("labeled h", "labeled_hours", ".2f", 1),
    ("unlabeled h", "unlabeled_hours", ".2f", 1), ("labeled passes", "labeled_passes", ".1f", 1),
    ("unlabeled passes", "unlabeled_passes", ".1f", 1))
COST_NOTES = {
    "passes": ("The budget counts batch passes: one forward-backward pass over one batch, labeled or unlabeled, "
               "so batch passes = labeled + unlabeled batches."),
    "labeled": ("The budget counts supervised updates on labeled batches (PL's pseudo-labeled batches included); "
                "the unlabeled batches are the work each method's design adds on top, priced here in batch passes "
                "and minutes."),
}
KEY_NAMES = {"test_wer": "test WER", "test_cer": "test CER", "test_lm_wer": "test WER (LM)",
             "test_lm_cer": "test CER (LM)"}
SCORE_NAMES = {"test": "test", "test_lm": "test, with the LM"}
"""How the report names the hypotheses of results.json's significance scores."""
PLOTS = ("bars", "curves_f", "curves_g", "dev_cer", "bljust_gamma", "ssl_convergence", "groups")
DASH = "–"
CSS = ("body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em}"
       "th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}"
       "img{max-width:100%}figcaption{color:#555;font-size:.9em}")


class Bold(str):
    """A table cell to emphasise (the best result)."""


# ---------------------------------------------------------------- numbers


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _value(run: dict, key: str) -> float | None:
    """A run's number by summary key: ``test_cer`` is ``run["test"]["cer"]``, ``test_lm_wer`` is
    ``run["test"]["lm"]["wer"]`` (the LM beam search's), ``probe_cer`` is ``run["probe"]["cer"]`` (see
    ``NODES``), other keys are top-level."""
    split = next((n for n in NODES if key.startswith(n + "_")), None)
    if split is not None:
        metric = key[len(split) + 1:]
        node = run.get(split)
        if metric.startswith("lm_"):
            node, metric = (node or {}).get("lm") if isinstance(node, dict) else None, metric[3:]
        v = node.get(metric) if isinstance(node, dict) else None
    else:
        v = run.get(key)
    return float(v) if _finite(v) else None


def _has_lm(s: dict, methods: list[str]) -> bool:
    return any(s[m]["test_lm_wer"]["n"] for m in methods)


def _optional_splits(s: dict, methods: list[str]) -> list[str]:
    """The optional scored splits some run was scored on: only they get columns."""
    return [split for split in OPTIONAL_EVAL_SPLITS if any(s[m][f"{split}_cer"]["n"] for m in methods)]


def _stats(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None, "n": len(vals)}


def _by_method(runs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in runs:
        if run.get("method"):
            out.setdefault(run["method"], []).append(run)
    return out


def summarize(runs: list[dict], keys: tuple[str, ...] = SUMMARY_KEYS) -> dict:
    """Per method (in order of first appearance), ``{key: {"mean", "std", "n"}}`` over its runs.

    ``std`` is the sample standard deviation (ddof=1), None with fewer than two values; missing
    or non-finite values are left out of ``n``.
    """
    return {m: {k: _stats(_value(r, k) for r in rs) for k in keys} for m, rs in _by_method(runs).items()}


def _relative(x: float | None, ref: float | None) -> float | None:
    """(x - ref) / ref in %, negative is better; None when either is missing."""
    return None if x is None or not ref else 100 * (x - ref) / ref


def _methods(results: dict) -> list[str]:
    """Methods with at least one run, in the order results.json lists them, then any unlisted ones."""
    listed, present = results.get("methods") or [], list(_by_method(results.get("runs", [])))
    return [m for m in listed if m in present] + [m for m in present if m not in listed]


def _pct(s: dict) -> str:
    if s["mean"] is None:
        return DASH
    return f"{100 * s['mean']:.1f} ±" + (f" {100 * s['std']:.1f}" if s["std"] is not None else DASH)


def _num(v: float | None, fmt: str = ".1f", scale: float = 1.0) -> str:
    return DASH if v is None else format(v * scale, fmt)


def _label(method: str) -> str:
    return METHOD_LABELS.get(method) or EXTRA_LABELS.get(method, method)


def _text(d: dict, key: str) -> str:
    return DASH if d.get(key) in (None, "") else str(d[key])


# ---------------------------------------------------------------- metrics.jsonl


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; malformed lines (a run killed mid-write) are skipped."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and _finite(row.get("step")) and _finite(row.get("time")) and "kind" in row:
            rows.append(row)
    return rows


def _series(rows: list[dict], key: str, kind: str = "train") -> tuple[list, list, list]:
    """(steps, minutes since the run's first row, values) of ``key`` over the rows of ``kind`` carrying it."""
    if not rows:
        return [], [], []
    pts = [(r["step"], (r["time"] - rows[0]["time"]) / 60, r[key]) for r in rows
           if r["kind"] == kind and _finite(r.get(key))]
    return tuple(list(c) for c in zip(*pts)) if pts else ([], [], [])


def _heldout(rows: list[dict]) -> list[dict]:
    """The validation rows carrying ``g_heldout`` (g on the held-out unlabeled utterances, in eval mode) with
    the batch counts and training seconds at that point."""
    return [r for r in rows if r["kind"] == "dev" and _finite(r.get("g_heldout"))
            and isinstance(r.get("unlabeled_batches"), int) and _finite(r.get("train_seconds"))]


# ---------------------------------------------------------------- rendering
# A report is a list of blocks, rendered twice: ("h", level, text), ("p", text),
# ("table", header, rows[, text_columns]) and ("figure", png path, caption).


def _align(header: list[str], text_columns: int) -> list[bool]:
    """Right-align (True) the number columns: all but the first and the last ``text_columns - 1``."""
    return [0 < i < len(header) - (text_columns - 1) for i in range(len(header))]


def _md_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    def cells(row):
        return "| " + " | ".join(f"**{c}**" if isinstance(c, Bold) else str(c).replace("|", "\\|") for c in row) + " |"
    align = ["---:" if right else "---" for right in _align(header, text_columns)]
    return "\n".join([cells(header), "|" + "|".join(align) + "|"] + [cells(r) for r in rows])


def _html_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    right = _align(header, text_columns)

    def cell(c, i):
        text = f"<strong>{html.escape(c)}</strong>" if isinstance(c, Bold) else html.escape(str(c))
        return f'<td class="num">{text}</td>' if right[i] else f"<td>{text}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c, i) for i, c in enumerate(r)) + "</tr>\n" for r in rows)
    return f"<table>\n<tr>{head}</tr>\n{body}</table>"


def _markdown(blocks: list[tuple], out_dir: Path) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append("#" * a[0] + " " + a[1])
        elif kind == "p":
            parts.append(a[0])
        elif kind == "table":
            parts.append(_md_table(*a))
        elif kind == "figure":
            parts.append(f"![{a[1]}]({a[0].relative_to(out_dir).as_posix()})")
    return "\n\n".join(parts) + "\n"


def _html(blocks: list[tuple], title: str) -> str:
    parts = []
    for kind, *a in blocks:
        if kind == "h":
            parts.append(f"<h{a[0]}>{html.escape(a[1])}</h{a[0]}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(a[0])}</p>")
        elif kind == "table":
            parts.append(_html_table(*a))
        elif kind == "figure":
            data = base64.b64encode(a[0].read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(a[1])}">'
                         f"<figcaption>{html.escape(a[1])}</figcaption></figure>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the report's sections


@dataclass
class Inputs:
    results: dict
    plots: Path
    methods: list[str]  # with at least one run, in the order results.json lists them
    runs: dict[str, list[dict]]  # by method
    rows: dict[int, list[dict]]  # metrics rows by id() of the run dict
    curve_runs: dict[str, dict]  # per method, the run whose curves are drawn (seed 0, else the first)
    summary: dict
    significance: dict  # results.json's, or computed from the hypothesis files for results that predate it
    significance_recomputed: bool
    out_dir: Path | None = None  # run directories in results.json are relative to it

    def curves(self, method: str) -> list[dict]:
        return self.rows[id(self.curve_runs[method])]

    def color(self, method: str) -> str:
        return f"C{self.methods.index(method) % 10}"


def _load(results: dict, out_dir: Path, plots: Path) -> Inputs:
    runs = results.get("runs", [])
    by_method = _by_method(runs)
    rows = {id(r): read_metrics(out_dir / r["run_dir"] / "metrics.jsonl") if r.get("run_dir") else []
            for rs in by_method.values() for r in rs}
    curve_runs = {m: min(rs, key=lambda r: r.get("seed") != 0) for m, rs in by_method.items()}
    recomputed = not isinstance(results.get("significance"), dict)
    sig = significance(out_dir, runs) if recomputed else results["significance"]
    return Inputs(results, plots, _methods(results), by_method, rows, curve_runs, summarize(runs), sig, recomputed,
                  out_dir)


def _rule_title(results: dict) -> str | None:
    """The budget rule in a few words ("equal labeled updates"), None when results.json does not say."""
    rule = (results.get("budget") or {}).get("budget_rule")
    return RULE_TITLES.get(rule, rule) if rule else None


def _title(inp: Inputs) -> list[tuple]:
    rule = _rule_title(inp.results)
    return [("h", 1, f"bljust compare{f' ({rule})' if rule else ''}: " + ", ".join(_label(m) for m in inp.methods))]


def _code(inp: Inputs) -> str:
    """The code that wrote the results, and any run trained by other code (a run is reused across commits)."""
    from bljust.compare.results import code_text

    here = inp.results.get("code")
    others = [f"{_label(run['method'])} seed {run.get('seed', DASH)}: {code_text(run.get('code'))}"
              for m in inp.methods for run in inp.runs[m]
              if run.get("code") != here and (run.get("code") or here)]
    return code_text(here) + ("; runs trained by other code: " + "; ".join(others) if others else "")


def _setup(inp: Inputs) -> list[tuple]:
    r = inp.results
    budget = r.get("budget") or {}
    budget_text = f"{budget.get('value', DASH)} {budget.get('unit', '')}".replace("_", " ").strip()
    if budget.get("max_duration"):
        budget_text += f" (batches of at most {budget['max_duration']:g} s of audio)"
    machine = "; ".join(f"{k}: {v}" for k, v in (r.get("machine") or {}).items()) or DASH
    setup = [["date", _text(r, "created")], ["data", _text(r, "data")],
             ["config", r.get("config_file") or "package defaults"],
             ["overrides (all methods)", "; ".join(map(str, r.get("overrides") or [])) or "none"],
             ["methods", ", ".join(r.get("methods") or inp.methods)],
             ["seeds", ", ".join(str(s) for s in r.get("seeds", [])) or DASH], ["budget", budget_text],
             ["equal-budget rule", _text(budget, "rule_text" if "rule_text" in budget else "rule")],
             ["machine", machine], ["code", _code(inp)],
             ["decoding", _text(r, "decoding")], ["normalisation", _text(r, "normalization")],
             ["checkpoint selection", _text(r, "selection")]]
    corpus = [[split, _num(c.get("hours"), ".2f"), _text(c, "utterances"), _text(c, "speakers")]
              for split, c in (r.get("corpus") or {}).items() if isinstance(c, dict)]
    blocks = [("h", 2, "Setup"), ("table", ["item", "value"], setup, 2)]
    if missing := [m for m in r.get("methods") or [] if m not in inp.methods]:
        blocks.append(("p", "Listed but without any run in results.json: " + ", ".join(missing) + "."))
    if corpus:
        blocks += [("h", 3, "Corpus"), ("table", ["split", "hours", "utterances", "speakers"], corpus)]
    plans = [f"{_label(m)}: {row['text']}" for m in inp.methods for row in inp.curves(m)[:5]
             if row["kind"] == "plan" and row.get("text")]
    if plans:
        blocks += [("h", 3, "Schedules (as logged by each method's first run)")] + [("p", p) for p in plans]
    return blocks


def _error_rows(methods: list[str], s: dict, with_relative: bool) -> tuple[list[str], list[list[str]]]:
    """The WER/CER table: one row per method; optionally the relative changes against REFERENCES."""
    optional = _optional_splits(s, methods)
    header = ["method", "seeds", "dev WER %", "dev CER %", "test WER %", "test CER %",
              *(f"{split} {rate} %" for split in optional for rate in ("WER", "CER"))]
    lm = _has_lm(s, methods)
    if lm:
        header += ["dev WER % (LM)", "test WER % (LM)", "test CER % (LM)",
                   *(f"{split} WER % (LM)" for split in optional)]
    refs = REFERENCES if with_relative else ()
    compared = ("test_wer", "test_cer") + (("test_lm_wer",) if lm else ())
    for ref in refs:
        header += [f"{KEY_NAMES[key]} vs {_label(ref)}" for key in compared]
    # the topline is a reference and an ablation a variant of BL-JUST: neither is a contender for the best method
    cers = {m: s[m]["test_cer"]["mean"] for m in methods
            if s[m]["test_cer"]["mean"] is not None and m != TOPLINE and m not in ABLATIONS}
    best = min(cers, key=cers.get) if cers else None
    rows = []
    for m in methods:
        n = max(s[m][k]["n"] for k in ("dev_wer", "dev_cer", "test_wer", "test_cer"))
        cer = _pct(s[m]["test_cer"])
        row = [_label(m), str(n), _pct(s[m]["dev_wer"]), _pct(s[m]["dev_cer"]), _pct(s[m]["test_wer"]),
               Bold(cer) if m == best else cer]
        row += [_pct(s[m][f"{split}_{rate}"]) for split in optional for rate in ("wer", "cer")]
        if lm:
            row += [_pct(s[m]["dev_lm_wer"]), _pct(s[m]["test_lm_wer"]), _pct(s[m]["test_lm_cer"])]
            row += [_pct(s[m][f"{split}_lm_wer"]) for split in optional]
        for ref in refs:
            for key in compared:
                change = _relative(s[m][key]["mean"], s[ref][key]["mean"] if ref in s else None)
                row.append(DASH if change is None else f"{change:+.1f} %")
        rows.append(row)
    return header, rows


def _errors(inp: Inputs) -> list[tuple]:
    notes = "".join(f" {split}: {SPLIT_NOTES[split]}." for split in _optional_splits(inp.summary, inp.methods))
    blocks = [("h", 2, "Word and character error rates"),
              ("p", ("Mean ± sample standard deviation over seeds, in %. Relative change = (x − ref) / ref "
                     "of the means, in %; negative is better; – when the reference method did not run. "
                     "Best test CER in bold."
                     + (" The topline (supervised training with every unlabeled utterance transcribed, same budget) "
                        "is a reference, not in the running." if TOPLINE in inp.methods else "")
                     + (" BL-JUST's ablations are variants of BL-JUST, not in the running either."
                        if any(m in ABLATIONS for m in inp.methods) else "")
                     + notes
                     + (" Columns marked (LM): a lexicon beam search with the word n-gram LM, its weight and word "
                        "score chosen per run on dev WER (each run's grid is in results.json); the others are "
                        "greedy CTC decoding." if _has_lm(inp.summary, inp.methods) else ""))),
              ("table", *_error_rows(inp.methods, inp.summary, with_relative=True))]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(inp.methods) + 2), 4))
    x, w = range(len(inp.methods)), 0.38
    for i, (key, name) in enumerate((("test_wer", "test WER"), ("test_cer", "test CER"))):
        st = [inp.summary[m][key] for m in inp.methods]
        bars = ax.bar([j + (i - 0.5) * w for j in x], [100 * (v["mean"] or 0) for v in st], w, label=name,
                      yerr=[100 * (v["std"] or 0) for v in st], capsize=3, color=f"C{i}", alpha=.85)
        ax.bar_label(bars, labels=[_num(v["mean"], ".1f", 100) for v in st], fontsize=8, padding=2)
    ax.set_xticks(list(x), [_label(m) for m in inp.methods])
    ax.set_ylabel("%")
    ax.set_title("Test error rates (mean over seeds, bars = ± std)")
    ax.set_ylim(top=1.2 * ax.get_ylim()[1])  # room for the legend above the value labels
    ax.legend(ncol=2, loc="upper right")
    return blocks + [("figure", _save(fig, inp.plots / "bars.png"), "Test WER and CER per method")]


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
    return f"{_label(method)}'s {KEY_NAMES[key]} is {'lower' if direction < 0 else 'higher'} than {_label(ref)}'s"


def _comparison(inp: Inputs, score: str, method: str, ref: str) -> dict | None:
    return inp.significance.get("scores", {}).get(score, {}).get(method, {}).get(ref)


def _significance(inp: Inputs) -> list[tuple]:
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
                    rows.append([_label(m), _label(ref), KEY_NAMES[key], ", ".join(map(str, c["seeds"])),
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
                    [[_label(x["method"]), str(x["seed"]), SCORE_NAMES.get(x["score"], x["score"]), x["reason"]]
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
        difference = f"{_label(best)}'s {KEY_NAMES[key]} − {_label(ref)}'s"
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
    equal bill when a method's passes cost more (or its budget rule lets it make more)."""
    mine, theirs = (inp.summary[m]["train_seconds"]["mean"] for m in (best, ref))
    if not mine or not theirs:
        return f"Compute: training seconds not recorded for {_label(best)} or {_label(ref)}."
    return (f"Compute: {_label(best)} trained for {mine / theirs:.2f} × {_label(ref)}'s training seconds "
            f"({mine / 60:.1f} against {theirs / 60:.1f} min, means over seeds; the training steps alone).")


def _verdict(inp: Inputs) -> list[tuple]:
    """The answer first: which method did best on dev, what it gained on test over the usual recipe (PT+FT; else
    supervised training), whether that gain is real, and what it cost."""
    blocks = [("h", 2, "Verdict")]
    best, key = _best_on_dev(inp)
    if best is None:
        return blocks + [("p", "No method in the running has a dev score: nothing to choose from.")]
    score = "test_lm" if key == "dev_lm_wer" else "test"
    best_text = (f"Best on dev: {_label(best)} ({'dev WER with the LM' if key == 'dev_lm_wer' else 'dev CER'} "
                 f"{_pct(inp.summary[best][key])} %). {VERDICT_RULE}")
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
    numbers = ["; ".join(f"{_label(m)}: {_pct(stats[m]) + ' %' if m in stats else DASH}" for m in methods)]
    needs = []
    for m in methods:
        if m not in s:
            needs.append(f"runs of {_label(m)}" + (f": --methods {m}" if m in ABLATIONS else ""))
        elif stats[m]["n"] < 2:
            needs.append(f"{KEY_NAMES[key]} of two or more seeds of {_label(m)}")
    if needs:
        return numbers[0], _not_measured(needs)
    holds = True
    for better, worse in zip(methods, methods[1:]):
        gap = stats[worse]["mean"] - stats[better]["mean"]
        spread = max(stats[better]["std"], stats[worse]["std"])
        numbers.append(f"{_label(worse)} − {_label(better)} = {100 * gap:+.1f} points, spread {100 * spread:.1f}")
        holds = holds and gap > spread
    return "; ".join(numbers), REPRODUCED if holds else NOT_REPRODUCED


def _seeds(pairs: list[tuple[dict, str]]) -> str:
    return ", ".join(f"seed {_text(run, 'seed')}: {text}" for run, text in pairs)


def _claim_compute(inp: Inputs) -> tuple[str, str]:
    """Claim 2: every BL-JUST run reaches PT+FT's dev CER within half PT+FT's batch passes (``_reach_ptft``)."""
    if needs := [f"runs of {_label(m)}" for m in ("ptft", "bljust") if m not in inp.runs]:
        return DASH, _not_measured(needs)
    target, budget, hits = _reach_ptft(inp)
    runs = inp.runs["bljust"]
    numbers = f"PT+FT: dev CER {100 * target:.1f} % in {budget:.0f} batch passes"
    if any(id(run) not in hits for run in runs):
        return numbers, _not_measured(["the dev CER at the validations of every BL-JUST run (metrics.jsonl)"])
    reached = [(run, None if hits[id(run)] is None else _passes(hits[id(run)])) for run in runs]
    numbers += "; BL-JUST reached it after: " + _seeds(
        [(run, "not reached" if p is None else f"{p} passes ({p / budget:.2f} of PT+FT's)") for run, p in reached])
    return numbers, REPRODUCED if all(p is not None and p <= budget / 2 for _, p in reached) else NOT_REPRODUCED


def _claim_g(inp: Inputs) -> tuple[str, str]:
    """Claim 3: every BL-JUST run reaches the g_heldout PT+FT ended its pre-training at (``_g_threshold``) in
    fewer unlabeled batches (g steps) than PT+FT's pre-training took."""
    if needs := [f"runs of {_label(m)}" for m in ("ptft", "bljust") if m not in inp.runs]:
        return DASH, _not_measured(needs)
    ends = [end for run in inp.runs["ptft"] if (end := _g_end(inp, "ptft", run)) is not None]
    points = {id(run): _heldout(inp.rows[id(run)]) for run in inp.runs["bljust"]}
    if not ends or not all(points.values()):
        return DASH, _not_measured(["g_heldout from PT+FT and every BL-JUST run: data.heldout_unlabeled_fraction > 0"])
    threshold, _ = _g_threshold(inp, ["ptft"])
    pretraining = statistics.fmean(end["unlabeled_batches"] for end in ends)
    reached = [(run, hit["unlabeled_batches"] if (hit := _g_reach(points[id(run)], threshold)) else None)
               for run in inp.runs["bljust"]]
    numbers = (f"PT+FT: g_heldout {threshold:.3f} after {pretraining:.0f} unlabeled batches of pre-training (means "
               f"over {len(ends)} run(s)); BL-JUST reached it after: "
               + _seeds([(run, "not reached" if b is None else str(b)) for run, b in reached]))
    return numbers, REPRODUCED if all(b is not None and b < pretraining for _, b in reached) else NOT_REPRODUCED


def _claims(inp: Inputs) -> list[tuple]:
    """The papers' four claims (method.md §7 and §4), each reproduced, not reproduced or not measured, beside
    the numbers its verdict rests on."""
    s = inp.summary
    keys = ["test_cer"] + (["test_lm_wer"] if _has_lm(s, inp.methods) else [])
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


def _label_gap(inp: Inputs) -> list[tuple]:
    """Each method's share of the gap between supervised training and the topline that it closes."""
    blocks = [("h", 2, "Share of the label gap recovered")]
    s = inp.summary
    if "supervised" not in s or TOPLINE not in s:
        return blocks + [("p", "Needs a supervised and a topline run (compare runs the topline, supervised training "
                               "with every unlabeled utterance transcribed, when the corpus has the unlabeled_text "
                               "split).")]
    keys = [(k, name) for k, name in GAP_KEYS
            if s["supervised"][k]["mean"] is not None and s[TOPLINE][k]["mean"] is not None]
    gaps = {k: s["supervised"][k]["mean"] - s[TOPLINE][k]["mean"] for k, _ in keys}
    rows = [["supervised − topline (points)"] + [f"{100 * gaps[k]:.1f}" for k, _ in keys]]
    for m in inp.methods:
        if m in ("supervised", TOPLINE):
            continue
        cells = []
        for k, _ in keys:
            mean = s[m][k]["mean"]
            share = None if mean is None or gaps[k] <= 0 else (s["supervised"][k]["mean"] - mean) / gaps[k]
            cells.append(DASH if share is None else f"{100 * share:.0f} %")
        rows.append([_label(m)] + cells)
    return blocks + [
        ("p", ("(supervised − method) / (supervised − topline) of the mean error rates over seeds: 0 % is no "
               "better than supervised training on the labeled split alone, 100 % as good as the topline, the same "
               "training with every unlabeled utterance transcribed, under the same budget; negative is worse than "
               "supervised. – where the topline is not better than supervised (no gap to share). The first row is "
               "the gap itself.")),
        ("table", ["method"] + [f"{name} share" for _, name in keys], rows)]


def _probe(inp: Inputs) -> list[tuple]:
    """The linear probe's dev CER per method beside the random-init encoder's."""
    blocks = [("h", 2, "Linear probe dev CER")]
    probe = inp.results.get("probe") or {}
    base, settings = probe.get(RANDOM_INIT), probe.get("settings") or {}
    methods = [m for m in inp.methods if inp.summary[m]["probe_cer"]["n"]]
    if not methods and base is None:
        return blocks + [("p", "No linear probe in these results.")]
    rows = []
    for m in methods:
        st = inp.summary[m]["probe_cer"]
        diff = DASH if base is None else f"{100 * (st['mean'] - base['cer']):+.1f}"
        rows.append([_label(m), str(st["n"]), _pct(st), diff, _pct(inp.summary[m]["dev_cer"])])
    if base is not None:
        rows.append([_label(RANDOM_INIT), "1", f"{100 * base['cer']:.1f}", DASH, DASH])
    steps = settings.get("steps", DASH)
    return blocks + [
        ("p", (f"Each encoder frozen and read out by a fresh linear CTC head trained for {steps} steps on the labeled "
               "split (the same steps, batches and seed for every encoder), dev decoded greedily: what the encoder "
               "learned that a linear read-out can turn into characters, whatever schedule trained it, against the "
               "same architecture with random weights. Mean ± std over seeds, in %; the difference to random init "
               "in points (negative: better); own dev CER: the run's own CTC head, trained with its encoder.")),
        ("table", ["encoder", "seeds", "probe dev CER %", "vs random init", "own dev CER %"], rows)]


def _curves_figure(inp: Inputs, key: str, kind: str, ylabel: str, path: Path, scale: float = 1.0) -> Path | None:
    """``key`` against steps (left) and wall-clock minutes (right), one line per method; None if no one logged it."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    drawn = False
    for m in inp.methods:
        steps, minutes, values = _series(inp.curves(m), key, kind)
        if not values:
            continue
        style = {"color": inp.color(m), "label": _label(m), "lw": 1.2, "ms": 3, "marker": "o" if kind == "dev" else ""}
        by_step.plot(steps, [scale * v for v in values], **style)
        by_time.plot(minutes, [scale * v for v in values], **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    by_step.set(xlabel="step", ylabel=ylabel)
    by_time.set(xlabel="wall-clock minutes since the run started")
    by_step.legend()
    for ax in (by_step, by_time):
        ax.grid(alpha=.3)
    return _save(fig, path)


def _curves(inp: Inputs) -> list[tuple]:
    seeds = ", ".join(f"{_label(m)} seed {inp.curve_runs[m].get('seed', '?')}" for m in inp.methods)
    f_loss = "RNN-T" if "transducer" in str(inp.results.get("decoding", "")) else "CTC"  # model.loss
    blocks = [("h", 2, "Learning curves"),
              ("p", (f"One run per method ({seeds}). f: {f_loss} loss per token on the labeled batch of the "
                     "logged step; g: self-supervised loss on the unlabeled batch; wall-clock counts from "
                     "the run's first logged row."))]
    missing = [_label(m) for m in inp.methods if not inp.curves(m)]
    if missing:
        blocks.append(("p", "No readable metrics.jsonl for: " + ", ".join(missing) + "."))
    for key, kind, ylabel, name, caption, scale in (
            ("f", "train", f"f ({f_loss} loss per token)", "curves_f", "Supervised loss f", 1.0),
            ("g", "train", "g (SSL loss)", "curves_g", "Self-supervised loss g", 1.0),
            ("cer", "dev", "dev CER %", "dev_cer", "Dev CER at the validation points", 100.0)):
        path = _curves_figure(inp, key, kind, ylabel, inp.plots / f"{name}.png", scale)
        blocks.append(("figure", path, caption) if path else ("p", f"{caption}: no method logged it."))
    return blocks


def _gamma(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "BL-JUST: γ schedule and penalty gap")]
    rows = inp.curves("bljust") if "bljust" in inp.curve_runs else []
    gamma, gap = _series(rows, "gamma"), _series(rows, "penalty_gap")
    gap_heldout = _series(rows, "penalty_gap_heldout", kind="dev")
    if not gamma[0] and not gap[0]:
        return blocks + [("p", "No BL-JUST run with logged γ or penalty gap in these results.")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.plot(gamma[0], gamma[2], color=inp.color("bljust"), marker=".", lw=1)
    top.set(ylabel="γ (weight of ∇g in joint steps)")
    bottom.plot(gap[0], gap[2], color="C3", marker=".", lw=1, label="training batches (EMA)")
    if gap_heldout[0]:
        bottom.plot(gap_heldout[0], gap_heldout[2], color="k", marker="o", ms=3, lw=1, label="held-out (eval mode)")
        bottom.legend(fontsize=8)
    bottom.set(xlabel="step", ylabel="penalty gap g − v*")
    for ax in (top, bottom):
        ax.grid(alpha=.3)
    seed = inp.curve_runs["bljust"].get("seed", "?")
    return blocks + [("figure", _save(fig, inp.plots / "bljust_gamma.png"), f"BL-JUST seed {seed}: γ and penalty gap")]


def _ssl(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "Convergence of the unsupervised loss g"),
              ("p", ("g_heldout: the self-supervised loss g on held-out unlabeled utterances (a fixed share of the "
                     "unlabeled split that no method trains on), in eval mode with the same masks at every "
                     "validation, so it is free of training-batch noise. x = unlabeled batches consumed so far, and "
                     "training minutes (validation excluded)."))]
    methods = [m for m in inp.methods if _heldout(inp.curves(m))]
    if not methods:
        return blocks + [("p", "No run logged g_heldout (g on held-out unlabeled utterances: logged at each "
                               "validation by the methods with an SSL loss when data.heldout_unlabeled_fraction > 0), "
                               "so there is no convergence of g to show.")]
    fig, (by_batch, by_time) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for m in methods:
        rows = _heldout(inp.curves(m))
        g = [r["g_heldout"] for r in rows]
        by_batch.plot([r["unlabeled_batches"] for r in rows], g, color=inp.color(m), lw=1.2, marker="o", ms=3,
                      label=_label(m))
        by_time.plot([r["train_seconds"] / 60 for r in rows], g, color=inp.color(m), lw=1.2, marker="o", ms=3)
    threshold, source = _g_threshold(inp, methods)
    for ax in (by_batch, by_time):
        ax.axhline(threshold, color="k", ls=":", lw=1, label="threshold")
        ax.grid(alpha=.3)
    by_batch.set(xlabel="unlabeled batches consumed", ylabel="g_heldout (SSL loss, held-out)")
    by_time.set(xlabel="training minutes")
    by_batch.legend()
    seeds = ", ".join(f"{_label(m)} seed {inp.curve_runs[m].get('seed', '?')}" for m in methods)
    blocks.append(("figure", _save(fig, inp.plots / "ssl_convergence.png"),
                   f"g on held-out unlabeled utterances against unlabeled batches and training minutes ({seeds})"))
    rows = []
    for m in methods:
        for run in inp.runs[m]:  # every seed: one crossing point is too noisy to stand alone
            points = _heldout(inp.rows[id(run)])
            hit = _g_reach(points, threshold)
            reached = ([str(hit["unlabeled_batches"]), f"{hit['train_seconds'] / 60:.1f}"] if hit is not None
                       else ["not reached"] * 2)
            total = run.get("unlabeled_batches", points[-1]["unlabeled_batches"] if points else None)
            rows.append([_label(m), _text(run, "seed"), *reached, DASH if total is None else str(total)])
    blocks += [("p", f"First validation at which g_heldout was at or below {threshold:.3f} ({source}):"),
               ("table", ["method", "seed", "unlabeled batches", "train min", "unlabeled batches in total"], rows)]
    return blocks


SSL_HEALTH = (("ssl_acc", "masked acc %", 100.0), ("ssl_acc_majority", "majority class %", 100.0),
              ("ssl_acc_chance", "chance %", 100.0), ("ssl_masked_frac", "masked %", 100.0),
              ("ssl_code_usage", "code usage %", 100.0))


def _ssl_health(inp: Inputs) -> list[tuple]:
    """The last logged health of g per run, and the HuBERT targets it trained on."""
    rows, targets = [], {}
    for m in inp.methods:
        for run in inp.runs[m]:
            last = next((r for r in reversed(inp.rows[id(run)]) if "ssl_acc" in r), None)
            if last is not None:
                rows.append([_label(m), _text(run, "seed"), str(last.get("step", DASH)),
                             *[_num(last.get(k), ".1f", scale) for k, _, scale in SSL_HEALTH]])
            if t := _summary(inp, run).get("ssl_targets"):
                targets[t["path"]] = t
    if not rows:
        return []
    blocks = [("h", 2, "Health of the self-supervised loss"),
              ("p", "At the last step that took g (training batches, masked frames only): masked accuracy against what "
                    "always guessing the batch's most frequent target scores (HuBERT) or against chance (CPC, wav2vec "
                    "2.0), the share of encoder frames masked, and the share of codes in use."),
              ("table", ["method", "seed", "step", *[h for _, h, _ in SSL_HEALTH]], rows, 2)]
    if targets:
        trows = []
        for path, t in targets.items():
            h = t.get("health", {})
            spec = t.get("spec", {})
            source = f"layer {spec.get('layer')} of {spec.get('run')}" if spec.get("source") == "run" else spec.get("source")
            trows.append([Path(path).name, str(source), str(t.get("clusters")), _num(h.get("code_usage"), ".1f", 100),
                          _num(h.get("code_perplexity"), ".1f"), _num(h.get("pnmi"), ".3f"),
                          _num(h.get("cluster_purity"), ".3f")])
        blocks += [("p", "HuBERT targets (k-means cluster ids per encoder frame of the unlabeled split). PNMI and "
                         "cluster purity are measured against a CTC run's alignments of the labeled split, when the "
                         "targets were made with one (bljust ssl-targets --from or --align)."),
                   ("table", ["file", "clustered", "clusters", "code usage %", "perplexity", "PNMI", "purity"],
                    trows, 2)]
    return blocks


def _summary(inp: Inputs, run: dict) -> dict:
    path = inp.out_dir / run["run_dir"] / "summary.json" if inp.out_dir and run.get("run_dir") else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def _pseudo_labels(inp: Inputs) -> list[tuple]:
    """Each pseudo-labeling round: what was kept, and (when the corpus has the unlabeled audio's transcripts)
    how wrong the labels were."""
    rows = []
    for m in inp.methods:
        for run in inp.runs[m]:
            for name, st in _summary(inp, run).get("pseudo_labels", {}).items():
                rows.append([_label(m), _text(run, "seed"), name.removeprefix("round"),
                             f"{st.get('kept', DASH)} / {st.get('decoded', DASH)}", _num(st.get("kept_hours"), ".2f"),
                             _num(st.get("label_cer_all"), ".1f", 100), _num(st.get("label_cer_kept"), ".1f", 100),
                             _num(st.get("label_wer_kept"), ".1f", 100)])
    if not rows:
        return []
    return [("h", 2, "Pseudo-labels"),
            ("p", "Each round's labels of the unlabeled split: utterances kept of those decoded, and their error "
                  "rates against the true transcripts where the corpus has them (the unlabeled_text split the topline "
                  "trains on; training never reads them). Labels much worse than the model's dev error teach it its "
                  "own mistakes."),
            ("table", ["method", "seed", "round", "kept / decoded", "kept hours", "label CER % (all)",
                       "label CER % (kept)", "label WER % (kept)"], rows, 2)]


def _g_end(inp: Inputs, method: str, run: dict) -> dict | None:
    """The validation of ``run`` whose g_heldout sets the threshold: for PT+FT the one when its pre-training
    ended (its last before its first labeled batch; its last if none came before), for another method its
    last; None when the run logged no g_heldout."""
    points = _heldout(inp.rows[id(run)])
    pretraining = [r for r in points if r.get("labeled_batches") == 0] if method == "ptft" else []
    return (pretraining or points)[-1] if points else None


def _g_threshold(inp: Inputs, with_g: list[str]) -> tuple[float, str]:
    """The g_heldout every method is asked to reach: PT+FT's when its pre-training ended (``_g_end``), mean
    over its runs; without PT+FT, the final g_heldout of the first method that logged it."""
    source = "ptft" if "ptft" in with_g else with_g[0]
    finals = [end["g_heldout"] for run in inp.runs[source] if (end := _g_end(inp, source, run)) is not None]
    what = "g_heldout at the end of its pre-training" if source == "ptft" else "final g_heldout"
    return statistics.fmean(finals), f"{_label(source)}'s {what}, mean over {len(finals)} run(s)"


def _g_reach(points: list[dict], threshold: float) -> dict | None:
    """The first of ``_heldout``'s validations at or below ``threshold``; None when none got there."""
    return next((r for r in points if r["g_heldout"] <= threshold), None)


def _passes(row: dict) -> int:
    """Batch passes (labeled + unlabeled batches) a run had made at a validation row."""
    return row["labeled_batches"] + row["unlabeled_batches"]


def _reach_ptft(inp: Inputs) -> tuple[float, float, dict[int, dict | None]]:
    """PT+FT's selected dev CER (the target) and batch passes, means over its runs, and per run (by id()) its
    first validation at or below the target, None when none got there; a run without validations that carry
    a dev CER and batch counts is left out. Needs a PT+FT run."""
    target = statistics.fmean(r["dev"]["cer"] for r in inp.runs["ptft"])
    budget = statistics.fmean(r["batch_passes"] for r in inp.runs["ptft"])
    hits = {}
    for runs in inp.runs.values():
        for run in runs:
            dev = [r for r in inp.rows[id(run)] if r["kind"] == "dev" and _finite(r.get("cer"))
                   and isinstance(r.get("labeled_batches"), int)]
            if dev:
                hits[id(run)] = next((r for r in dev if r["cer"] <= target), None)
    return target, budget, hits


def _reach(inp: Inputs) -> list[tuple]:
    """Training compute each run needed to first reach PT+FT's dev CER (the papers' "half the
    compute" claim), read off the validation points."""
    blocks = [("h", 2, "Compute to reach PT+FT's dev CER")]
    if "ptft" not in inp.runs:
        return blocks + [("p", "No PT+FT run in these results.")]
    target, budget, hits = _reach_ptft(inp)
    rows = []
    for m in inp.methods:
        for run in inp.runs[m]:
            if id(run) not in hits:
                rows.append([_label(m), _text(run, "seed"), DASH, DASH, DASH, "not logged"])
            elif (hit := hits[id(run)]) is None:
                rows.append([_label(m), _text(run, "seed"), "not reached", DASH, DASH, _text(run, "batch_passes")])
            else:
                passes = _passes(hit)
                rows.append([_label(m), _text(run, "seed"), str(passes), f"{passes / budget:.2f}",
                             _num(hit.get("train_seconds"), ".1f", 1 / 60), _text(run, "batch_passes")])
    return blocks + [
        ("p", (f"Target: PT+FT's selected dev CER, {100 * target:.1f} % (mean over its seeds). The first "
               "validation point at or below it, in batch passes (labeled + unlabeled batches so far) and training "
               f"minutes (validation excluded); the ratio is to PT+FT's whole budget of {budget:.0f} passes. "
               "Validation points are train.valid_every steps apart, so these are upper bounds at that resolution.")),
        ("table", ["method", "seed", "batch passes to reach", "÷ PT+FT budget", "train min to reach",
                   "batch passes in all"], rows, 2)]


def _test_groups(run: dict) -> dict:
    groups = (run.get("test") or {}).get("groups")
    return groups if isinstance(groups, dict) else {}


def _groups(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "Test error rates per voice family")]
    names = list(dict.fromkeys(g for m in inp.methods for r in inp.runs[m] for g in _test_groups(r)))
    if not names:
        return blocks + [("p", "The test set has no voice-family groups; nothing to break down.")]
    stats = {m: {(g, k): _stats(_value({"test": _test_groups(r).get(g) or {}}, f"test_{k}") for r in inp.runs[m])
                 for g in names for k in ("wer", "cer")} for m in inp.methods}
    header = ["method"] + [f"{g} {k.upper()} %" for g in names for k in ("wer", "cer")]
    rows = [[_label(m)] + [_pct(stats[m][(g, k)]) for g in names for k in ("wer", "cer")] for m in inp.methods]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    w = 0.8 / len(inp.methods)
    for ax, k in zip(axes, ("wer", "cer")):
        for i, m in enumerate(inp.methods):
            st = [stats[m][(g, k)] for g in names]
            ax.bar([j + (i - (len(inp.methods) - 1) / 2) * w for j in range(len(names))],
                   [100 * (s["mean"] or 0) for s in st], w, yerr=[100 * (s["std"] or 0) for s in st],
                   capsize=2, color=inp.color(m), label=_label(m))
        ax.set_xticks(range(len(names)), names)
        ax.set(title=f"test {k.upper()} per voice family", ylabel="%")
        ax.grid(axis="y", alpha=.3)
    axes[0].legend(fontsize=8)
    return blocks + [("p", "Mean ± std over seeds, in %."), ("table", header, rows),
                     ("figure", _save(fig, inp.plots / "groups.png"), "Test WER and CER per voice family")]


def _costs(inp: Inputs) -> list[tuple]:
    keys = tuple(c[1] for c in COST_COLUMNS) + ("parameters", "inference_parameters")
    mean = {m: {k: v["mean"] for k, v in st.items()} for m, st in summarize(inp.results["runs"], keys).items()}
    rows = [[_label(m)] + [_num(mean[m][key], fmt, scale) for _, key, fmt, scale in COST_COLUMNS]
            + [f"{_num(mean[m]['parameters'], '.2f', 1e-6)} M / {_num(mean[m]['inference_parameters'], '.2f', 1e-6)} M"]
            for m in inp.methods]
    header = ["method"] + [c[0] for c in COST_COLUMNS] + ["parameters (train / inference)"]
    rule = (inp.results.get("budget") or {}).get("budget_rule")
    note = ("Means over seeds. " + COST_NOTES.get(rule, "A batch pass is one forward-backward pass over one batch.")
            + " Train min: the training steps alone; wall min: training with its validation, checkpoints and PL's "
              "decoding of the unlabeled split.")
    return [("h", 2, "Cost" + (f" ({RULE_TITLES.get(rule, rule)})" if rule else "")), ("p", note),
            ("table", header, rows)]


def _per_run(inp: Inputs) -> list[tuple]:
    lm = _has_lm(inp.summary, inp.methods)
    optional = _optional_splits(inp.summary, inp.methods)
    probed = any(inp.summary[m]["probe_cer"]["n"] for m in inp.methods)
    scores = (("dev_wer", "dev_cer", "test_wer", "test_cer")
              + tuple(f"{split}_{rate}" for split in optional for rate in ("wer", "cer"))
              + (("dev_lm_wer", "test_lm_wer") if lm else ()) + (("probe_cer",) if probed else ()))
    rows = [[_label(r["method"]), str(r.get("seed", DASH))]
            + [_num(_value(r, k), ".1f", 100) for k in scores]
            + [_text(r, "best_step"), _text(r, "steps"), _num(_value(r, "train_seconds"), ".1f", 1 / 60),
               _text(r, "run_dir"), "; ".join(map(str, r.get("settings") or [])) or DASH]
            for m in inp.methods for r in inp.runs[m]]
    header = (["method", "seed", "dev WER %", "dev CER %", "test WER %", "test CER %"]
              + [f"{split} {rate} %" for split in optional for rate in ("WER", "CER")]
              + (["dev WER % (LM)", "test WER % (LM)"] if lm else []) + (["probe dev CER %"] if probed else [])
              + ["best step", "steps", "train min", "run directory", "settings"])
    blocks = [("h", 2, "Every run"), ("table", header, rows, 3)]
    for job, text in (("train", "Runs that failed, left out of every table above:"),
                      ("probe", "Linear probes that failed, left out of the probe table:")):
        failed = [[_label(str(f.get("method"))), _text(f, "seed"), _text(f, "exit_code"), _text(f, "log")]
                  for f in inp.results.get("failed") or [] if isinstance(f, dict) and f.get("job", "train") == job]
        if failed:
            blocks += [("p", text), ("table", ["method", "seed", "exit code", "log"], failed, 2)]
    return blocks


def write_report(out_dir: Path, results: dict | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out_dir``.

    ``results`` defaults to ``out_dir/results.json``; run directories in it are relative to
    ``out_dir``. Returns ``{"markdown": path, "html": path, "plots": plots_dir}``.
    """
    out_dir = Path(out_dir)
    if results is None:
        results = json.loads((out_dir / "results.json").read_text())
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a figure left from an earlier rendering would contradict this one's notes
        (plots / f"{name}.png").unlink(missing_ok=True)
    inp = _load(results, out_dir, plots)
    blocks = []
    for section in (_title, _verdict, _setup, _errors, _significance, _claims, _label_gap, _probe, _curves, _gamma,
                    _ssl, _ssl_health, _pseudo_labels, _reach, _groups, _costs, _per_run):
        blocks += section(inp)
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(_markdown(blocks, out_dir))
    page.write_text(_html(blocks, blocks[0][2]))
    return {"markdown": markdown, "html": page, "plots": plots}


def headline_table(results: dict) -> str:
    """The Markdown table ``bljust demo`` prints: error rates (mean ± std, %), train minutes and audio hours."""
    methods, summary = _methods(results), summarize(results.get("runs", []))
    header, rows = _error_rows(methods, summary, with_relative=False)
    for m, row in zip(methods, rows):
        mean = {k: v["mean"] for k, v in summary[m].items()}
        row += [_num(mean["train_seconds"], ".1f", 1 / 60), _num(mean["audio_hours"], ".2f")]
    return _md_table(header + ["train min", "audio h"], rows)
