"""``bljust compare``: every method × seed on one data directory under one declared budget.

- ``budget``: the budget rules (equal batch passes, or equal labeled updates) and each method's share;
- ``jobs``: run keys, the job subprocesses and their scheduling;
- ``results``: the results.json schema and validator, and the costs, corpus and machine it records.

The LM runs are decoded with comes from ``bljust.lm.prepare_lm``, their evaluation from
``bljust.evaluate.evaluate_run``, and the report from ``bljust.report``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from bljust.compare.budget import BUDGET_RULES, RULE_UNITS, check_rule, rule_text
from bljust.compare.jobs import (
    available_cores,
    check_reusable,
    devices_for,
    plan_jobs,
    read_json,
    run_jobs,
    write_json,
)
from bljust.compare.results import SCHEMA, corpus_stats, machine_info, validate_results
from bljust.config import dump_config, load_config
from bljust.methods import METHOD_NAMES

log = logging.getLogger("bljust.compare")

__all__ = ["BUDGET_RULES", "compare"]


def compare(data: str | Path, out: str | Path, *, methods: list[str] | None = None, seeds: list[int] | None = None,
            config: str | Path | None = None, overrides: list[str] | None = None, budget: int | None = None,
            budget_rule: str = "passes", jobs: int | None = None, device: str = "auto",
            progress: bool = True) -> dict:
    """Train and evaluate every method × seed under ``budget_rule``, write results.json and the report;
    returns the results."""
    from bljust.data.manifests import SPLITS, has_split
    from bljust.evaluate import NORMALIZATION
    from bljust.lm import lm_order_of, prepare_lm

    data, out = Path(data).resolve(), Path(out)
    missing = [s for s in SPLITS if not has_split(data, s)]
    if missing:
        raise FileNotFoundError(f"{data} lacks the split(s) {', '.join(missing)}; compare needs labeled, unlabeled, "
                                f"dev and test (bljust corpus synth / bljust corpus import)")
    methods = list(methods or METHOD_NAMES)
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)}")
    check_rule(budget_rule)
    seeds = list(seeds if seeds is not None else [0])
    cfg = load_config(config, overrides or [])
    budget = budget or cfg.train.max_steps
    out.mkdir(parents=True, exist_ok=True)
    lm = prepare_lm(cfg.decode, data, out)
    job_list = plan_jobs(cfg, data, out, methods, seeds, budget, budget_rule, lm)
    check_reusable(job_list)
    dump_config(cfg, out / "config.yaml")

    devices = devices_for(device)
    cores = available_cores()
    parallel = jobs or (len(devices) if devices[0] != "cpu" else cores)
    log.info("compare: %d job(s) (%s × seeds %s), budget %d %s each (%s), %d at a time on %s", len(job_list),
             ",".join(methods), seeds, budget, RULE_UNITS[budget_rule].replace("_", " "), budget_rule, parallel,
             ",".join(devices))
    started = time.time()
    failed = run_jobs(job_list, {"config": str(out / "config.yaml"), "data": str(data), "lm": lm.path,
                                 "decode_key": lm.decode_key}, parallel, devices, cores, show_progress=progress)

    runs = []
    for job in job_list:
        if job.finished():
            record = read_json(job.record_path)
            record["run_dir"] = str(job.run_dir.relative_to(out))
            runs.append(record)
    results = {
        "schema": SCHEMA, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(data), "corpus": corpus_stats(data), "config_file": str(config) if config else None,
        "overrides": list(overrides or []),
        "budget": {"budget_rule": budget_rule, "unit": RULE_UNITS[budget_rule], "value": budget,
                   "max_duration": cfg.data.max_duration,
                   "rule_text": rule_text(budget_rule, cfg.data.max_duration)},
        "methods": methods, "seeds": seeds, "machine": machine_info(parallel, devices, cores),
        "normalization": NORMALIZATION, "decoding": "greedy CTC" + (
            f"; and a lexicon beam search (beam {cfg.decode.beam_size}) with the word {lm_order_of(lm.path)}-gram LM "
            f"{lm.path}, whose weight and word score are chosen per run on dev WER" if lm.path else ""),
        "lm": lm.path,
        "selection": f"the checkpoint with the best dev {cfg.train.best_metric.upper()} (validated every "
                     f"{cfg.train.valid_every} steps and at the end); test evaluated once",
        "wall_seconds_this_invocation": time.time() - started,
        "runs": runs,
        "failed": [{"method": j.method, "seed": j.seed, "exit_code": c, "log": str(j.log_path)}
                   for j, c in failed],
    }
    validate_results(results)
    write_json(out / "results.json", results)
    if runs:
        from bljust.report import write_report

        write_report(out, results)
    return results
