"""The jobs of ``bljust compare``: one (method, seed) training run and its evaluation each, then a
linear probe of each trained encoder and of one random-init encoder.

A job is a ``python -m bljust.compare job JOB.json`` subprocess (``run_job``) that trains, resuming
from its checkpoints when a run was interrupted, selects ``best.pt`` on dev, evaluates it once on dev,
test and the optional scored splits the corpus has (``OPTIONAL_EVAL_SPLITS``), and writes ``record.json``
in its run directory. Its key hashes everything that decides the trained model; a finished job is reused
on a re-run when the key matches. A probe job (``kind`` "probe", ``bljust.probe``) reads a finished run's
model and writes its own ``record.json`` under ``probes/``, keyed by the run's key and the probe's settings.
Jobs run in parallel: one single-threaded process per core on CPU (the last wave may share the cores, see
``may_start``), one process per GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bljust.checkpoint import atomic_write_text
from bljust.compare.budget import TOPLINE, method_settings, stream_batches, train_method
from bljust.config import Config, apply_overrides, config_from_dict, load_config, to_dict
from bljust.methods import METHOD_SECTIONS

log = logging.getLogger("bljust.compare")

KEY_VERSION = 6  # bump when a config default or the training code changes what a run produces
PROBE_KEY_VERSION = 1  # bump when the probe's code changes what it measures
RANDOM_INIT = "random-init"
"""The method name of the probe of a randomly initialised encoder (the floor of the probe table)."""
EVAL_SPLITS = ("dev", "test")
"""The splits every run is evaluated on; dev first (the LM's weight and word score are chosen there)."""
OPTIONAL_EVAL_SPLITS = ("test_unseen", "dev_other", "test_other")
"""The scored ones of ``bljust.data.manifests.OPTIONAL_SPLITS``, evaluated after dev and test when the corpus has
them: test_unseen (voices in no other split), and LibriSpeech's harder dev_other and test_other. They are
reported only: nothing (best checkpoint, LM weight and word score) is ever chosen on them, dev_other included."""
_METHOD_ONLY = {section for sections in METHOD_SECTIONS.values() for section in sections}


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
    """The budget of the rule (batch passes, or supervised updates)."""
    key: str = ""
    """Hash of everything that determines the trained model; a finished run is reused only when it matches."""
    decode_key: str = ""
    """Hash of the LM and decoding settings; when only this changed, the run is re-evaluated, not retrained."""
    rule: str = "passes"
    """The budget rule (``bljust.compare.budget``)."""
    kind: str = "train"
    """``train`` (train and evaluate a run) or ``probe`` (linear-probe the encoder of the run in ``source``)."""
    source: Path | None = None
    """A probe job's run directory whose model it probes (for the random-init probe: whose architecture,
    units and feature statistics it borrows)."""
    probe: dict | None = None
    """A probe job's ``bljust.probe.ProbeConfig``, as a dict."""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    threads: int = 1
    device: str = "cpu"

    @property
    def name(self) -> str:
        return ("probe-" if self.kind == "probe" else "") + f"{self.method}-seed{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir.parent / f"{self.name}.log"

    @property
    def record_path(self) -> Path:
        return self.run_dir / "record.json"

    def finished(self) -> bool:
        record = read_json(self.record_path) or {}
        return record.get("key") == self.key and record.get("decode_key", "") == self.decode_key

    def trained(self) -> bool:
        """Trained and evaluated under other decoding settings: only the evaluation is redone."""
        return (read_json(self.record_path) or {}).get("key") == self.key and (self.run_dir / "best.pt").is_file()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: dict) -> None:
    """Written whole or not at all: a killed process never leaves half a file."""
    atomic_write_text(path, json.dumps(obj, indent=2))


# ------------------------------------------------------------------ run keys


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


def uses_lm(cfg: Config, method: str) -> bool:
    """Whether ``method`` trains with the word LM (PL's pseudo-labels from the beam search)."""
    return method == "pl" and cfg.pl.decode == "lm"


