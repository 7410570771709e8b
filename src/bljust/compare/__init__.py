"""``bljust compare``: every method × seed on one data directory under one declared budget.

- ``budget``: the budget rules (equal batch passes, or equal labeled updates) and each method's share,
  the topline's and BL-JUST's ablations' included;
- ``jobs``: run keys, the job subprocesses (training runs, then linear probes of their encoders) and their
  scheduling;
- ``results``: the results.json schema and validator, and the costs, corpus and machine it records;
- ``significance``: paired bootstrap intervals of each method's test error difference to PT+FT and supervised.

The LM runs are decoded with comes from ``bljust.lm.prepare_lm``, their evaluation from
``bljust.evaluate.evaluate_run``, and the report from ``bljust.report``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from bljust.compare.budget import ABLATIONS, BUDGET_RULES, RULE_UNITS, TOPLINE, TOPLINE_SPLIT, check_rule, rule_text
from bljust.compare.jobs import (
    RANDOM_INIT,
    adopt_runs,
    available_cores,
    check_reusable,
    devices_for,
    eval_splits,
    plan_jobs,
    plan_probes,
    read_json,
    run_jobs,
    write_json,
)
from bljust.compare.results import SCHEMA, code_version, corpus_stats, machine_info, probe_summary, validate_results
from bljust.compare.significance import significance
from bljust.config import dump_config, load_config
from bljust.methods import METHOD_NAMES

log = logging.getLogger("bljust.compare")

__all__ = ["BUDGET_RULES", "compare"]


def comparison_methods(data: Path, methods: list[str] | None) -> list[str]:
    """``methods`` checked, or by default every method, and the topline when ``data`` has the transcripts it
    trains on (the ``unlabeled_text`` split); BL-JUST's ablations only when named."""
    from bljust.data.manifests import has_split, manifest_paths

    methods = list(methods or (*METHOD_NAMES, *((TOPLINE,) if has_split(data, TOPLINE_SPLIT) else ())))
    known = (*METHOD_NAMES, TOPLINE, *ABLATIONS)
    if unknown := [m for m in methods if m not in known]:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if TOPLINE in methods and not has_split(data, TOPLINE_SPLIT):
        paths = " and ".join(map(str, manifest_paths(data, TOPLINE_SPLIT)))
        raise FileNotFoundError(f"the topline trains on the unlabeled utterances' transcripts, and {data} has no "
                                f"'{TOPLINE_SPLIT}' split (missing {paths}); leave topline out of --methods")
    return methods


