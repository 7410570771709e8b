"""``bljust compare``: every method × seed on one data directory under one declared budget.

The budget rule: every method gets the same number of **batch passes**, i.e. forward/backward
passes over a batch of at most ``data.max_duration`` seconds of audio. A supervised, SSL,
exploration or fine-tuning step is one pass; a joint step (JUST, BL-JUST) takes one labeled
and one unlabeled batch and is two. Validation and PL's decoding of the unlabeled split are
inference and are not counted (their wall-clock is, in the cost table).

Each (method, seed) is one job: a ``bljust.compare job`` subprocess that trains (resuming
from its checkpoints when a run was interrupted), selects ``best.pt`` on dev, evaluates it on
dev and test once, and writes ``record.json`` in its run directory. A finished job is reused
on a re-run when its settings hash matches. Jobs run in parallel: one single-threaded process
per core on CPU (the last wave may share the cores; see ``may_start``), one process per GPU on
a multi-GPU machine.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bljust.config import Config, dump_config, load_config, to_dict

log = logging.getLogger("bljust.compare")

ALL_METHODS = ("supervised", "ptft", "just", "pl", "bljust")
SCHEMA = "bljust.compare/1"
KEY_VERSION = 4  # bump when a config default or the training code changes what a run produces
# The config sections that belong to one method: a run's key ignores the other methods' sections,
# so re-tuning BL-JUST does not retrain supervised. Every method reads the remaining sections.
METHOD_SECTIONS = {"supervised": (), "ptft": ("ssl", "ptft"), "just": ("ssl", "just"), "pl": ("pl",),
                   "bljust": ("ssl", "bljust")}
_METHOD_ONLY = {section for sections in METHOD_SECTIONS.values() for section in sections}
RULE = ("equal batch passes: every method makes the same number of forward/backward passes over batches of at "
        "most {max_duration:g} s of audio; a supervised, SSL, exploration or fine-tuning step is one pass, a joint "
        "step (JUST, BL-JUST) is two (one labeled + one unlabeled batch). Inference (validation, PL's "
        "re-labeling) is not counted.")


@dataclass
class Job:
    """One (method, seed) training run and its evaluation."""

    method: str
    seed: int
    run_dir: Path
    settings: list[str]
    """``--set`` overrides on top of the comparison's config: the seed and the method's share of the budget."""
    total_steps: int
    """The run's optimiser steps, for the progress display."""
    budget: int
    """Batch passes this job is allowed."""
    key: str = ""
    """Hash of everything that determines the trained model; a finished run is reused only when it matches."""
    decode_key: str = ""
    """Hash of the LM and decoding settings; when only this changed, the run is re-evaluated, not retrained."""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    threads: int = 1
    device: str = "cpu"

    @property
    def name(self) -> str:
        return f"{self.method}-seed{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir.parent / f"{self.name}.log"

    @property
    def record_path(self) -> Path:
        return self.run_dir / "record.json"

    def finished(self) -> bool:
        if not self.record_path.is_file():
            return False
        record = _read_json(self.record_path) or {}
        return record.get("key") == self.key and record.get("decode_key", "") == self.decode_key

    def trained(self) -> bool:
        """Trained and evaluated under other decoding settings: only the evaluation is redone."""
        return (_read_json(self.record_path) or {}).get("key") == self.key and (self.run_dir / "best.pt").is_file()


# ------------------------------------------------------------------ the budget


def stream_batches(cfg: Config, data: Path) -> tuple[int, int]:
    """Batches in one pass of the labeled and of the unlabeled split at the config's batch size.

    Cuts outside the duration limits are left out as training does; the label-length filter
    (which needs the tokenizer) is not applied, so this can over-count by the few cuts it drops.
    """
    from bljust.data.loader import BatchStream
    from bljust.data.manifests import load_split

    d = cfg.data
    counts = []
    for i, split in enumerate(("labeled", "unlabeled")):
        cuts = load_split(data, split).filter(
            lambda c: d.min_utterance_seconds <= c.duration <= min(d.max_utterance_seconds, d.max_duration)).to_eager()
        counts.append(BatchStream(cuts, split, max_duration=d.max_duration, num_buckets=d.num_buckets,
                                  seed=cfg.train.seed + i).batches_per_epoch())
    return counts[0], counts[1]


