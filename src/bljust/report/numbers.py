"""What the report reads and computes: per-method means and spreads of results.json's runs, the rows of their
``metrics.jsonl``, the number formats every section shares, and the validation points the claims are read at.

Error rates are corpus-level fractions in ``results.json``, printed as percentages with one decimal; "±" is the
sample standard deviation over seeds (ddof=1), "±–" when only one seed ran.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from bljust.compare.budget import TOPLINE
from bljust.compare.jobs import EVAL_SPLITS, OPTIONAL_EVAL_SPLITS, RANDOM_INIT
from bljust.compare.significance import significance
from bljust.methods import METHOD_LABELS

SCORED_SPLITS = (*EVAL_SPLITS, *OPTIONAL_EVAL_SPLITS)
SUMMARY_KEYS = (*(f"{split}_{rate}" for split in SCORED_SPLITS for rate in ("wer", "cer", "lm_wer", "lm_cer")),
                "probe_cer", "train_seconds", "audio_hours", "batch_passes")
NODES = tuple(sorted((*SCORED_SPLITS, "probe"), key=len, reverse=True))
"""Run-record entries that hold rates: key ``test_other_cer`` is ``run["test_other"]["cer"]`` (longest first, so
that it is not read as test's), ``probe_cer`` the linear probe's dev CER."""
EXTRA_LABELS = {TOPLINE: "topline (all transcribed)", RANDOM_INIT: "random init",
                "bljust-no-explore": "BL-JUST, N1 = 0", "bljust-no-finetune": "BL-JUST, N3 = 0",
                "bljust-const-gamma": "BL-JUST, constant γ"}
KEY_NAMES = {"test_wer": "test WER", "test_cer": "test CER", "test_lm_wer": "test WER (LM)",
             "test_lm_cer": "test CER (LM)"}
DASH = "–"


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_value(run: dict, key: str) -> float | None:
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
    return float(v) if finite(v) else None


def has_lm(s: dict, methods: list[str]) -> bool:
    return any(s[m]["test_lm_wer"]["n"] for m in methods)


def optional_splits(s: dict, methods: list[str]) -> list[str]:
    """The optional scored splits some run was scored on: only they get columns."""
    return [split for split in OPTIONAL_EVAL_SPLITS if any(s[m][f"{split}_cer"]["n"] for m in methods)]


def mean_std(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": statistics.fmean(vals) if vals else None,
            "std": statistics.stdev(vals) if len(vals) >= 2 else None, "n": len(vals)}


def by_method(runs: list[dict]) -> dict[str, list[dict]]:
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
    return {m: {k: mean_std(run_value(r, k) for r in rs) for k in keys} for m, rs in by_method(runs).items()}


def relative(x: float | None, ref: float | None) -> float | None:
    """(x - ref) / ref in %, negative is better; None when either is missing."""
    return None if x is None or not ref else 100 * (x - ref) / ref


def methods_of(results: dict) -> list[str]:
    """Methods with at least one run, in the order results.json lists them, then any unlisted ones."""
    listed, present = results.get("methods") or [], list(by_method(results.get("runs", [])))
    return [m for m in listed if m in present] + [m for m in present if m not in listed]


def pct(s: dict) -> str:
    if s["mean"] is None:
        return DASH
    return f"{100 * s['mean']:.1f} ±" + (f" {100 * s['std']:.1f}" if s["std"] is not None else DASH)


def num(v: float | None, fmt: str = ".1f", scale: float = 1.0) -> str:
    return DASH if v is None else format(v * scale, fmt)


def label(method: str) -> str:
    return METHOD_LABELS.get(method) or EXTRA_LABELS.get(method, method)


def field(d: dict, key: str) -> str:
    return DASH if d.get(key) in (None, "") else str(d[key])


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
        if isinstance(row, dict) and finite(row.get("step")) and finite(row.get("time")) and "kind" in row:
            rows.append(row)
    return rows


def series(rows: list[dict], key: str, kind: str = "train") -> tuple[list, list, list]:
    """(steps, minutes since the run's first row, values) of ``key`` over the rows of ``kind`` carrying it."""
    if not rows:
        return [], [], []
    pts = [(r["step"], (r["time"] - rows[0]["time"]) / 60, r[key]) for r in rows
           if r["kind"] == kind and finite(r.get(key))]
    return tuple(list(c) for c in zip(*pts)) if pts else ([], [], [])


def heldout(rows: list[dict]) -> list[dict]:
    """The validation rows carrying ``g_heldout`` (g on the held-out unlabeled utterances, in eval mode) with
    the batch counts and training seconds at that point."""
    return [r for r in rows if r["kind"] == "dev" and finite(r.get("g_heldout"))
            and isinstance(r.get("unlabeled_batches"), int) and finite(r.get("train_seconds"))]


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


def load_inputs(results: dict, out_dir: Path, plots: Path) -> Inputs:
    runs = results.get("runs", [])
    per_method = by_method(runs)
    rows = {id(r): read_metrics(out_dir / r["run_dir"] / "metrics.jsonl") if r.get("run_dir") else []
            for rs in per_method.values() for r in rs}
    curve_runs = {m: min(rs, key=lambda r: r.get("seed") != 0) for m, rs in per_method.items()}
    recomputed = not isinstance(results.get("significance"), dict)
    sig = significance(out_dir, runs) if recomputed else results["significance"]
    return Inputs(results, plots, methods_of(results), per_method, rows, curve_runs, summarize(runs), sig, recomputed,
                  out_dir)


def run_summary(inp: Inputs, run: dict) -> dict:
    path = inp.out_dir / run["run_dir"] / "summary.json" if inp.out_dir and run.get("run_dir") else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def g_end(inp: Inputs, method: str, run: dict) -> dict | None:
    """The validation of ``run`` whose g_heldout sets the threshold: for PT+FT the one when its pre-training
    ended (its last before its first labeled batch; its last if none came before), for another method its
    last; None when the run logged no g_heldout."""
    points = heldout(inp.rows[id(run)])
    pretraining = [r for r in points if r.get("labeled_batches") == 0] if method == "ptft" else []
    return (pretraining or points)[-1] if points else None


def g_threshold(inp: Inputs, with_g: list[str]) -> tuple[float, str]:
    """The g_heldout every method is asked to reach: PT+FT's when its pre-training ended (``g_end``), mean
    over its runs; without PT+FT, the final g_heldout of the first method that logged it."""
    source = "ptft" if "ptft" in with_g else with_g[0]
    finals = [end["g_heldout"] for run in inp.runs[source] if (end := g_end(inp, source, run)) is not None]
    what = "g_heldout at the end of its pre-training" if source == "ptft" else "final g_heldout"
    return statistics.fmean(finals), f"{label(source)}'s {what}, mean over {len(finals)} run(s)"


def g_reach(points: list[dict], threshold: float) -> dict | None:
    """The first of ``heldout``'s validations at or below ``threshold``; None when none got there."""
    return next((r for r in points if r["g_heldout"] <= threshold), None)


def batch_passes_at(row: dict) -> int:
    """Batch passes (labeled + unlabeled batches) a run had made at a validation row."""
    return row["labeled_batches"] + row["unlabeled_batches"]


def reach_ptft(inp: Inputs) -> tuple[float, float, dict[int, dict | None]]:
    """PT+FT's selected dev CER (the target) and batch passes, means over its runs, and per run (by id()) its
    first validation at or below the target, None when none got there; a run without validations that carry
    a dev CER and batch counts is left out. Needs a PT+FT run."""
    target = statistics.fmean(r["dev"]["cer"] for r in inp.runs["ptft"])
    budget = statistics.fmean(r["batch_passes"] for r in inp.runs["ptft"])
    hits = {}
    for runs in inp.runs.values():
        for run in runs:
            dev = [r for r in inp.rows[id(run)] if r["kind"] == "dev" and finite(r.get("cer"))
                   and isinstance(r.get("labeled_batches"), int)]
            if dev:
                hits[id(run)] = next((r for r in dev if r["cer"] <= target), None)
    return target, budget, hits