def _listed(words: list[str]) -> str:
    """``words`` as prose: a; a and b; a, b and c."""
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def compare(data: str | Path, out: str | Path, *, methods: list[str] | None = None, seeds: list[int] | None = None,
            config: str | Path | None = None, overrides: list[str] | None = None, budget: int | None = None,
            budget_rule: str = "passes", jobs: int | None = None, device: str = "auto",
            progress: bool = True, reuse_from: list[str | Path] | None = None) -> dict:
    """Train and evaluate every method × seed under ``budget_rule``, probe every trained encoder and one
    random-init encoder, write results.json and the report; returns the results.

    ``methods`` defaults to every method, and the topline when the corpus has the ``unlabeled_text`` split.
    ``reuse_from``: earlier comparisons' or sweep points' directories whose runs that trained the same model are
    copied instead of trained again (``jobs.adopt_runs``)."""
    from bljust.data.manifests import SPLITS, has_split
    from bljust.evaluate import NORMALIZATION, decoding_name
    from bljust.lm import PreparedLM, lm_order_of, prepare_lm

    data, out = Path(data).resolve(), Path(out)
    missing = [s for s in SPLITS if not has_split(data, s)]
    if missing:
        raise FileNotFoundError(f"{data} lacks the split(s) {', '.join(missing)}; compare needs labeled, unlabeled, "
                                f"dev and test (bljust corpus synth / bljust corpus import)")
    methods = comparison_methods(data, methods)
    check_rule(budget_rule)
    seeds = list(seeds if seeds is not None else [0])
    cfg = load_config(config, overrides or [])
    budget = budget or cfg.train.max_steps
    out.mkdir(parents=True, exist_ok=True)
    if cfg.model.loss == "ctc":
        lm = prepare_lm(cfg.decode, data, out)
    else:  # the config refuses decode.lm for a transducer; the corpus's LM text is left unused
        lm = PreparedLM()
        if (data / "lm_text.txt").is_file():
            log.info("compare: model.loss=%s: no word-LM decoding (the lexicon beam search is CTC-only); every "
                     "run is decoded by the transducer's beam search alone, and %s is not used", cfg.model.loss,
                     data / "lm_text.txt")
    job_list = plan_jobs(cfg, data, out, methods, seeds, budget, budget_rule, lm)
    check_reusable(job_list)
    if reuse_from:
        adopt_runs(job_list, cfg, data, lm, [Path(d) for d in reuse_from])
    dump_config(cfg, out / "config.yaml")

    devices = devices_for(device)
    cores = available_cores()
    parallel = jobs or (len(devices) if devices[0] != "cpu" else cores)
    log.info("compare: %d job(s) (%s × seeds %s), budget %d %s each (%s), %d at a time on %s", len(job_list),
             ",".join(methods), seeds, budget, RULE_UNITS[budget_rule].replace("_", " "), budget_rule, parallel,
             ",".join(devices))
    started = time.time()
    spec_common = {"config": str(out / "config.yaml"), "data": str(data), "lm": lm.path,
                   "eval_splits": list(eval_splits(data))}
    failed = run_jobs(job_list, spec_common, parallel, devices, cores, show_progress=progress)
    # The probes read the finished runs' models, so they start once training is over.
    probe_jobs = plan_probes(job_list, out)
    if probe_jobs:
        log.info("compare: %d linear probe(s): every trained encoder's and a random-init one's", len(probe_jobs))
    failed_probes = run_jobs(probe_jobs, spec_common, parallel, devices, cores,
                             show_progress=progress) if probe_jobs else []
    probes = {(j.method, j.seed): probe_summary(read_json(j.record_path)) for j in probe_jobs if j.finished()}

    runs = []
    for job in job_list:
        if job.finished():
            record = read_json(job.record_path)
            record["run_dir"] = str(job.run_dir.relative_to(out))
            if (job.method, job.seed) in probes:
                record["probe"] = probes[(job.method, job.seed)]
            runs.append(record)
    random_init = next((p for (method, _), p in probes.items() if method == RANDOM_INIT), None)
    results = {
        "schema": SCHEMA, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(data), "corpus": corpus_stats(data), "config_file": str(config) if config else None,
        "overrides": list(overrides or []),
        "budget": {"budget_rule": budget_rule, "unit": RULE_UNITS[budget_rule], "value": budget,
                   "max_duration": cfg.data.max_duration,
                   "rule_text": rule_text(budget_rule, cfg.data.max_duration)},
        "methods": methods, "seeds": seeds, "machine": machine_info(parallel, devices, cores), "code": code_version(),
        "normalization": NORMALIZATION, "decoding": decoding_name(cfg) + (
            f"; and a lexicon beam search (beam {cfg.decode.beam_size}) with the word {lm_order_of(lm.path)}-gram LM "
            f"{lm.path}, whose weight and word score are chosen per run on dev WER" if lm.path else ""),
        "lm": lm.path,
        "selection": f"the checkpoint with the best dev {cfg.train.best_metric.upper()} (validated every "
                     f"{cfg.train.valid_every} steps and at the end); "
                     + _listed([s for s in eval_splits(data) if s != "dev"]) + " evaluated once",
        "wall_seconds_this_invocation": time.time() - started,
        # the settings of the trained encoders' probes (the random-init one differs only in random_init)
        "probe": {"settings": probe_jobs[0].probe if probe_jobs else None, RANDOM_INIT: random_init},
        "runs": runs,
        "significance": significance(out, runs),
        "failed": [{"method": j.method, "seed": j.seed, "exit_code": c, "log": str(j.log_path), "job": j.kind}
                   for j, c in (*failed, *failed_probes)],
    }
    validate_results(results)
    write_json(out / "results.json", results)
    if runs:
        from bljust.report import write_report

        write_report(out, results)
    return results