def method_settings(method: str, cfg: Config, budget: int, labeled_batches: int,
                    unlabeled_batches: int) -> tuple[list[str], int]:
    """The overrides that spend exactly ``budget`` batch passes, and the run's number of steps."""
    if method in ("supervised", "ptft", "pl"):
        return [f"train.max_steps={budget}"], budget
    if method == "just":
        return [f"train.max_steps={budget // 2}"], budget // 2
    if method != "bljust":
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(ALL_METHODS)}")
    from bljust.methods.bljust import make_plan

    # BL-JUST runs whole outer epochs of N1 + N2 steps (N1 + 2·N2 passes; the first epoch's N1 may
    # differ) and then N3 fine-tuning steps: K is the most epochs that leave room for the configured
    # N3, and the remainder goes to N3 so the total is the budget exactly.
    p = make_plan(cfg.bljust, budget, labeled_batches, unlabeled_batches, joint_cost=2)
    n3 = budget - p.explore_total - 2 * p.outer_epochs * p.joint
    if n3 < 0:
        raise ValueError(f"bljust: {p.outer_epochs} outer epochs of N1={p.explore} + 2·N2={2 * p.joint} batch passes "
                         f"(first N1={p.explore_0}) exceed the budget of {budget}; raise --budget or lower "
                         f"bljust.outer_epochs / joint_steps / explore_steps / first_explore_steps")
    return ([f"bljust.outer_epochs={p.outer_epochs}", f"bljust.explore_steps={p.explore}",
             f"bljust.first_explore_steps={p.explore_0}", f"bljust.joint_steps={p.joint}",
             f"bljust.finetune_steps={n3}", f"train.max_steps={budget}"],
            p.explore_total + p.outer_epochs * p.joint + n3)


def training_settings(cfg: Config, method: str | None = None) -> dict:
    """The config values that differ from the package defaults, minus the evaluation-only
    ``decode`` section and (given ``method``) the other methods' sections: what a run's key
    hashes. Only non-defaults, so a config field added in a later version (at a default that
    keeps the old behaviour) does not orphan finished runs. A change of a default's value must
    bump KEY_VERSION instead."""
    def diff(value, default):
        if isinstance(value, dict) and isinstance(default, dict):
            out = {k: d for k, v in value.items() if (d := diff(v, default.get(k))) is not None}
            return out or None
        return None if value == default else value

    current, defaults = to_dict(cfg), to_dict(Config())
    current.pop("decode")
    if method is not None:
        for section in _METHOD_ONLY - set(METHOD_SECTIONS[method]):
            current.pop(section, None)
    return diff(current, defaults) or {}


def plan_jobs(cfg: Config, data: Path, out: Path, methods: list[str], seeds: list[int], budget: int,
              decode_key: str = "") -> list[Job]:
    lab, unl = stream_batches(cfg, data)
    jobs = []
    for seed in seeds:  # seed-major: the first seed of every method finishes first
        for method in methods:
            settings, steps = method_settings(method, cfg, budget, lab, unl)
            settings = [f"train.seed={seed}", *settings]
            base = json.dumps(training_settings(cfg, method), sort_keys=True)
            key = hashlib.sha256(json.dumps([KEY_VERSION, base, str(data.resolve()), method, settings]).encode()
                                 ).hexdigest()[:16]
            jobs.append(Job(method, seed, out / "runs" / f"{method}-seed{seed}", settings, steps, budget, key,
                            decode_key))
    return jobs


# ------------------------------------------------------------------ one job (a subprocess)