def run_key(cfg: Config, data: Path, method: str, settings: list[str], rule: str, lm_sha256: str = "") -> str:
    """Hash of what decides a run's model: the non-default training settings its method reads, the
    data directory, the job's settings, the budget rule, and for a method that trains with the LM
    the ARPA file's hash and the decoding grid (which the decode section otherwise keeps out)."""
    parts = [KEY_VERSION, json.dumps(training_settings(cfg, train_method(method)), sort_keys=True),
             str(data.resolve()), method, settings, rule]
    if uses_lm(cfg, method):
        d = cfg.decode
        parts.append([lm_sha256, d.beam_size, list(d.lm_weights), list(d.word_scores)])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def eval_splits(data: Path) -> tuple[str, ...]:
    """The splits a comparison evaluates every run on: dev, test, and those of OPTIONAL_EVAL_SPLITS that ``data``
    has (in that order, so that a corpus with test_unseen alone keeps its runs' decode keys)."""
    from bljust.data.manifests import has_split

    return EVAL_SPLITS + tuple(s for s in OPTIONAL_EVAL_SPLITS if has_split(data, s))


def plan_jobs(cfg: Config, data: Path, out: Path, methods: list[str], seeds: list[int], budget: int,
              rule: str = "passes", lm=None) -> list[Job]:
    """One job per seed × method (seed-major: the first seed of every method finishes first); ``lm`` is
    the comparison's ``bljust.lm.PreparedLM`` (None: no LM)."""
    lm_path, lm_sha, decode_key = (lm.path, lm.sha256, lm.decode_key) if lm is not None else (None, "", "")
    if (splits := eval_splits(data)) != EVAL_SPLITS:  # a corpus that gained a scored split re-scores, not retrains
        decode_key = hashlib.sha256(json.dumps([decode_key, splits]).encode()).hexdigest()[:16]
    if cfg.model.loss == "rnnt":  # so does a change of the transducer's beam (CTC runs' keys stay as they were)
        decode_key = hashlib.sha256(json.dumps([decode_key, "rnnt_beam", cfg.decode.rnnt_beam]).encode()
                                    ).hexdigest()[:16]
    jobs = []
    for seed in seeds:
        # one pass of each stream of this seed's runs: BL-JUST's plan (N2, N1 by default) depends on them
        lab, unl = stream_batches(cfg, data, seed) if any(train_method(m) == "bljust" for m in methods) else (0, 0)
        for method in methods:
            settings, steps = method_settings(method, cfg, budget, lab, unl, rule)
            settings = [f"train.seed={seed}", *settings]
            if uses_lm(cfg, method):
                if not lm_path:
                    raise ValueError("pl.decode=lm needs a word LM: set decode.lm to an ARPA file (bljust lm), or "
                                     "use a data directory with lm_text.txt")
                settings.append(f"decode.lm={lm_path}")
            key = run_key(cfg, data, method, settings, rule, lm_sha)
            jobs.append(Job(method, seed, out / "runs" / f"{method}-seed{seed}", settings, steps, budget, key,
                            decode_key, rule))
    return jobs


def probe_key(source_key: str, probe: dict) -> str:
    """Hash of what decides a probe: the probed run's key (its trained model) and the probe's settings."""
    return hashlib.sha256(json.dumps([PROBE_KEY_VERSION, source_key, probe], sort_keys=True).encode()).hexdigest()[:16]


def run_probe_key(source_key: str) -> str:
    """The key of the linear probe that compare runs on a trained run (the default ``ProbeConfig``)."""
    from bljust.probe import ProbeConfig

    return probe_key(source_key, dataclasses.asdict(ProbeConfig()))


