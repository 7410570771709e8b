"""A run SIGKILLed at random moments (and inside checkpoint writes) and resumed each time ends with exactly
the weights of an uninterrupted run: the short version of ``benchmarks/kill_resume.py``."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from tests.conftest import REPO, TINY


def _benchmark():
    name = "bljust_benchmark_kill_resume"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / "kill_resume.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


COMMON = ["train.checkpoint_every=2", "train.valid_every=4", "data.max_duration=10", "model.dropout=0.1",
          "train.log_every=1"]
CASES = {
    # method: (settings, kinds of the 3 kills, n of each fault kill)
    # the first kill dies in the first checkpoint write of a fresh run: no checkpoint yet, a stale temp file
    "supervised": (["train.max_steps=10"], ["fault", "sigkill", "sigkill"], [1]),
    # 2 × (2 exploration + 3 joint) + 2 fine-tuning steps; one kill waits for a checkpoint write
    "bljust": (["train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2", "bljust.joint_steps=3",
                "bljust.finetune_steps=2"], ["sigkill", "fault", "write"], [2]),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CASES))
def test_killed_and_resumed_run_ends_bit_identical(method, tiny_corpus, tmp_path):
    kr = _benchmark()
    settings, kinds, faults = CASES[method]
    row = kr.kill_resume_method(method, tiny_corpus, tmp_path, kills=len(kinds), seed=0, config=TINY,
                                settings=COMMON + settings, kinds=kinds, fault_saves=faults, verbose=False)
    detail = {k: row[k] for k in ("anomalies", "kills", "compare")}
    assert row["final_exit_code"] == 0, detail
    assert row["identical"], detail
    assert row["compare"]["model_diffs"] == [] and row["compare"]["best_diffs"] == [], detail
    assert row["compare"]["state_diffs"] == [], detail  # optimiser, streams, RNG, counters too
    assert row["metrics"]["ok"], row["metrics"]  # every step logged exactly once
    assert row["stale_temp_files_left"] == [], detail  # the resume removed what the killed writes left
    assert [a for a in row["anomalies"] if "config.yaml" not in a] == [], detail
    assert row["kills_sent"] >= 1 and row["resumes"] >= 1
    if method == "supervised":  # the fault kill is deterministic: it dies in step 2's checkpoint write
        first = row["kills"][0]
        assert first["landed"] and first["rc"] == kr.FAULT_EXIT and first["in_write"], first
        assert row["kills"][1]["resume_from"] == 0  # nothing to resume but the temp file: starts over