def run_job(spec_path: Path) -> int:
    """Train (or resume) one method × seed, evaluate best.pt on dev and test, write record.json.

    A run whose record.json has the same training key was trained already (only the decoding
    settings changed): it is re-evaluated and keeps its training costs.
    """
    import torch

    from bljust.methods import METHODS

    spec = json.loads(spec_path.read_text())
    run_dir, data = Path(spec["run_dir"]), Path(spec["data"])
    torch.set_num_threads(spec["threads"])
    cfg = load_config(spec["config"], [*spec["settings"], f"train.num_threads={spec['threads']}",
                                       f"train.device={spec['device']}"])
    old = _read_json(run_dir / "record.json")
    if old is not None and old.get("key") == spec["key"] and (run_dir / "best.pt").is_file():
        log.info("%s: trained earlier; re-evaluating it with the new decoding settings", run_dir)
        costs = {k: old[k] for k in COST_KEYS}
    else:
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*.pt"))
        summary = METHODS[spec["method"]](cfg, data, run_dir, resume=resume)
        costs = {**run_costs(summary, spec["budget"]),
                 "unlabeled_passes": summary["unlabeled_hours_processed"] * 3600 / unlabeled_seconds(data)}
    device = "cuda" if spec["device"].startswith("cuda") else "cpu"
    record = {
        "method": spec["method"], "seed": spec["seed"], "key": spec["key"], "decode_key": spec.get("decode_key", ""),
        "settings": spec["settings"], **costs,
        **evaluate_run(run_dir, data, device, spec.get("lm"), cfg),
    }
    tmp = run_dir / "record.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(run_dir / "record.json")  # atomic: a killed job never leaves a half record
    return 0


COST_KEYS = ("steps", "budget", "batch_passes", "labeled_batches", "unlabeled_batches", "train_seconds",
             "audio_hours", "labeled_hours", "unlabeled_hours", "labeled_passes", "parameters",
             "inference_parameters", "best_step", "unlabeled_passes")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def unlabeled_seconds(data: Path) -> float:
    from bljust.data.manifests import load_split

    return max(sum(c.duration for c in load_split(data, "unlabeled")), 1e-9)


def run_costs(summary: dict, budget: int) -> dict:
    lab_h, unl_h = summary["labeled_hours_processed"], summary["unlabeled_hours_processed"]
    return {
        "steps": summary["steps"], "budget": budget,
        "batch_passes": summary["labeled_batches"] + summary["unlabeled_batches"],
        "labeled_batches": summary["labeled_batches"], "unlabeled_batches": summary["unlabeled_batches"],
        "train_seconds": summary["train_seconds"], "audio_hours": lab_h + unl_h, "labeled_hours": lab_h,
        "unlabeled_hours": unl_h, "labeled_passes": summary["labeled_passes"],
        "parameters": summary["parameters"], "inference_parameters": summary["inference_parameters"],
        "best_step": summary["best_step"],
    }


def scores_with_groups(decoded: dict, cuts) -> dict:
    """Corpus WER/CER of decoded hypotheses, overall and per voice family when the corpus has them."""
    from bljust.data.manifests import cut_group
    from bljust.evaluate import error_rates

    ids = [i for i, r in decoded["refs"].items() if r]
    overall = error_rates([decoded["refs"][i] for i in ids], [decoded["hyps"][i] for i in ids])
    by_group: dict[str, list[str]] = {}
    for cut in cuts:
        if (g := cut_group(cut)) is not None and decoded["refs"].get(cut.id):
            by_group.setdefault(g, []).append(cut.id)
    groups = {}
    for g, members in sorted(by_group.items()):
        r = error_rates([decoded["refs"][i] for i in members], [decoded["hyps"][i] for i in members])
        groups[g] = {"wer": r["wer"], "cer": r["cer"], "num_utterances": r["num_utterances"]}
    return {"wer": overall["wer"], "cer": overall["cer"], "num_utterances": overall["num_utterances"],
            "num_words": overall["num_words"], "num_chars": overall["num_chars"], "groups": groups}