def plan_probes(jobs: list[Job], out: Path) -> list[Job]:
    """A probe job for every finished training job, and one of a random-init encoder of the architecture,
    units and feature statistics of the first finished run that trained on the labeled split alone
    (supervised when it ran; not the topline, whose units and statistics come from more data)."""
    from bljust.probe import ProbeConfig

    cfg = ProbeConfig()
    finished = [j for j in jobs if j.kind == "train" and j.finished()]
    probes = []
    for j in finished:
        settings = dataclasses.asdict(cfg)
        probes.append(Job(j.method, j.seed, _probe_dir(j.run_dir), [], cfg.steps, j.budget,
                          run_probe_key(j.key), rule=j.rule, kind="probe", source=j.run_dir, probe=settings))
    base = sorted((j for j in finished if j.method != TOPLINE), key=lambda j: j.method != "supervised")
    if base:
        settings = dataclasses.asdict(dataclasses.replace(cfg, random_init=True))
        probes.append(Job(RANDOM_INIT, cfg.seed, out / "probes" / RANDOM_INIT, [], cfg.steps, base[0].budget,
                          probe_key(base[0].key, settings), rule=base[0].rule, kind="probe", source=base[0].run_dir,
                          probe=settings))
    return probes


def check_reusable(jobs: list[Job]) -> None:
    """Refuse to mix runs of other settings into this comparison (they would be resumed or reported)."""
    for j in jobs:
        spec = read_json(j.run_dir / "job.json")
        if spec is not None and spec.get("key") != j.key:
            raise ValueError(f"{j.run_dir} holds a run with other settings (config, data, budget, budget rule or "
                             f"seed changed); use a new --out directory or delete that run")


def adopt_runs(jobs: list[Job], cfg: Config, data: Path, lm, sources: list[Path]) -> list[Job]:
    """Copy into this comparison the finished runs of earlier comparisons or sweep points (``compare --reuse-from
    DIR``) that trained the model a job would train, instead of training it again; returns the adopted jobs.

    A run qualifies when it trained with the same settings (``same_model``): a sweep's chosen point at seed 0 is
    the benchmark's seed 0 run, and supervised, PL and the topline, which make the same steps under both budget
    rules, are the other rule's runs too (BL-JUST, PT+FT and JUST plan in the rule's unit, so theirs differ). The
    copy's record and job spec get this comparison's key and rule; its linear probe comes along when its key
    matches. A run kept without its model file is adopted only when nothing here needs it (``_usable``). A run
    this comparison has started itself (checkpoints, or a record of its own) is never replaced."""
    missing = [str(d) for d in sources if not (d / "runs").is_dir()]
    if missing:
        raise FileNotFoundError(f"--reuse-from {', '.join(missing)}: not a comparison directory (no runs/ in it)")
    lm_sha = lm.sha256 if lm is not None else ""
    adopted, untrained = [], [j for j in jobs if j.kind == "train" and not j.trained() and not j.finished()]
    for job in untrained:
        if (job.run_dir / "checkpoints").is_dir():
            continue
        candidates = (d / "runs" / job.run_dir.name for d in sources)
        source = next((c for c in candidates if same_model(job, cfg, data, lm_sha, c) and _usable(job, c)), None)
        if source is None:
            continue
        record = read_json(source / "record.json")
        _copy_run(source, job.run_dir, {"key": job.key, "budget_rule": job.rule, "adopted_from": str(source)})
        if (source.parent / f"{job.name}.log").is_file():
            shutil.copyfile(source.parent / f"{job.name}.log", job.log_path)
        if _probe_of(source) is not None:
            _copy_run(_probe_dir(source), _probe_dir(job.run_dir), {"key": run_probe_key(job.key)})
        log.info("%s: the same model trained in %s (%s rule), adopted", job.name, source, record.get("budget_rule"))
        adopted.append(job)
    if untrained:
        log.info("compare: %d of %d run(s) not trained here adopted from %s", len(adopted), len(untrained),
                 ", ".join(map(str, sources)))
    return adopted


def _probe_dir(run_dir: Path) -> Path:
    """Where a comparison keeps the probe of its run ``run_dir`` (``plan_probes``)."""
    return run_dir.parent.parent / "probes" / run_dir.name


