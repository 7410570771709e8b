"""``bljust sweep``: one method over a grid of its settings, under one budget; which knobs matter on this data.

Every point of the grid (or ``random`` points drawn from it) trains ``seeds`` runs with compare's jobs:
the same budget rules, run keys, parallel and resumable subprocesses. Runs are scored on dev only; the
point with the lowest mean dev error is chosen, and only its runs are then decoded on test (and the
other scored splits), once, by re-evaluating the trained runs (compare's decode key).

The report gives dev error per point, a heatmap for each pair of knobs (the mean over the other knobs
and the seeds), and per knob a one-line sensitivity summary: the range of its marginal means (dev
error averaged over everything else, at each of its values) against the seed spread (the pooled
standard deviation over seeds within a point). A knob whose range is within the seed spread is not
distinguishable from noise at these seeds.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import logging
import math
import random
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bljust.compare.budget import check_rule, rule_text
from bljust.compare.jobs import (
    Job,
    available_cores,
    check_reusable,
    devices_for,
    eval_splits,
    plan_jobs,
    read_json,
    run_jobs,
    write_json,
)
from bljust.compare.results import code_text, code_version
from bljust.config import dump_config, load_config

log = logging.getLogger("bljust.compare")

SWEEP_SCHEMA = "bljust.sweep/1"
DEV_ONLY = "dev-only"
"""Folded into a point's decode key while it is scored on dev alone, so that the chosen point's runs count as
not yet evaluated on test and are re-evaluated (not retrained) for it."""


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """``["bljust.gamma_max=0.1,0.3,1", ...]`` → ``[("bljust.gamma_max", ["0.1", "0.3", "1"]), ...]``; each knob a
    dotted config key named once, with at least one value. A list value is written in brackets, e.g.
    ``data.speed_perturb=[],[0.9,1.1]``: commas inside brackets do not split."""
    grid, seen = [], set()
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or "." not in key or not values.strip():
            raise ValueError(f"--grid {spec!r}: expected SECTION.KEY=V1,V2,... (e.g. bljust.gamma_max=0.1,0.3,1)")
        if key in seen:
            raise ValueError(f"--grid names {key} twice")
        seen.add(key)
        grid.append((key, [v.strip() for v in re.split(r",(?![^\[]*\])", values) if v.strip()]))
    if not grid:
        raise ValueError("bljust sweep needs at least one --grid")
    return grid


@dataclass(frozen=True)
class Point:
    """One setting of every knob."""

    values: tuple[tuple[str, str], ...]

    @property
    def settings(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values]

    @property
    def name(self) -> str:
        """A directory name: the knobs' last key parts and values, e.g. ``gamma_max-0.3_finetune_fraction-0.2``."""
        text = "_".join(f"{k.rsplit('.', 1)[1]}-{v}" for k, v in self.values)
        text = re.sub(r"[^A-Za-z0-9._-]+", "", text.replace(",", "+"))
        return text[:120] + ("-" + hashlib.sha256(text.encode()).hexdigest()[:8] if len(text) > 120 else "")


def grid_points(grid: list[tuple[str, list[str]]], random_points: int | None = None, seed: int = 0) -> list[Point]:
    """Every combination of the knobs' values, or ``random_points`` of them drawn without replacement (seeded)."""
    points = [Point(tuple(zip([k for k, _ in grid], combo))) for combo in itertools.product(*(v for _, v in grid))]
    if random_points is not None:
        if random_points < 1:
            raise ValueError("--random must be at least 1")
        points = sorted(random.Random(seed).sample(points, min(random_points, len(points))), key=points.index)
    return points