def evaluate_run(run_dir: Path, data: Path, device: str, lm: str | None, cfg: Config) -> dict:
    """best.pt on dev and test: greedy scores, and with an LM also the beam search's, its weight and
    word score chosen on dev (the grid is kept in the record) and then applied to test once."""
    import torch

    from bljust.data.manifests import load_split
    from bljust.evaluate import decode_cuts, lm_decode, tune_lm, write_hypotheses
    from bljust.inference import load_trained

    model, tokenizer, _ = load_trained(run_dir, device)
    out, decoded = {}, {}
    for split in ("dev", "test"):
        cuts = load_split(data, split).to_eager()
        d = decode_cuts(model, tokenizer, cuts, torch.device(device), keep_emissions=lm is not None,
                        amp=cfg.train.amp)
        write_hypotheses(run_dir / "eval" / f"{split}.hyp.txt", d)
        out[split] = {**scores_with_groups(d, cuts), "loss": d["loss"]}
        decoded[split] = (d, cuts)
    if lm:
        from bljust.lm import WordDecoder

        decoder = WordDecoder(tokenizer, lm, beam_size=cfg.decode.beam_size)
        tuned = tune_lm(decoder, decoded["dev"][0], cfg.decode.lm_weights, cfg.decode.word_scores)
        for split, (d, cuts) in decoded.items():
            dl = lm_decode(decoder, d, tuned["lm_weight"], tuned["word_score"])
            write_hypotheses(run_dir / "eval" / f"{split}.lm.hyp.txt", dl)
            out[split]["lm"] = {**scores_with_groups(dl, cuts), "lm_weight": tuned["lm_weight"],
                                "word_score": tuned["word_score"]}
        out["dev"]["lm"]["grid"] = tuned["grid"]
    return out


def prepare_lm(cfg: Config, data: Path, out: Path) -> tuple[str | None, str]:
    """The ARPA file runs are decoded with (None: greedy only) and the key of the decoding settings.

    ``decode.lm`` names one; otherwise a data directory with ``lm_text.txt`` gets an n-gram LM
    estimated into ``OUT/lm/``, re-estimated only when the text or the order changed.
    """
    from bljust.lm import read_text, write_arpa

    if cfg.decode.lm:
        arpa = Path(cfg.decode.lm).resolve()
        if not arpa.is_file():
            raise FileNotFoundError(f"decode.lm: {arpa} not found")
    elif (data / "lm_text.txt").is_file():
        text = data / "lm_text.txt"
        arpa = (out / "lm" / f"{cfg.decode.lm_order}gram.arpa").resolve()
        text_hash = hashlib.sha256(text.read_bytes()).hexdigest()[:16]
        stamp = arpa.with_suffix(".json")
        if not (arpa.is_file() and (_read_json(stamp) or {}).get("text_sha256") == text_hash):
            t0 = time.time()
            counts = write_arpa(read_text(text), arpa, cfg.decode.lm_order)
            stamp.write_text(json.dumps({"text": str(text), "text_sha256": text_hash, "ngrams": counts}))
            log.info("LM: %d-gram from %s (%s n-grams) in %.1f s", cfg.decode.lm_order, text,
                     "/".join(str(c) for c in counts.values()), time.time() - t0)
    else:
        return None, ""
    h = hashlib.sha256(arpa.read_bytes())
    h.update(json.dumps([cfg.decode.beam_size, cfg.decode.lm_weights, cfg.decode.word_scores]).encode())
    return str(arpa), h.hexdigest()[:16]


# ------------------------------------------------------------------ scheduling


def _devices(device: str) -> list[str]:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device.startswith("cuda"):
        return [device]
    return ["cpu"]


def _progress(job: Job) -> tuple[int, str]:
    """(steps done, phase) of a running job, from the tail of its metrics.jsonl."""
    path = job.run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0, "starting"
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0, "starting"
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("kind") == "train":
            return int(row["step"]), row.get("phase", "train")
    return 0, "starting"