def _probe_of(source: Path) -> dict | None:
    """The finished probe of the finished run in ``source``, if its comparison made one."""
    record, probe = read_json(source / "record.json") or {}, read_json(_probe_dir(source) / "record.json") or {}
    return probe if "key" in record and probe.get("key") == run_probe_key(record["key"]) else None


def _usable(job: Job, source: Path) -> bool:
    """Whether a copy of ``source`` is a finished run of ``job``: it has its model file, or it needs none (its
    evaluation has ``job``'s decoding settings and its probe comes along). A run archived without its model
    files (benchmarks/issue14/bench.sh) is adopted that way."""
    if (source / "best.pt").is_file():
        return True
    return (read_json(source / "record.json") or {}).get("decode_key", "") == job.decode_key \
        and _probe_of(source) is not None


RUNNER_SETTINGS = ("device", "num_threads")
"""``train`` values a job's runner picks per process, not part of the model a run trains."""


def same_model(job: Job, cfg: Config, data: Path, lm_sha256: str, source: Path) -> bool:
    """Whether the finished run in ``source`` trained the model ``job`` would train: same method and data, and its
    job's settings applied to its comparison's config (``config.yaml`` of the comparison, or of the sweep above a
    point) give the training settings ``job.settings`` give applied to ``cfg`` (less ``RUNNER_SETTINGS``), whatever
    the recipe files or the budget rule. Its key must also be one this code gives its config and settings with
    this comparison's LM: so it trained under the current ``KEY_VERSION``, and, when its method trains with the
    LM, with this LM (and the decoding grid is compared too)."""
    spec, record = read_json(source / "job.json"), read_json(source / "record.json")
    if not (spec and record and record.get("key") == spec.get("key")):
        return False
    method = train_method(job.method)
    if spec.get("method") != job.method or Path(spec.get("data", "")).resolve() != data.resolve():
        return False
    base = next((d / "config.yaml" for d in source.parents[1:4:2] if (d / "config.yaml").is_file()), None)
    if base is None:
        return False
    try:
        settings = spec["settings"]
        # a sweep applies its point's settings (the leading ones) to the config before keying the rest
        if not any(run_key(load_config(base, settings[:n]), data, job.method, settings[n:], spec["budget_rule"],
                           lm_sha256) == spec["key"] for n in range(len(settings) + 1)):
            return False
        theirs = load_config(base, settings)
    except (KeyError, TypeError, ValueError):  # ConfigError is a ValueError
        return False
    ours = config_from_dict(apply_overrides(to_dict(cfg), job.settings))

    def model(c: Config) -> dict:
        settings = training_settings(c, method)
        train = {k: v for k, v in settings.pop("train", {}).items() if k not in RUNNER_SETTINGS}
        decode = [c.decode.beam_size, list(c.decode.lm_weights), list(c.decode.word_scores)]
        return {**settings, "train": train, "decode": decode if uses_lm(c, method) else None}

    return model(theirs) == model(ours)


def _copy_run(source: Path, dest: Path, record: dict) -> None:
    """``source``'s files copied into ``dest`` (not hard-linked: a re-evaluation rewrites the hypothesis files in
    place), then ``record`` merged into its record.json and job.json; ``dest`` appears whole or not at all."""
    tmp = dest.with_name(dest.name + ".adopting")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    for name in ("job.json", "record.json"):
        if (spec := read_json(tmp / name)) is not None:
            write_json(tmp / name, {**spec, **record})
    shutil.rmtree(dest, ignore_errors=True)  # a directory without checkpoints or a record of this comparison's
    os.replace(tmp, dest)


# ------------------------------------------------------------------ one job (a subprocess)


def run_probe_job(spec: dict) -> int:
    """Probe the encoder of the run in ``spec["source"]`` (``bljust.probe``), write record.json."""
    from bljust.probe import ProbeConfig, probe_run

    result = probe_run(spec["source"], spec["data"], ProbeConfig(**spec["probe"]),
                       "cuda" if spec["device"].startswith("cuda") else "cpu")
    write_json(Path(spec["run_dir"]) / "record.json", {
        "method": spec["method"], "seed": spec["seed"], "key": spec["key"], "decode_key": spec.get("decode_key", ""),
        **result})
    return 0