def _dev_only(job: Job) -> Job:
    """``job`` scored on dev alone, unless it was scored on every split already (the chosen point of an earlier
    invocation: re-scoring it on dev would throw its test scores away)."""
    if not job.finished():
        job.decode_key = hashlib.sha256(json.dumps([job.decode_key, DEV_ONLY]).encode()).hexdigest()[:16]
    return job


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _std(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


METRICS = {"lm-wer": "dev WER with the LM (%)", "cer": "dev CER (greedy, %)"}
"""What ``--metric`` judges points by, and its name in the report."""


def dev_metric(record: dict, metric: str) -> float | None:
    """The error a point is judged by: ``lm-wer`` (dev WER with the LM: what a user ships, the default when the
    sweep decodes with one) or ``cer`` (greedy dev CER: greedy WER is too coarse on a small dev set)."""
    dev = record.get("dev") or {}
    value = (dev.get("lm") or {}).get("wer") if metric == "lm-wer" else dev.get("cer")
    return value if value is not None and math.isfinite(value) else None


def sensitivity(grid: list[tuple[str, list[str]]], points: list[dict]) -> list[dict]:
    """Per knob: its marginal mean dev error at each value (over the points run, the other knobs and the
    seeds), their range, and the seed spread (pooled within-point standard deviation) it is judged against."""
    within = [(len(p["dev"]) - 1, p["dev_std"] ** 2) for p in points if p["dev_std"] is not None]
    dof = sum(n for n, _ in within)
    seed_std = math.sqrt(sum(n * v for n, v in within) / dof) if dof else None
    out = []
    for key, values in grid:
        marginal = {}
        for value in values:
            errs = [e for p in points if p["settings"][key] == value for e in p["dev"]]
            if errs:
                marginal[value] = statistics.fmean(errs)
        spread = max(marginal.values()) - min(marginal.values()) if len(marginal) > 1 else 0.0
        best = min(marginal, key=marginal.get) if marginal else None
        if len(values) == 1:  # held fixed (e.g. to keep the point names of a larger grid): nothing to judge
            verdict = "one value: not varied"
        elif seed_std is None:
            verdict = "no seed spread to judge it by (one seed per point)"
        elif spread > 2 * seed_std:
            verdict = f"matters: {spread / seed_std:.1f}× the seed spread"
        elif spread > seed_std:
            verdict = f"may matter: {spread / seed_std:.1f}× the seed spread"
        else:
            verdict = "within the seed spread: not distinguishable from noise"
        out.append({"knob": key, "marginal": marginal, "range": spread, "seed_std": seed_std, "best": best,
                    "verdict": verdict})
    return out


def sweep(data: str | Path, out: str | Path, *, grid: list[str], method: str = "bljust", seeds: int = 1,
          random_points: int | None = None, config: str | Path | None = None, overrides: list[str] | None = None,
          budget: int | None = None, budget_rule: str = "passes", jobs: int | None = None, device: str = "auto",
          progress: bool = True, metric: str | None = None) -> dict:
    """Train ``method`` at every grid point × seed under one budget, choose the point on dev by ``metric``
    (``METRICS``; default: ``lm-wer`` when the sweep decodes with an LM, else ``cer``), decode its runs on test
    once; write sweep.json and report.md (with heatmaps) to ``out``. Returns sweep.json's content."""
    from bljust.compare import comparison_methods
    from bljust.lm import prepare_lm

    data, out = Path(data).resolve(), Path(out)
    knobs = parse_grid(grid)
    points = grid_points(knobs, random_points)
    comparison_methods(data, [method])  # an unknown method, or a topline without its split, is refused here
    check_rule(budget_rule)
    base = load_config(config, overrides or [])
    budget = budget or base.train.max_steps
    out.mkdir(parents=True, exist_ok=True)
    lm = prepare_lm(base.decode, data, out) if base.model.loss == "ctc" else None
    metric = metric or ("lm-wer" if lm and lm.path else "cer")
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: choose from {', '.join(METRICS)}")
    if metric == "lm-wer" and not (lm and lm.path):
        raise ValueError("--metric lm-wer needs a word LM: set decode.lm, or use a data directory with lm_text.txt")
    seed_list = list(range(seeds))
    point_jobs: dict[Point, list[Job]] = {}
    for point in points:
        cfg = load_config(config, [*(overrides or []), *point.settings])  # a bad key or value fails before any run
        jobs_ = plan_jobs(cfg, data, out / "points" / point.name, [method], seed_list, budget, budget_rule, lm)
        for job in jobs_:
            job.settings = [*point.settings, *job.settings]
        point_jobs[point] = jobs_
    full_keys = {id(j): j.decode_key for js in point_jobs.values() for j in js}
    all_jobs = [_dev_only(j) for js in point_jobs.values() for j in js]
    check_reusable(all_jobs)
    dump_config(base, out / "config.yaml")
    devices, cores = devices_for(device), available_cores()
    parallel = jobs or (len(devices) if devices[0] != "cpu" else cores)
    log.info("sweep: %s at %d point(s) × %d seed(s), budget %d (%s), %d at a time", method, len(points), seeds,
             budget, budget_rule, parallel)
    started = time.time()
    common = {"config": str(out / "config.yaml"), "data": str(data), "lm": lm.path if lm else None}
    failed = run_jobs(all_jobs, {**common, "eval_splits": ["dev"]}, parallel, devices, cores, show_progress=progress)

    rows = []
    for point, jobs_ in point_jobs.items():
        records = [r for j in jobs_ if j.finished() and (r := read_json(j.record_path)) is not None]
        dev = [v for r in records if (v := dev_metric(r, metric)) is not None]
        rows.append({"name": point.name, "settings": dict(point.values), "seeds": [r["seed"] for r in records],
                     "dev": dev, "dev_mean": _mean(dev), "dev_std": _std(dev),
                     "train_seconds": _mean([r["train_seconds"] for r in records])})
    scored = [r for r in rows if r["dev_mean"] is not None]
    if not scored:
        raise RuntimeError(f"bljust sweep: no run finished; see the logs under {out / 'points'}")
    chosen = min(scored, key=lambda r: r["dev_mean"])
    # The chosen point's runs with every scored split: trained already, so only re-evaluated (their full key).
    final = next(js for p, js in point_jobs.items() if p.name == chosen["name"])
    for job in final:
        job.decode_key = full_keys[id(job)]
    failed += run_jobs(final, {**common, "eval_splits": list(eval_splits(data))}, parallel, devices, cores,
                       show_progress=progress)
    tests = [r for j in final if j.finished() and (r := read_json(j.record_path)) is not None]
    results = {
        "schema": SWEEP_SCHEMA, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(data), "code": code_version(), "method": method, "config_file": str(config) if config else None,
        "overrides": list(overrides or []), "grid": [{"knob": k, "values": v} for k, v in knobs],
        "random_points": random_points, "seeds": seed_list,
        "budget": {"budget_rule": budget_rule, "value": budget, "rule_text": rule_text(budget_rule, base.data.max_duration)},
        "metric": METRICS[metric],
        "points": rows, "sensitivity": sensitivity(knobs, scored),
        "chosen": {"name": chosen["name"], "settings": chosen["settings"],
                   "runs": [{"seed": r["seed"], **{s: r[s] for s in eval_splits(data) if s in r}} for r in tests]},
        "wall_seconds_this_invocation": time.time() - started,
        "failed": [{"point": j.run_dir.parent.parent.name, "seed": j.seed, "exit_code": c, "log": str(j.log_path)}
                   for j, c in failed],
    }
    write_json(out / "sweep.json", results)
    write_sweep_report(out, results)
    return results


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _heatmap(out: Path, results: dict, a: str, b: str) -> str:
    """A PNG of the mean dev error over knobs ``a`` × ``b`` (averaged over any other knob and the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = {g["knob"]: g["values"] for g in results["grid"]}
    grid = np.full((len(values[a]), len(values[b])), np.nan)
    for i, va in enumerate(values[a]):
        for j, vb in enumerate(values[b]):
            errs = [e for p in results["points"] if p["settings"][a] == va and p["settings"][b] == vb for e in p["dev"]]
            if errs:
                grid[i, j] = 100 * statistics.fmean(errs)
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(values[b]), 1.0 + 0.8 * len(values[a])))
    im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(len(values[b])), values[b])
    ax.set_yticks(range(len(values[a])), values[a])
    ax.set_xlabel(b)
    ax.set_ylabel(a)
    for i, j in itertools.product(range(grid.shape[0]), range(grid.shape[1])):
        if not np.isnan(grid[i, j]):
            ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, label=results["metric"])
    fig.tight_layout()
    name = f"heatmap-{a.rsplit('.', 1)[1]}-{b.rsplit('.', 1)[1]}.png"
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_sweep_report(out: Path, results: dict) -> None:
    """report.md of a sweep: sensitivity per knob, dev error per point, heatmaps, the chosen point's test scores."""
    knobs = [g["knob"] for g in results["grid"]]
    budget = results["budget"]
    lines = [f"# Sweep of {results['method']} on {results['data']}", "",
             f"{len(results['points'])} point(s) × {len(results['seeds'])} seed(s), budget {budget['value']} "
             f"({budget['budget_rule']}: {budget['rule_text']}). Judged by {results['metric']}, mean ± sample "
             "standard deviation over seeds; test decoded once, for the chosen point only. Code: "
             f"{code_text(results.get('code'))}.", "",
             "## Sensitivity", ""]
    for s in results["sensitivity"]:
        marginal = ", ".join(f"{v}: {100 * e:.2f}" for v, e in s["marginal"].items())
        seed = f"{100 * s['seed_std']:.2f}" if s["seed_std"] is not None else "–"
        lines.append(f"- **{s['knob']}**: range {100 * s['range']:.2f} points against a seed spread of {seed} "
                     f"— {s['verdict']} (marginal means {marginal}; best {s['best']})")
    lines += ["", "## Dev error per point", "",
              "| " + " | ".join([*knobs, results["metric"], "seeds", "train min"]) + " |",
              "|" + "---|" * (len(knobs) + 3)]
    for p in sorted(results["points"], key=lambda p: (p["dev_mean"] is None, p["dev_mean"] or 0.0)):
        mark = " **(chosen)**" if p["name"] == results["chosen"]["name"] else ""
        train = f"{p['train_seconds'] / 60:.1f}" if p["train_seconds"] is not None else "–"
        lines.append("| " + " | ".join([*(p["settings"][k] for k in knobs), _fmt(p["dev_mean"], p["dev_std"]) + mark,
                                       str(len(p["dev"])), train]) + " |")
    varied = [g["knob"] for g in results["grid"] if len(g["values"]) > 1]
    for a, b in itertools.combinations(varied, 2):
        lines += ["", f"![{a} × {b}]({_heatmap(out, results, a, b)})"]
    chosen = results["chosen"]
    lines += ["", "## The chosen point on test", "",
              "Settings: " + ", ".join(f"`{k}={v}`" for k, v in chosen["settings"].items()), "",
              "| seed | test WER % | test CER % | test WER % (LM) |", "|---|---|---|---|"]
    for run in chosen["runs"]:
        test = run.get("test") or {}
        lines.append(f"| {run['seed']} | {_fmt(test.get('wer'))} | {_fmt(test.get('cer'))} | "
                     f"{_fmt((test.get('lm') or {}).get('wer'))} |")
    if results["failed"]:
        lines += ["", "Failed runs: " + "; ".join(f"{f['point']} seed {f['seed']} (exit {f['exit_code']}, "
                                                   f"{f['log']})" for f in results["failed"])]
    (out / "report.md").write_text("\n".join(lines) + "\n")