def cpu_threads(cores: int, parallel: int, jobs_left: int) -> int:
    """Threads for a CPU job started while ``jobs_left`` jobs (itself included) remain to run or are running."""
    return max(1, cores // min(parallel, jobs_left))


def may_start(running: int, waiting: int, parallel: int, on_gpu: bool) -> bool:
    """Whether one more job may start now, with ``running`` jobs running and ``waiting`` to start.

    One job per core (or GPU), except for the last wave on CPU: when the jobs left fit in 1.5
    jobs per core, they all start at once on one thread each and share the cores. The
    alternatives leave a core idle at the end or hand it to the last job as a second thread,
    which bought only 1.27-1.33× (its data-loader worker already uses part of that core),
    while three 1-thread jobs on 2 cores kept 95 % of two jobs' throughput (measured on the
    demo's 2-core machine). It also keeps every job at one thread, so a run's arithmetic does
    not depend on where in the queue it ran.
    """
    if waiting == 0:
        return False
    if running < parallel:
        return True
    return not on_gpu and running + waiting <= parallel + parallel // 2


def run_jobs(jobs: list[Job], spec_common: dict, parallel: int, devices: list[str], cores: int,
             show_progress: bool = True) -> list[tuple[Job, int]]:
    """Run the unfinished jobs, ``parallel`` at a time (see ``may_start``); returns the failed ones with their exit codes."""
    from tqdm import tqdm

    todo = []
    for j in jobs:
        if j.finished():
            log.info("%s: finished earlier (%s), reused", j.name, j.record_path)
        else:
            if j.trained():
                log.info("%s: trained earlier; re-evaluating it (the decoding settings changed)", j.name)
            todo.append(j)
    total = sum(j.budget for j in jobs)
    done_passes = sum(j.budget for j in jobs if j not in todo)
    bar = tqdm(total=total, initial=done_passes, unit="pass", desc="compare", disable=not show_progress,
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)
    on_gpu = devices[0] != "cpu"
    free_devices = list(devices) if on_gpu else []
    running: list[Job] = []
    failed: list[tuple[Job, int]] = []
    try:
        while todo or running:
            while may_start(len(running), len(todo), parallel, on_gpu):
                job = todo.pop(0)
                # Cores left idle because fewer jobs than cores remain go to them as threads.
                job.threads = 1 if on_gpu else cpu_threads(cores, parallel, len(running) + 1 + len(todo))
                job.device = free_devices.pop(0) if on_gpu else "cpu"
                _start(job, spec_common)
                running.append(job)
            time.sleep(1.0)
            states, running_passes = [], 0.0
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    step, phase = _progress(job)
                    running_passes += job.budget * min(step / max(job.total_steps, 1), 1.0)
                    states.append(f"{job.name} {phase} {step}/{job.total_steps}")
                    continue
                running.remove(job)
                if on_gpu:
                    free_devices.append(job.device)
                if code == 0 and job.finished():
                    done_passes += job.budget
                    log.info("%s: done", job.name)
                else:
                    failed.append((job, code))
                    log.error("%s: failed with exit code %s; see %s", job.name, code, job.log_path)
            bar.n = min(total, int(done_passes + running_passes))
            bar.set_postfix_str("; ".join(states), refresh=False)
            bar.refresh()
    finally:  # on Ctrl-C or an error, stop the children: their checkpoints let a re-run resume them
        for job in running:
            if job.proc.poll() is None:
                job.proc.terminate()
                job.proc.wait()
        bar.close()
    return failed


def check_reusable(jobs: list[Job]) -> None:
    """Refuse to mix runs of other settings into this comparison (they would be resumed or reported)."""
    for j in jobs:
        spec = j.run_dir / "job.json"
        if spec.is_file() and json.loads(spec.read_text()).get("key") != j.key:
            raise ValueError(f"{j.run_dir} holds a run with other settings (config, data, budget or seed changed); "
                             f"use a new --out directory or delete that run")


def _start(job: Job, spec_common: dict) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
    if job.device != "cpu":  # the job sees its one GPU as cuda:0
        env["CUDA_VISIBLE_DEVICES"] = job.device.split(":")[1]
    spec = {**spec_common, "method": job.method, "seed": job.seed, "run_dir": str(job.run_dir),
            "settings": job.settings, "key": job.key, "budget": job.budget, "threads": job.threads,
            "device": "cpu" if job.device == "cpu" else "cuda"}
    job.run_dir.mkdir(parents=True, exist_ok=True)
    (job.run_dir / "job.json").write_text(json.dumps(spec, indent=2))
    with open(job.log_path, "ab") as logf:
        job.proc = subprocess.Popen([sys.executable, "-m", "bljust.compare", "job", str(job.run_dir / "job.json")],
                                    stdout=logf, stderr=subprocess.STDOUT, env=env)
    log.info("%s: started (%d thread(s), %s; log %s)", job.name, job.threads, job.device, job.log_path)


# ------------------------------------------------------------------ the command


def corpus_stats(data: Path) -> dict:
    """Hours, utterances and speakers per split (from the synthesiser's summary when present)."""
    from bljust.data.manifests import SPLITS, cut_speaker, has_split, load_split

    out = {}
    for split in SPLITS:
        if not has_split(data, split):
            continue
        cuts = load_split(data, split)
        out[split] = {"hours": round(sum(c.duration for c in cuts) / 3600, 4), "utterances": len(cuts),
                      "speakers": len({cut_speaker(c) for c in cuts})}
    return out


def machine_info(parallel: int, devices: list[str], cores: int) -> dict:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": cores, "torch": torch.__version__, "device": devices[0].split(":")[0],
            "gpus": len(devices) if devices[0] != "cpu" else 0, "parallel_jobs": parallel,
            "threads_per_job": 1 if devices[0] != "cpu" else max(1, cores // parallel), "python": platform.python_version()}


def compare(data: str | Path, out: str | Path, *, methods: list[str] | None = None, seeds: list[int] | None = None,
            config: str | Path | None = None, overrides: list[str] | None = None, budget: int | None = None,
            jobs: int | None = None, device: str = "auto", progress: bool = True) -> dict:
    """Train and evaluate every method × seed, write results.json and the report; returns the results."""
    from bljust.data.manifests import SPLITS, has_split
    from bljust.evaluate import NORMALIZATION

    data, out = Path(data).resolve(), Path(out)
    missing = [s for s in SPLITS if not has_split(data, s)]
    if missing:
        raise FileNotFoundError(f"{data} lacks the split(s) {', '.join(missing)}; compare needs labeled, unlabeled, "
                                f"dev and test (bljust corpus synth / bljust corpus import)")
    methods = list(methods or ALL_METHODS)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    seeds = list(seeds if seeds is not None else [0])
    cfg = load_config(config, overrides or [])
    budget = budget or cfg.train.max_steps
    out.mkdir(parents=True, exist_ok=True)
    lm, decode_key = prepare_lm(cfg, data, out)
    job_list = plan_jobs(cfg, data, out, methods, seeds, budget, decode_key)
    check_reusable(job_list)
    dump_config(cfg, out / "config.yaml")

    devices = _devices(device)
    # the cores this process may use (taskset, a cgroup cpuset or a batch scheduler's allocation)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parallel = jobs or (len(devices) if devices[0] != "cpu" else cores)
    log.info("compare: %d job(s) (%s × seeds %s), budget %d batch passes each, %d at a time on %s",
             len(job_list), ",".join(methods), seeds, budget, parallel, ",".join(devices))
    started = time.time()
    failed = run_jobs(job_list, {"config": str(out / "config.yaml"), "data": str(data), "lm": lm,
                                 "decode_key": decode_key}, parallel, devices, cores, show_progress=progress)

    runs = []
    for job in job_list:
        if job.finished():
            record = json.loads(job.record_path.read_text())
            record["run_dir"] = str(job.run_dir.relative_to(out))
            runs.append(record)
    results = {
        "schema": SCHEMA, "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": str(data), "corpus": corpus_stats(data), "config_file": str(config) if config else None,
        "overrides": list(overrides or []),
        "budget": {"unit": "batch_passes", "value": budget, "max_duration": cfg.data.max_duration,
                   "rule": RULE.format(max_duration=cfg.data.max_duration)},
        "methods": methods, "seeds": seeds, "machine": machine_info(parallel, devices, cores),
        "normalization": NORMALIZATION, "decoding": "greedy CTC" + (
            f"; and a lexicon beam search (beam {cfg.decode.beam_size}) with the word {lm_order_of(lm)}-gram LM "
            f"{lm}, whose weight and word score are chosen per run on dev WER" if lm else ""),
        "lm": lm,
        "selection": f"the checkpoint with the best dev {cfg.train.best_metric.upper()} (validated every "
                     f"{cfg.train.valid_every} steps and at the end); test evaluated once",
        "wall_seconds_this_invocation": time.time() - started,
        "runs": runs,
        "failed": [{"method": j.method, "seed": j.seed, "exit_code": c, "log": str(j.log_path)}
                   for j, c in failed],
    }
    validate_results(results)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out / "results.json")
    if runs:
        from bljust.report import write_report

        write_report(out, results)
    return results


def lm_order_of(arpa: str | None) -> int:
    """The highest order an ARPA file's header declares."""
    order = 0
    with open(arpa, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ngram "):
                order = max(order, int(line.split()[1].split("=")[0]))
            elif line.startswith("\\1-grams"):
                break
    return order


RUN_KEYS = {"method": str, "seed": int, "run_dir": str, "settings": list, "steps": int, "budget": int,
            "batch_passes": int, "labeled_batches": int, "unlabeled_batches": int, "train_seconds": float,
            "audio_hours": float, "labeled_hours": float, "unlabeled_hours": float, "labeled_passes": float,
            "unlabeled_passes": float, "parameters": int, "inference_parameters": int, "best_step": int,
            "dev": dict, "test": dict}


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first key of a results.json that is missing or malformed."""
    def need(obj: dict, key: str, tp: type, where: str) -> None:
        if key not in obj:
            raise ValueError(f"results.json: {where} lacks '{key}'")
        ok = isinstance(obj[key], (int, float)) if tp is float else isinstance(obj[key], tp)
        if not ok or (tp is int and isinstance(obj[key], bool)):
            raise ValueError(f"results.json: {where}.{key} should be {tp.__name__}, not {obj[key]!r}")

    if results.get("schema") != SCHEMA:
        raise ValueError(f"results.json: schema is {results.get('schema')!r}, expected {SCHEMA!r}")
    for key, tp in (("data", str), ("corpus", dict), ("budget", dict), ("methods", list), ("seeds", list),
                    ("machine", dict), ("runs", list), ("failed", list)):
        need(results, key, tp, "top level")
    need(results["budget"], "value", int, "budget")
    need(results["budget"], "rule", str, "budget")
    for i, run in enumerate(results["runs"]):
        where = f"runs[{i}]"
        for key, tp in RUN_KEYS.items():
            need(run, key, tp, where)
        if run["method"] not in ALL_METHODS:
            raise ValueError(f"results.json: {where}.method '{run['method']}' is not a known method")
        if run["batch_passes"] > run["budget"]:
            raise ValueError(f"results.json: {where} used {run['batch_passes']} batch passes, over its budget")
        for split in ("dev", "test"):
            for key in ("wer", "cer"):
                need(run[split], key, float, f"{where}.{split}")
                if not 0 <= run[split][key] < 10:
                    raise ValueError(f"results.json: {where}.{split}.{key} = {run[split][key]} is not a rate")
            need(run[split], "groups", dict, f"{where}.{split}")
            if "lm" in run[split]:
                for key in ("wer", "cer", "lm_weight", "word_score"):
                    need(run[split]["lm"], key, float, f"{where}.{split}.lm")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "job":
        print("usage: python -m bljust.compare job JOB.json  (internal; use 'bljust compare')", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_job(Path(argv[1]))


if __name__ == "__main__":
    sys.exit(main())
