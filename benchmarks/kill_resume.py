#!/usr/bin/env python
"""Kill ``bljust train`` (and ``bljust compare``) at random moments, resume, and check that nothing changed.

For each method, an uninterrupted run is trained first; then the same run is started again and
killed up to ``--kills`` times, each time resumed with ``bljust train --resume``, until it finishes.
The final checkpoint's model (``checkpoints/step-NNNNNNN.pt``) and ``best.pt`` must equal the
uninterrupted run's tensor for tensor, bit for bit.

Kills, by their index i = 1..N in a method's run:

- ``sigkill`` (most): SIGKILL at a random wall time. The clock starts when the attempt logs its first
  train record (the end of its start-up: imports, data loading, checkpoint loading), and the delay is
  drawn uniformly from [0, min(expected end, window)], where the expected end comes from the
  uninterrupted run's timeline (``metrics.jsonl`` record times) and the window is 1.5 times the expected
  remaining time over the kills left, so that N kills spread over the run (instead of all landing in
  its first half) and most of them land before it ends.
- ``write`` (i = 2, 10, 18, ...): SIGKILL too, but after the random delay the script polls the run
  directory and kills the process the moment a checkpoint's temporary file (``.step-*.pt.tmp-PID``,
  ``.best.pt.tmp-PID``) appears: a real kill inside ``atomic_save``.
- ``fault`` (every 4th): the library's test hook ``BLJUST_FAULT_IN_SAVE=n`` (n random in 1..3): the
  n-th ``atomic_save`` of that process writes half its bytes, then ``os._exit(17)``.

A kill landed when the process was still running when it was sent (for ``fault``: it exited 17). A kill
was inside a checkpoint write when the killed process left a temporary file with its PID behind
(``atomic_save`` removes it on any clean exit); the next resume must cope with that file, and the
script records whether it was removed. The phase and step at a kill are those of the last ``train``
record the killed attempt wrote to ``metrics.jsonl`` (``startup`` when it wrote none).

The resume passes only ``--data --out --method --resume``: the config comes from the run's
``config.yaml``. If that file is missing or does not hold the expected config (a kill during its
rewrite at start-up), the script passes ``--config``/``--set`` again and records the anomaly.

Then ``bljust compare`` (two methods, one seed, ``--budget 16``, ``--set model.dropout=0.1``): uninterrupted
into ``OUT/compare/straight``; again into ``OUT/compare/killed``, SIGKILLing the whole process group (compare
and its job subprocesses) at random moments (odd kills: a random delay after a job logs its first step of
that invocation; even ones: anywhere in the expected rest of the work) and re-running until it exits 0;
and again into ``OUT/compare/write-fault``, where the first invocation's jobs all die in their first
checkpoint write (``BLJUST_FAULT_IN_SAVE=1``), then re-running it (given up after two failures in a row). The
results.json files must match, except (``RESULTS_EXCLUDED``): ``created`` (a date),
``wall_seconds_this_invocation``, ``runs[*].wall_seconds``, ``runs[*].train_seconds`` (wall-clock times;
train_seconds of a resumed run also counts the steps redone after a kill), and ``machine`` (describes the
host and invocation, not the result). Paths are compared with the out directory replaced by
``<OUT>`` (``lm``, ``decoding`` and ``failed[*].log`` name files in it).

Usage:
    .venv/bin/python benchmarks/kill_resume.py --out /tmp/bj/kill --data /tmp/bj/tiny
    .venv/bin/python benchmarks/kill_resume.py --out DIR --kills 20 --methods supervised,bljust,ptft,pl \\
        --seed 0 --config recipes/tiny.yaml [--set KEY=VALUE ...] [--compare-kills 4 | --no-compare]

Writes ``OUT/kill_resume.json`` (the table, every kill's details, the compare results) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"

# Every method: enough steps for 20 kills, a checkpoint every 2 steps, dropout so the RNG state matters.
COMMON = ["train.max_steps=40", "train.checkpoint_every=2", "train.valid_every=8", "data.max_duration=10",
          "model.dropout=0.1", "train.log_every=1"]
METHOD_SETTINGS = {
    "supervised": [],
    # 2 × (5 exploration + 10 joint) + 10 fine-tuning = 40 steps: explore1 1-5, joint1 6-15, explore2 16-20,
    # joint2 21-30, finetune 31-40
    "bljust": ["bljust.outer_epochs=2", "bljust.explore_steps=5", "bljust.joint_steps=10", "bljust.finetune_steps=10"],
    # 16 pre-training steps, then 4 with the encoder frozen, then 20 fine-tuning the whole model
    "ptft": ["ptft.pretrain_steps=16", "ptft.freeze_encoder_steps=4", "ptft.encoder_lr_scale=0.5"],
    # seed model 16 steps, then 2 rounds of 12 steps; every utterance's pseudo-label is plausible
    "pl": ["pl.min_chars_per_second=0"],
}
COMPARE_SETTINGS = ["model.dropout=0.1"]  # on top of the config: dropout, so the RNG state matters
FAULT_IN_SAVE_ENV = "BLJUST_FAULT_IN_SAVE"  # bljust.checkpoint: the n-th atomic_save dies half-way (exit 17)
FAULT_AFTER_STEP_ENV = "BLJUST_FAULT_AFTER_STEP"
FAULT_EXIT = 17
TMP_RE = re.compile(r"^\.(step-\d+\.pt|best\.pt)\.tmp-(\d+)$")
RESULTS_EXCLUDED = ("created", "wall_seconds_this_invocation", "machine", "runs[*].wall_seconds",
                    "runs[*].train_seconds")


# ------------------------------------------------------------------ helpers


def child_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_IN_SAVE_ENV, FAULT_AFTER_STEP_ENV)}
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra or {})
    return env


def bljust_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bljust", *args]


def kill_kind(i: int) -> str:
    """The kind of kill number ``i`` (1-based): every 4th uses the fault hook, 2, 10, 18, ... wait for a write."""
    if i % 4 == 0:
        return "fault"
    if i % 8 == 2:
        return "write"
    return "sigkill"


def read_records(path: Path) -> list[dict]:
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for ln in text.splitlines():
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def tail_records(path: Path, nbytes: int = 4096) -> list[dict]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - nbytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except json.JSONDecodeError:
            continue
    return out


def train_records_since(path: Path, t0: float, tail: bool = False) -> list[dict]:
    """The train records written after wall time ``t0`` (an attempt's start): the attempt's own."""
    records = tail_records(path) if tail else read_records(path)
    return [r for r in records if r.get("kind") == "train" and r.get("time", 0) >= t0 - 1e-3]


def phase_label(record: dict | None) -> str:
    if record is None:
        return "startup"
    phase = record.get("phase", "train")
    if "outer_epoch" in record and phase in ("explore", "joint"):
        phase += str(int(record["outer_epoch"]) + 1)
    return phase


def temp_files(run_dir: Path) -> list[Path]:
    found = []
    for d in (run_dir, run_dir / "checkpoints"):
        try:
            found += [d / n for n in os.listdir(d) if TMP_RE.match(n)]
        except OSError:
            pass
    return sorted(found)


def temp_files_of(run_dir: Path, pid: int) -> list[Path]:
    return [p for p in temp_files(run_dir) if TMP_RE.match(p.name).group(2) == str(pid)]


def latest_checkpoint_step(run_dir: Path) -> int:
    steps = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("step-*.pt")
             if (m := re.search(r"step-(\d+)\.pt$", p.name))]
    return max(steps, default=0)


def log_tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def equal_nested(a, b, where: str = "", diffs: list | None = None) -> list[str]:
    """Paths at which two nested dict/list/tensor structures differ (tensors bit for bit)."""
    import torch

    diffs = [] if diffs is None else diffs
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b)):
            diffs.append(where)
    elif isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                diffs.append(f"{where}.{k} (missing on one side)")
            else:
                equal_nested(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            diffs.append(f"{where} (length {len(a)} != {len(b)})")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                equal_nested(x, y, f"{where}[{i}]", diffs)
    elif a != b and not (isinstance(a, float) and isinstance(b, float) and a != a and b != b):
        diffs.append(where)
    return diffs


def compare_run_dirs(straight: Path, killed: Path, total: int) -> dict:
    """Per-tensor comparison of the final checkpoint's model and of best.pt's model; the rest of the
    checkpoint (optimiser, streams, RNG, counters but train_seconds) for information."""
    from bljust.checkpoint import load

    name = f"checkpoints/step-{total:07d}.pt"
    out: dict = {"checkpoint": name}
    try:
        a, b = load(straight / name), load(killed / name)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {**out, "error": f"final checkpoint: {e}", "identical": False}
    out["model_diffs"] = equal_nested(a["model"], b["model"], "model")
    rest_a = {k: v for k, v in a.items() if k != "model"}
    rest_b = {k: v for k, v in b.items() if k != "model"}
    for r in (rest_a, rest_b):
        r["counters"] = {k: v for k, v in r.get("counters", {}).items() if k not in ("train_seconds", "wall_seconds")}
    out["state_diffs"] = equal_nested(rest_a, rest_b, "checkpoint")
    try:
        ba, bb = load(straight / "best.pt"), load(killed / "best.pt")
        out["best_diffs"] = equal_nested(ba["model"], bb["model"], "best.model")
        out["best_meta_diffs"] = equal_nested({k: ba.get(k) for k in ("step", "dev")},
                                              {k: bb.get(k) for k in ("step", "dev")}, "best")
    except Exception as e:  # noqa: BLE001
        out["best_diffs"] = [f"best.pt: {e}"]
        out["best_meta_diffs"] = []
    out["tensors"] = len(a["model"])
    out["identical"] = not out["model_diffs"] and not out["best_diffs"]
    return out


def metrics_check(run_dir: Path, total: int) -> dict:
    steps = [r["step"] for r in read_records(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
    ok = sorted(steps) == list(range(1, total + 1))
    return {"ok": ok, "train_records": len(steps), "duplicates": len(steps) - len(set(steps)),
            "missing": sorted(set(range(1, total + 1)) - set(steps))[:20]}


# ------------------------------------------------------------------ one method


def method_settings(method: str, extra: list[str] | None = None) -> list[str]:
    return [*COMMON, *METHOD_SETTINGS.get(method, []), *(extra or [])]


def _run_straight(method: str, data: Path, run_dir: Path, config: Path, settings: list[str], log: Path) -> dict:
    """The uninterrupted reference run; returns its timeline (seconds from start to each step's record)."""
    sets = [a for s in settings for a in ("--set", s)]
    cmd = bljust_cmd("train", "--method", method, "--data", str(data), "--out", str(run_dir), "--config",
                     str(config), *sets)
    t0 = time.time()
    with open(log, "wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO,
                            timeout=3600).returncode
    t_end = time.time() - t0
    if rc != 0:
        raise RuntimeError(f"{method}: the uninterrupted run failed (exit {rc}):\n{log_tail(log)}")
    records = train_records_since(run_dir / "metrics.jsonl", t0)
    total = json.loads((run_dir / "summary.json").read_text())["steps"]
    timeline = {int(r["step"]): r["time"] - t0 for r in records}
    return {"total": total, "seconds": t_end, "startup": timeline.get(1, t_end), "timeline": timeline}


def _config_ok(run_dir: Path, expected: dict) -> str:
    """'' when run_dir/config.yaml holds the expected config, else what is wrong with it."""
    from bljust.config import load_config, to_dict

    path = run_dir / "config.yaml"
    if not path.is_file():
        return "config.yaml missing"
    try:
        saved = to_dict(load_config(path))
    except Exception as e:  # noqa: BLE001
        return f"config.yaml unreadable: {str(e).splitlines()[0][:120]}"
    return "" if saved == expected else "config.yaml differs from the run's config"


def kill_resume_method(method: str, data: str | Path, out: str | Path, *, kills: int = 20, seed: int = 0,
                       config: str | Path = TINY, settings: list[str] | None = None,
                       kinds: list[str] | None = None, fault_saves: list[int] | None = None,
                       verbose: bool = True) -> dict:
    """Train ``method`` uninterrupted into OUT/straight, then into OUT/killed with up to ``kills`` kills and
    resumes, and compare the two. ``settings``: the ``--set`` overrides (default: COMMON plus the method's).
    ``kinds``: the kind of each kill (default: ``kill_kind(i)``); ``fault_saves``: the n of each ``fault``
    kill in turn (default: random in 1..3). Returns the method's row of the table, with every kill's details."""
    from bljust.config import load_config, to_dict

    data, out, config = Path(data).resolve(), Path(out), Path(config).resolve()
    settings = method_settings(method) if settings is None else list(settings)
    rng = random.Random(f"{seed}-{method}")
    for sub in ("straight", "killed", "logs"):
        shutil.rmtree(out / sub, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    started = time.time()

    def say(msg: str) -> None:
        if verbose:
            print(f"[{method}] {msg}", file=sys.stderr, flush=True)

    ref = _run_straight(method, data, out / "straight", config, settings, out / "logs" / "straight.log")
    total, timeline = ref["total"], ref["timeline"]
    say(f"uninterrupted: {total} steps in {ref['seconds']:.1f} s (first step logged at {ref['startup']:.1f} s)")
    expected_cfg = to_dict(load_config(config, settings))

    run_dir = out / "killed"
    sets = [a for s in settings for a in ("--set", s)]
    base = ["train", "--method", method, "--data", str(data), "--out", str(run_dir)]
    explicit = ["--config", str(config), *sets]
    timeout = max(180.0, 10 * ref["seconds"])
    faults = list(fault_saves or [])
    events: list[dict] = []
    anomalies: list[str] = []
    stale: list[Path] = []  # temp files left by kills, which the resumes must cope with
    attempt, sent, finished, final_rc = 0, 0, False, None

    while not finished:
        kind = None
        if sent < kills:
            kind = kinds[sent] if kinds is not None and sent < len(kinds) else kill_kind(sent + 1)
        resume = attempt > 0
        args = list(base)
        if resume:
            args.append("--resume")
            problem = _config_ok(run_dir, expected_cfg)
            if problem:  # a kill before or during config.yaml's write: the user would pass the config again
                anomalies.append(f"before resume {attempt}: {problem}; passed --config/--set again")
                args += explicit
        else:
            args += explicit
        env = {}
        n_save = None
        if kind == "fault":
            n_save = faults.pop(0) if faults else rng.randint(1, 3)
            env[FAULT_IN_SAVE_ENV] = str(n_save)
        resume_from = latest_checkpoint_step(run_dir) if resume else 0
        log = out / "logs" / f"attempt-{attempt:02d}.log"
        t0 = time.time()
        with open(log, "wb") as logf:
            proc = subprocess.Popen(bljust_cmd(*args), stdout=logf, stderr=subprocess.STDOUT, env=child_env(env),
                                    cwd=REPO)
        event = {"attempt": attempt, "kind": kind, "resume_from": resume_from}
        if kind in ("sigkill", "write"):
            landed, delay, in_write_watch = _sigkill(proc, run_dir, t0, timeline, total, ref["seconds"],
                                                     kills - sent, rng, kind == "write", timeout)
            event.update(delay_after_first_step=delay, landed=landed)
            if kind == "write":
                event["saw_temp_file"] = in_write_watch
        elif kind == "fault":
            event["fault_in_save"] = n_save
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            anomalies.append(f"attempt {attempt} timed out after {timeout:.0f} s; killed")
        t_kill = time.time()
        if kind == "fault":
            event["landed"] = rc == FAULT_EXIT
        text = log.read_text(errors="replace")
        m = re.search(r"resumed from step (\d+)", text)
        event["resumed_from_log"] = int(m.group(1)) if m else (0 if resume else None)
        if resume and "removing" in text and "interrupted" in text:
            event["removed_stale_temp"] = True
        event["rc"] = rc
        event["seconds"] = round(t_kill - t0, 3)
        if kind is not None:
            sent += 1
        if rc == 0:
            finished, final_rc = True, 0
            if kind is not None:
                event["landed"] = False  # the run ended before the kill
        elif (kind in ("sigkill", "write") and rc == -signal.SIGKILL) or (kind == "fault" and rc == FAULT_EXIT):
            records = train_records_since(run_dir / "metrics.jsonl", t0)
            last = records[-1] if records else None
            left = temp_files_of(run_dir, proc.pid)
            stale += left
            event.update(step=int(last["step"]) if last else resume_from, phase=phase_label(last),
                         in_write=bool(left), temp_files={p.name: p.stat().st_size for p in left})
            say(f"kill {sent:2d} ({kind}{f' n={n_save}' if n_save else ''}): step {event['step']} "
                f"({event['phase']}){' inside a checkpoint write' if left else ''}")
        else:
            final_rc = rc
            anomalies.append(f"attempt {attempt} failed on its own (exit {rc}):\n{log_tail(log)}")
            events.append(event)
            break
        events.append(event)
        attempt += 1

    row: dict = {"method": method, "settings": settings, "total_steps": total,
                 "straight_seconds": round(ref["seconds"], 2), "straight_startup_seconds": round(ref["startup"], 2),
                 "kills_planned": kills}
    killed_events = [e for e in events if e["kind"] is not None]
    landed = [e for e in killed_events if e.get("landed")]
    phases: dict[str, int] = {}
    for e in landed:
        phases[e["phase"]] = phases.get(e["phase"], 0) + 1
    row.update({
        "kills_sent": len(killed_events), "kills_landed": len(landed),
        "kills_in_write": sum(bool(e.get("in_write")) for e in landed),
        "kills_in_write_by_kind": {k: sum(bool(e.get("in_write")) for e in landed if e["kind"] == k)
                                   for k in ("sigkill", "write", "fault")},
        "phases_hit": phases, "steps_at_kill": [e["step"] for e in landed],
        "resumes": sum(1 for e in events if e["attempt"] > 0),
        "finished_before_all_kills": finished and len(killed_events) < kills,
        "final_exit_code": final_rc,
    })
    # a resume that loaded an older checkpoint than the newest would be a lost checkpoint
    for prev, nxt in zip(events, events[1:]):
        if nxt.get("resumed_from_log") is not None and nxt["resumed_from_log"] != nxt["resume_from"]:
            anomalies.append(f"attempt {nxt['attempt']} resumed from step {nxt['resumed_from_log']}, "
                             f"the newest checkpoint was step {nxt['resume_from']}")
    left_over = [p.name for p in stale if p.exists()]
    row["stale_temp_files_left"] = left_over
    if final_rc == 0:
        row["compare"] = compare_run_dirs(out / "straight", run_dir, total)
        row["identical"] = row["compare"]["identical"]
        row["metrics"] = metrics_check(run_dir, total)
    else:
        row["identical"] = False
        row["compare"] = {"error": f"the killed run did not finish (exit {final_rc})"}
    row["anomalies"] = anomalies
    row["kills"] = events
    row["wall_seconds"] = round(time.time() - started, 1)
    say(f"done: {row['kills_landed']} kills landed, identical={row['identical']}")
    return row


def _sigkill(proc: subprocess.Popen, run_dir: Path, t0: float, timeline: dict, total: int, t_total: float,
             kills_left: int, rng: random.Random, on_write: bool, timeout: float) -> tuple[bool, float, bool]:
    """Wait for the attempt's first train record, sleep a random delay, (``on_write``: then wait for a
    checkpoint's temporary file to appear) and SIGKILL it. Returns (landed, delay, saw a temp file)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = t0 + timeout
    first = None
    while first is None:
        if proc.poll() is not None or time.time() > deadline:
            return False, 0.0, False
        records = train_records_since(metrics, t0, tail=True)
        if records:
            first = records[0]
            break
        time.sleep(0.005)
    step = int(first["step"])
    remaining = max(t_total - timeline.get(step, 0.0), 0.05)
    window = min(remaining, 1.5 * remaining / max(kills_left, 1))
    delay = rng.uniform(0, window)
    time.sleep(delay)
    saw = False
    if on_write:
        while proc.poll() is None and time.time() < deadline:
            if temp_files_of(run_dir, proc.pid):
                saw = True
                time.sleep(rng.uniform(0, 0.003))  # somewhere in the write of a few hundred KB and its fsync
                break
            time.sleep(0.0002)
    if proc.poll() is not None:
        return False, delay, saw
    proc.send_signal(signal.SIGKILL)
    return True, delay, saw


# ------------------------------------------------------------------ compare


def _normalise(obj, outs: list[str]):
    if isinstance(obj, dict):
        return {k: _normalise(v, outs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_normalise(v, outs) for v in obj]
    if isinstance(obj, str):
        for o in outs:
            obj = obj.replace(o, "<OUT>")
    return obj


def results_diff(a: dict, b: dict, out_a: Path, out_b: Path) -> list[str]:
    """Where two results.json differ, less ``RESULTS_EXCLUDED`` and with each out directory as <OUT>."""
    def strip(r: dict, out: Path) -> dict:
        r = _normalise(r, sorted({str(out), str(out.resolve())}, key=len, reverse=True))
        r = {k: v for k, v in r.items() if k not in ("created", "wall_seconds_this_invocation", "machine")}
        r["runs"] = [{k: v for k, v in run.items() if k not in ("wall_seconds", "train_seconds")}
                     for run in r.get("runs", [])]
        return r

    return equal_nested(strip(a, out_a), strip(b, out_b), "results")


def _compare_once(args: list[str], env: dict, log: Path, kill_at: float | None, timeout: float,
                  anchor: Path | None = None) -> dict:
    """One ``bljust compare``, SIGKILLed with its process group ``kill_at`` seconds after its start (``anchor``:
    after the first train record a job under that directory writes)."""
    t0 = time.time()
    with open(log, "ab") as f:
        f.write(f"\n===== {' '.join(args)} (kill at {kill_at}) =====\n".encode())
        f.flush()
        proc = subprocess.Popen(bljust_cmd("compare", *args), stdout=f, stderr=subprocess.STDOUT,
                                env=child_env(env), cwd=REPO, start_new_session=True)
    landed, t_killed = False, None
    try:
        if kill_at is not None:
            t_anchor = t0
            if anchor is not None:  # wait for a job of this invocation to take a step
                while proc.poll() is None and time.time() < t0 + timeout and not any(
                        train_records_since(p, t0, tail=True) for p in anchor.glob("*/metrics.jsonl")):
                    time.sleep(0.01)
                t_anchor = time.time()
            try:
                proc.wait(timeout=max(t_anchor + kill_at - time.time(), 0.001))
            except subprocess.TimeoutExpired:
                landed, t_killed = True, time.time()
                os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rc = proc.wait()
    # every job subprocess is in the group: make sure none survives before the next invocation
    for _ in range(200):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if kill_at is None:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    return {"rc": rc, "kill_at": kill_at, "landed": landed, "seconds": round(time.time() - t0, 2),
            "killed_after": round(t_killed - t0, 2) if landed else None}


def kill_resume_compare(data: str | Path, out: str | Path, *, kills: int = 4, seed: int = 0,
                        config: str | Path = TINY, methods: str = "supervised,bljust", budget: int = 16,
                        extra: list[str] | None = None, verbose: bool = True) -> dict:
    """``bljust compare`` uninterrupted, then killed (SIGKILL to its process group) ``kills`` times and
    re-run until it exits 0, then with every job dying in its first checkpoint write; compares results.json
    and each run's best.pt."""
    from bljust.checkpoint import load

    data, out, config = Path(data).resolve(), Path(out), Path(config).resolve()
    rng = random.Random(f"{seed}-compare")
    for sub in ("straight", "killed", "write-fault"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if verbose:
            print(f"[compare] {msg}", file=sys.stderr, flush=True)

    def args_for(o: Path) -> list[str]:
        sets = [a for s in (extra or []) for a in ("--set", s)]
        return ["--data", str(data), "--out", str(o), "--methods", methods, "--seeds", "1", "--config", str(config),
                "--budget", str(budget), "--no-progress", *sets]

    straight = out / "straight"
    ref = _compare_once(args_for(straight), {}, out / "straight.log", None, 3600)
    if ref["rc"] != 0:
        raise RuntimeError(f"compare: the uninterrupted run failed (exit {ref['rc']}):\n"
                           f"{log_tail(out / 'straight.log')}")
    t_ref = ref["seconds"]
    times = [r["time"] for p in (straight / "runs").glob("*/metrics.jsonl") for r in read_records(p)
             if r.get("kind") == "train"]
    train_span = max(max(times) - min(times), 0.1) if times else 1.0  # from the first job's first step to the last
    say(f"uninterrupted: {t_ref:.1f} s, the jobs' steps span {train_span:.1f} s")
    ref_results = json.loads((straight / "results.json").read_text())

    scenarios = {}
    for name in ("killed", "write-fault"):
        o = out / name
        log = out / f"{name}.log"
        invocations = []
        left = kills if name == "killed" else 0
        first_fault = name == "write-fault"
        failures_in_a_row = 0
        # What is left of the work, in seconds of an uninterrupted compare: a kill at t leaves about
        # (left - t) plus a re-run's start-up (compare's own, then its jobs'), taken as a quarter of the run.
        expected_left = t_ref
        while True:
            env, kill_at, during_training = {}, None, False
            if first_fault:
                env[FAULT_IN_SAVE_ENV] = "1"  # every job dies inside its first checkpoint write
            elif left > 0:
                # odd kills: while the jobs train; even ones: anywhere in what is left (start-up, training,
                # evaluation, the report)
                during_training = (kills - left) % 2 == 0
                kill_at = rng.uniform(0, train_span) if during_training else \
                    rng.uniform(0.5, max(0.6, 0.9 * expected_left))
                left -= 1
            inv = _compare_once(args_for(o), env, log, kill_at, max(600.0, 20 * t_ref),
                                anchor=o / "runs" if during_training else None)
            inv["fault_in_save"] = 1 if first_fault else None
            inv["during_training"] = during_training
            if inv["landed"] or first_fault:
                expected_left = max(expected_left - inv["seconds"], 0.0) + 0.25 * t_ref
                inv["jobs_at_kill"] = _jobs_state(o)
            invocations.append(inv)
            say(f"{name}: invocation {len(invocations)}: "
                f"{'killed after %.1f s' % inv['killed_after'] if inv['landed'] else 'exit %s' % inv['rc']}"
                f"{' (while the jobs train)' if during_training and inv['landed'] else ''}"
                f"{' (jobs die in their first checkpoint write)' if first_fault else ''}"
                f"{'; jobs: ' + '; '.join(inv['jobs_at_kill']) if inv.get('jobs_at_kill') else ''}")
            if first_fault:
                first_fault = False
                continue
            if inv["rc"] == 0:
                break
            if not inv["landed"]:
                failures_in_a_row += 1
                if failures_in_a_row >= 2:  # two re-runs in a row failed on their own: it will not recover
                    break
            else:
                failures_in_a_row = 0
        row: dict = {"scenario": name, "invocations": invocations,
                     "kills_sent": sum(i["kill_at"] is not None for i in invocations) + (name == "write-fault"),
                     "kills_landed": sum(i["landed"] for i in invocations)
                     + sum(i["fault_in_save"] is not None and i["rc"] != 0 for i in invocations),
                     "reruns": len(invocations) - 1, "final_exit_code": invocations[-1]["rc"]}
        if invocations[-1]["rc"] == 0:
            results = json.loads((o / "results.json").read_text())
            row["results_diffs"] = results_diff(ref_results, results, straight, o)
            row["machine_equal"] = ref_results.get("machine") == results.get("machine")
            best = {}
            for run in ref_results["runs"]:
                a, b = load(straight / run["run_dir"] / "best.pt"), load(o / run["run_dir"] / "best.pt")
                best[run["run_dir"]] = equal_nested(a["model"], b["model"], "model")
            row["best_diffs"] = best
            row["identical"] = not row["results_diffs"] and not any(best.values())
        else:
            row["identical"] = False
            row["error"] = _last_error(o, log)
        say(f"{name}: identical={row['identical']}")
        scenarios[name] = row
    return {"methods": methods, "budget": budget, "straight_seconds": t_ref, "excluded_fields": list(RESULTS_EXCLUDED),
            "scenarios": scenarios}


def _jobs_state(out: Path) -> list[str]:
    """Where each job of a compare was when it was killed: its last train record, whether it was evaluated,
    and any checkpoint temp file it left (a kill inside a write)."""
    states = []
    for run in sorted((out / "runs").glob("*-seed*")):
        if not run.is_dir():
            continue
        records = [r for r in read_records(run / "metrics.jsonl") if r.get("kind") == "train"]
        last = records[-1] if records else None
        state = f"{run.name} step {last['step'] if last else 0} {phase_label(last)}"
        if (run / "record.json").is_file():
            state += " evaluated"
        if temp_files(run):
            state += " in a checkpoint write (" + ", ".join(p.name for p in temp_files(run)) + ")"
        states.append(state)
    if (out / "results.json").is_file():
        states.append("results.json written")
    return states


def _last_error(out: Path, log: Path) -> str:
    """The last error line of a failed compare: a job's log, or compare's own."""
    lines = []
    for p in [*sorted((out / "runs").glob("*.log")), log]:
        try:
            lines += [f"{p.name}: {ln}" for ln in p.read_text(errors="replace").splitlines()
                      if re.search(r"Error|error:", ln)]
        except OSError:
            pass
    return lines[-1] if lines else "(no error line found)"


# ------------------------------------------------------------------ table


def format_table(rows: list[dict], compare: dict | None) -> str:
    head = ["method", "steps", "kills sent", "landed", "in ckpt write", "phases hit (kills)", "steps at kill",
            "resumes", "final ckpt model", "best.pt model", "identical"]
    body = []
    for r in rows:
        c = r.get("compare", {})
        if "error" in c:
            ck = best = "ERROR"
        else:
            ck = "equal" if not c["model_diffs"] else f"{len(c['model_diffs'])}/{c['tensors']} differ"
            best = "equal" if not c["best_diffs"] else f"{len(c['best_diffs'])} differ"
        w = r["kills_in_write_by_kind"]
        in_write = f"{r['kills_in_write']} (hook {w['fault']}, sigkill {w['sigkill'] + w['write']})"
        phases = " ".join(f"{p}×{n}" for p, n in sorted(r["phases_hit"].items(), key=lambda x: _phase_order(x[0])))
        steps = ",".join(str(s) for s in r["steps_at_kill"])
        sent = f"{r['kills_sent']}" + (" (run ended)" if r["finished_before_all_kills"] else "")
        body.append([r["method"], str(r["total_steps"]), sent, str(r["kills_landed"]), in_write, phases or "-",
                     steps or "-", str(r["resumes"]), ck, best, "YES" if r["identical"] else "NO"])
    text = _grid(head, body)
    if compare:
        head2 = ["bljust compare", "kills sent", "landed", "re-runs", "results.json (less excluded)",
                 "best.pt models", "identical"]
        body2 = []
        for name, s in compare["scenarios"].items():
            label = {"killed": "SIGKILL of the process group",
                     "write-fault": "jobs die in 1st ckpt write (hook)"}[name]
            if s["final_exit_code"] == 0:
                res = "equal" if not s["results_diffs"] else f"{len(s['results_diffs'])} fields differ"
                best = "equal" if not any(s["best_diffs"].values()) else "differ"
            else:
                res = best = f"NOT FINISHED (exit {s['final_exit_code']})"
            body2.append([label, str(s["kills_sent"]), str(s["kills_landed"]), str(s["reruns"]), res, best,
                          "YES" if s["identical"] else "NO"])
        text += "\n\n" + _grid(head2, body2)
        text += ("\n(results.json compared with the out directory written as <OUT>, less: "
                 + ", ".join(compare["excluded_fields"]) + ")")
        for name, s in compare["scenarios"].items():
            if s.get("error"):
                text += f"\n{name}: {s['error']}"
            for d in s.get("results_diffs", [])[:10]:
                text += f"\n{name}: results differ at {d}"
    for r in rows:
        for a in r["anomalies"]:
            text += f"\n{r['method']}: {a.splitlines()[0]}"
        if r["stale_temp_files_left"]:
            text += f"\n{r['method']}: temp files of killed writes still present: {r['stale_temp_files_left']}"
        if not r.get("metrics", {}).get("ok", True):
            text += f"\n{r['method']}: metrics.jsonl train records not exactly steps 1..N once: {r['metrics']}"
        c = r.get("compare", {})
        for d in (c.get("model_diffs", []) + c.get("best_diffs", []))[:10]:
            text += f"\n{r['method']}: differs: {d}"
        if c.get("state_diffs"):
            text += f"\n{r['method']}: rest of the final checkpoint differs at: {', '.join(c['state_diffs'][:10])}"
    return text


def _phase_order(p: str) -> tuple:
    order = ["startup", "train", "seed", "round1", "round2", "pretrain", "finetune-frozen", "explore1", "joint1",
             "explore2", "joint2", "explore3", "joint3", "finetune"]
    return (order.index(p) if p in order else len(order), p)


def _grid(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in body)])


# ------------------------------------------------------------------ main


def ensure_data(data: str | None, out: Path) -> Path:
    if data:
        return Path(data).resolve()
    from bljust.data.manifests import SPLITS, has_split

    d = (out / "data").resolve()
    if not all(has_split(d, s) for s in SPLITS):
        from bljust.data.synth import synthesize_corpus

        print(f"synthesising a tiny corpus into {d} ...", file=sys.stderr, flush=True)
        synthesize_corpus(d, labeled_minutes=1.0, unlabeled_minutes=1.0, dev_minutes=0.3, test_minutes=0.3, seed=0,
                          jobs=2, progress=False)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/kill-resume", help="output directory (default: runs/kill-resume)")
    p.add_argument("--data", help="data directory (default: synthesise a tiny corpus into OUT/data)")
    p.add_argument("--kills", type=int, default=20, help="kills per method (default 20)")
    p.add_argument("--methods", default="supervised,bljust,ptft,pl", help="comma-separated (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill-time RNG (default 0)")
    p.add_argument("--config", default=str(TINY), help="YAML config (default: recipes/tiny.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"extra override for every method, after {' '.join(COMMON)} and the method's own")
    p.add_argument("--compare-kills", type=int, default=4, help="kills of the killed bljust compare (default 4)")
    p.add_argument("--compare-budget", type=int, default=16, help="bljust compare --budget (default 16)")
    p.add_argument("--compare-set", action="append", metavar="KEY=VALUE",
                   help=f"bljust compare --set (default: {' '.join(COMPARE_SETTINGS)})")
    p.add_argument("--compare-methods", default="supervised,bljust")
    p.add_argument("--no-compare", action="store_true", help="skip the bljust compare part")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = ensure_data(args.data, out)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if method not in METHOD_SETTINGS:
            p.error(f"--methods: {method} is not one of {', '.join(METHOD_SETTINGS)}")
        rows.append(kill_resume_method(method, data, out / method, kills=args.kills, seed=args.seed,
                                       config=args.config, settings=method_settings(method, args.set),
                                       verbose=not args.quiet))
    compare = None
    if not args.no_compare:
        compare = kill_resume_compare(data, out / "compare", kills=args.compare_kills, seed=args.seed,
                                      config=args.config, methods=args.compare_methods, budget=args.compare_budget,
                                      extra=COMPARE_SETTINGS if args.compare_set is None else args.compare_set,
                                      verbose=not args.quiet)
    wall = time.time() - t0
    table = format_table(rows, compare)
    print(table)
    print(f"\nwall time {wall:.0f} s; details in {out / 'kill_resume.json'}")
    report = {"command": [sys.executable, *sys.argv] if argv is None else ["kill_resume.py", *argv],
              "data": str(data), "config": str(args.config), "seed": args.seed, "kills": args.kills,
              "wall_seconds": round(wall, 1), "table": rows, "compare": compare, "table_text": table}
    (out / "kill_resume.json").write_text(json.dumps(report, indent=2, default=str))
    ok = all(r["identical"] for r in rows) and (compare is None or all(s["identical"]
                                                                       for s in compare["scenarios"].values()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