def run_job(spec_path: Path) -> int:
    """Train (or resume) one method × seed, evaluate best.pt on the evaluation splits, write record.json; or
    run a probe job (``run_probe_job``).

    A run whose record.json has the same training key was trained already (only the decoding
    settings, or the splits evaluated, changed): it is re-evaluated and keeps its training costs.
    """
    import torch

    from bljust.compare.results import (COST_KEYS, TRAINED_ON_KEYS, code_version, processor_name, run_costs,
                                        unlabeled_seconds)
    from bljust.evaluate import evaluate_run
    from bljust.methods import METHODS

    spec = json.loads(spec_path.read_text())
    run_dir, data = Path(spec["run_dir"]), Path(spec["data"])
    torch.set_num_threads(spec["threads"])
    if spec.get("kind", "train") == "probe":
        return run_probe_job(spec)
    cfg = load_config(spec["config"], [*spec["settings"], f"train.num_threads={spec['threads']}",
                                       f"train.device={spec['device']}"])
    old = read_json(run_dir / "record.json")
    if old is not None and old.get("key") == spec["key"] and (run_dir / "best.pt").is_file():
        log.info("%s: trained earlier; re-evaluating it with the new decoding settings", run_dir)
        costs = {k: old[k] for k in COST_KEYS} | {k: old[k] for k in TRAINED_ON_KEYS if k in old}
        code = old.get("code")  # the code that trained it (records before it was kept have none)
    else:
        resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step-*.pt"))
        # Read before training: the checkout may move on during a long run, and this process trains with the
        # code it imported at its start. A run resumed across commits names the code of its last process.
        code = code_version()
        summary = METHODS[train_method(spec["method"])](cfg, data, run_dir, resume=resume)
        costs = run_costs(summary, spec["budget"], unlabeled_seconds(data))
        costs["processor"] = processor_name(spec["device"])
    device = "cuda" if spec["device"].startswith("cuda") else "cpu"
    d = cfg.decode
    scores = evaluate_run(run_dir, data, tuple(spec.get("eval_splits", EVAL_SPLITS)), device, lm=spec.get("lm"),
                          lm_weights=d.lm_weights, word_scores=d.word_scores, beam_size=d.beam_size,
                          rnnt_beam=d.rnnt_beam)
    write_json(run_dir / "record.json", {
        "method": spec["method"], "seed": spec["seed"], "key": spec["key"], "decode_key": spec.get("decode_key", ""),
        "budget_rule": spec["budget_rule"], "settings": spec["settings"], "code": code, **costs, **scores})
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bljust.compare job JOB.json``: the entry point of a job's subprocess."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "job":
        print("usage: python -m bljust.compare job JOB.json  (internal; use 'bljust compare')", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    return run_job(Path(argv[1]))


def start_job(job: Job, spec_common: dict) -> None:
    """Write the job's ``job.json`` and start its subprocess (output to its log)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job.threads)}
    if job.device != "cpu":  # the job sees its one GPU as cuda:0
        env["CUDA_VISIBLE_DEVICES"] = job.device.split(":")[1]
    spec = {**spec_common, "method": job.method, "seed": job.seed, "run_dir": str(job.run_dir),
            "settings": job.settings, "key": job.key, "decode_key": job.decode_key, "budget": job.budget,
            "budget_rule": job.rule, "threads": job.threads, "device": "cpu" if job.device == "cpu" else "cuda",
            "kind": job.kind}
    if job.kind == "probe":
        spec.update(source=str(job.source), probe=job.probe)
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(job.run_dir / "job.json", spec)
    with open(job.log_path, "ab") as logf:
        job.proc = subprocess.Popen([sys.executable, "-m", "bljust.compare", "job", str(job.run_dir / "job.json")],
                                    stdout=logf, stderr=subprocess.STDOUT, env=env)
    log.info("%s: started (%d thread(s), %s; log %s)", job.name, job.threads, job.device, job.log_path)


# ------------------------------------------------------------------ scheduling


def devices_for(device: str) -> list[str]:
    """The devices jobs run on: every GPU (``auto``, ``cuda``), one named GPU, or the CPU."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if device.startswith("cuda"):
        return [device]
    return ["cpu"]


def available_cores() -> int:
    """The cores this process may use (taskset, a cgroup cpuset or a batch scheduler's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads(cores: int, parallel: int, jobs_left: int) -> int:
    """Threads for a CPU job started while ``jobs_left`` jobs (itself included) remain to run or are running."""
    return max(1, cores // min(parallel, jobs_left))


def may_start(running: int, waiting: int, parallel: int, on_gpu: bool) -> bool:
    """Whether one more job may start now, with ``running`` jobs running and ``waiting`` to start.

    One job per core (or GPU), except for the last wave on CPU: when the jobs left fit in 1.5 jobs
    per core, they all start at once on one thread each and share the cores rather than leave a
    core idle at the end (README, "Comparing methods", has the measurements). Every job then runs
    on one thread, so a run's arithmetic does not depend on where in the queue it ran.
    """
    if waiting == 0:
        return False
    if running < parallel:
        return True
    return not on_gpu and running + waiting <= parallel + parallel // 2


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


def run_jobs(jobs: list[Job], spec_common: dict, parallel: int, devices: list[str], cores: int,
             show_progress: bool = True) -> list[tuple[Job, int]]:
    """Run the unfinished jobs, ``parallel`` at a time (see ``may_start``); returns the failed ones with
    their exit codes."""
    from tqdm import tqdm

    todo = []
    for j in jobs:
        if j.finished():
            log.info("%s: finished earlier (%s), reused", j.name, j.record_path)
        else:
            if j.trained():
                log.info("%s: trained earlier; re-evaluating it (the decoding settings changed)", j.name)
            todo.append(j)
    total = sum(j.total_steps for j in jobs)
    done_steps = sum(j.total_steps for j in jobs if j not in todo)
    bar = tqdm(total=total, initial=done_steps, unit="step", desc="compare", disable=not show_progress,
               dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 60.0)
    on_gpu = devices[0] != "cpu"
    free_devices = list(devices) if on_gpu else []
    running: list[Job] = []
    failed: list[tuple[Job, int]] = []
    try:
        while todo or running:
            while may_start(len(running), len(todo), parallel, on_gpu):
                job = todo.pop(0)
                # Cores left idle because fewer jobs than cores remain go to them as threads. A probe
                # always runs on one: its numbers must not depend on its place in the queue, and it is cheap.
                job.threads = (1 if on_gpu or job.kind == "probe"
                               else cpu_threads(cores, parallel, len(running) + 1 + len(todo)))
                job.device = free_devices.pop(0) if on_gpu else "cpu"
                start_job(job, spec_common)
                running.append(job)
            time.sleep(1.0)
            states, running_steps = [], 0
            for job in list(running):
                code = job.proc.poll()
                if code is None:
                    step, phase = _progress(job)
                    running_steps += min(step, job.total_steps)
                    states.append(f"{job.name} {phase} {step}/{job.total_steps}")
                    continue
                running.remove(job)
                if on_gpu:
                    free_devices.append(job.device)
                if code == 0 and job.finished():
                    done_steps += job.total_steps
                    log.info("%s: done", job.name)
                else:
                    failed.append((job, code))
                    log.error("%s: failed with exit code %s; see %s", job.name, code, job.log_path)
            bar.n = min(total, done_steps + running_steps)
            bar.set_postfix_str("; ".join(states), refresh=False)
            bar.refresh()
    finally:  # on Ctrl-C or an error, stop the children: their checkpoints let a re-run resume them
        for job in running:
            if job.proc.poll() is None:
                job.proc.terminate()
                job.proc.wait()
        bar.close()
    return failed
