"""``bljust compare`` end to end on the tiny corpus: two methods × two seeds, the report, reuse and resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from bljust.compare import method_settings, validate_results
from bljust.config import load_config
from bljust.methods.bljust import make_plan
from tests.conftest import REPO, TINY

# tiny.yaml pins N1 = 1 and N2 = 2, so a budget of 8 passes is one BL-JUST epoch (5 passes) and N3 = 3.
ARGS = ["--config", str(TINY), "--budget", "8", "--jobs", "2", "--no-progress"]


def compare(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bljust", "compare", *args], capture_output=True, text=True, check=False,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)


@pytest.fixture(scope="module")
def report(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,bljust", "--seeds", "2", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_results_json_validates_and_holds_every_run(report):
    out, _ = report
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert sorted((r["method"], r["seed"]) for r in results["runs"]) == [
        ("bljust", 0), ("bljust", 1), ("supervised", 0), ("supervised", 1)]
    assert results["failed"] == []
    for run in results["runs"]:
        assert run["batch_passes"] == run["budget"] == 8  # the declared budget, spent exactly
        assert (out / run["run_dir"] / "best.pt").is_file()
        assert set(run["test"]["groups"]) == {"espeak", "flite", "festival"}
    bl = next(r for r in results["runs"] if r["method"] == "bljust")
    assert bl["unlabeled_batches"] > 0 and "bljust.finetune_steps=3" in bl["settings"]
    sup = next(r for r in results["runs"] if r["method"] == "supervised")
    assert sup["unlabeled_batches"] == 0 and sup["unlabeled_passes"] == 0
    # the two seeds are two different trainings
    seeds = [r for r in results["runs"] if r["method"] == "supervised"]
    w = [torch.load(out / r["run_dir"] / "best.pt", weights_only=False)["model"] for r in seeds]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])


def test_report_is_self_contained_and_has_the_table(report):
    out, r = report
    html = (out / "report.html").read_text()
    assert (out / "report.md").is_file()
    for ref in ("http://", "https://", "<script src", "<link"):
        assert ref not in html
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<table" in html and "BL-JUST" in html and "supervised" in html
    assert "test CER" in r.stdout and "report.html" in r.stdout  # the headline table is printed


def test_rerun_reuses_finished_runs(report, tiny_corpus):
    out, _ = report
    records = sorted((out / "runs").glob("*/record.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,bljust", "--seeds", "2", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reused") == 4 and "started" not in r.stderr
    assert {p: p.stat().st_mtime_ns for p in records} == before


def test_runs_are_also_decoded_with_the_corpus_lm_tuned_on_dev(report):
    out, _ = report
    results = json.loads((out / "results.json").read_text())
    assert results["lm"] and results["lm"].endswith("2gram.arpa") and "2-gram LM" in results["decoding"]
    for run in results["runs"]:
        dev, test = run["dev"]["lm"], run["test"]["lm"]
        grid = dev["grid"]
        assert {(g["lm_weight"], g["word_score"]) for g in grid} == {(0.5, 0.0), (2.0, 0.0)}
        best = min(grid, key=lambda g: (g["wer"], g["cer"]))
        assert (dev["lm_weight"], dev["word_score"]) == (test["lm_weight"], test["word_score"]) == (
            best["lm_weight"], best["word_score"])  # chosen on dev, applied to test
        assert dev["wer"] == best["wer"] and set(test["groups"]) == {"espeak", "flite", "festival"}
        assert (out / run["run_dir"] / "eval" / "test.lm.hyp.txt").is_file()
    assert "test WER % (LM)" in (out / "report.md").read_text()


def test_new_decoding_settings_rescore_without_retraining(report, tiny_corpus, tmp_path):
    out, _ = report
    before = json.loads((out / "results.json").read_text())
    best = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.pt")}
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,bljust", "--seeds", "2",
                *ARGS, "--set", "decode.lm_weights=[1.0]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("re-evaluating") == 4
    assert {p: p.stat().st_mtime_ns for p in best} == best  # nothing retrained
    after = json.loads((out / "results.json").read_text())
    for old, new in zip(before["runs"], after["runs"]):
        assert new["train_seconds"] == old["train_seconds"] and new["test"]["cer"] == old["test"]["cer"]
        assert [g["lm_weight"] for g in new["dev"]["lm"]["grid"]] == [1.0]
    # and back: the original settings re-score again, to the same numbers as the first time
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,bljust", "--seeds", "2", *ARGS)
    assert r.returncode == 0 and r.stderr.count("re-evaluating") == 4
    again = json.loads((out / "results.json").read_text())
    assert [x["test"]["lm"] for x in again["runs"]] == [x["test"]["lm"] for x in before["runs"]]


def test_changed_settings_do_not_reuse_a_run(report, tiny_corpus):
    out, _ = report
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised", "--seeds", "1",
                *ARGS, "--set", "optim.lr=0.001")
    assert r.returncode == 2 and "other settings" in r.stderr


def test_a_killed_compare_resumes_and_matches(report, tiny_corpus, tmp_path):
    """Every job dies after step 3 (checkpoint at step 2); the re-run resumes each and ends where an
    uninterrupted run ends."""
    out, _ = report
    args = ["--data", str(tiny_corpus), "--out", str(tmp_path), "--methods", "supervised", "--seeds", "2", *ARGS]
    r = compare(*args, env={"BLJUST_FAULT_AFTER_STEP": "3"})
    assert r.returncode == 1 and "failed" in r.stderr
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == []
    r = compare(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    for seed in (0, 1):
        resumed = torch.load(tmp_path / "runs" / f"supervised-seed{seed}" / "best.pt", weights_only=False)["model"]
        clean = torch.load(out / "runs" / f"supervised-seed{seed}" / "best.pt", weights_only=False)["model"]
        assert all(torch.equal(resumed[k], clean[k]) for k in clean)


def test_budget_rule_gives_every_method_the_same_passes():
    cfg = load_config(REPO / "recipes" / "demo.yaml")
    for method in ("supervised", "ptft", "pl"):
        assert method_settings(method, cfg, 1200, 40, 145) == (["train.max_steps=1200"], 1200)
    assert method_settings("just", cfg, 1200, 40, 145) == (["train.max_steps=600"], 600)
    for first in (None, 200):
        c = load_config(REPO / "recipes" / "demo.yaml", [f"bljust.first_explore_steps={first or 'null'}"])
        settings, steps = method_settings("bljust", c, 1200, 40, 145)
        run_cfg = load_config(REPO / "recipes" / "demo.yaml", settings)
        plan = make_plan(run_cfg.bljust, run_cfg.train.max_steps, 40, 145)
        passes = plan.explore_total + 2 * plan.outer_epochs * plan.joint + plan.finetune
        assert passes == 1200 and steps == plan.total and plan.finetune >= 0
        assert plan.explore_0 == (first if first is not None else plan.explore)
    with pytest.raises(ValueError, match="exceed the budget"):
        method_settings("bljust", cfg, 50, 40, 145)


def test_validate_results_names_the_bad_key(report):
    out, _ = report
    results = json.loads((out / "results.json").read_text())
    del results["runs"][1]["test"]["cer"]
    with pytest.raises(ValueError, match=r"runs\[1\]\.test lacks 'cer'"):
        validate_results(results)


def test_run_keys_hash_only_non_default_training_settings():
    from bljust.compare import training_settings

    assert training_settings(load_config(None, ["decode.lm_order=5", "decode.lm_weights=[9.0]"])) == {}
    assert training_settings(load_config(None, ["optim.lr=0.5", "data.speed_perturb=[0.9]"])) == {
        "optim": {"lr": 0.5}, "data": {"speed_perturb": [0.9]}}
    # a value set explicitly to its default is the same run as one that leaves it out
    assert training_settings(load_config(None, ["optim.lr=0.001"])) == {}
    # a method's key ignores the other methods' sections
    cfg = load_config(None, ["bljust.gamma_max=0.9", "ssl.loss=cpc", "optim.lr=0.5"])
    assert training_settings(cfg, "supervised") == training_settings(cfg, "pl") == {"optim": {"lr": 0.5}}
    assert training_settings(cfg, "just") == {"optim": {"lr": 0.5}, "ssl": {"loss": "cpc"}}
    assert training_settings(cfg, "bljust")["bljust"] == {"gamma_max": 0.9}


def test_retuning_one_method_keeps_the_other_methods_runs(tiny_corpus, tmp_path):
    from bljust.compare import plan_jobs

    def keys(*overrides):
        cfg = load_config(TINY, list(overrides))
        return {j.method: j.key for j in plan_jobs(cfg, tiny_corpus, tmp_path, ["supervised", "ptft", "bljust"], [0], 8)}

    base, tuned = keys(), keys("bljust.gamma_max=0.9")
    assert tuned["supervised"] == base["supervised"] and tuned["ptft"] == base["ptft"]
    assert tuned["bljust"] != base["bljust"]
    assert keys("ssl.mask_span=5")["supervised"] == base["supervised"] != keys("optim.lr=0.5")["supervised"]


def test_the_last_wave_of_cpu_jobs_shares_the_cores_instead_of_leaving_one_idle():
    from bljust.compare import cpu_threads, may_start

    def waves(jobs: int, parallel: int, on_gpu: bool = False) -> list[int]:
        """Jobs running after each start-up round, when the running jobs end one at a time."""
        running, waiting, out = 0, jobs, []
        while waiting or running:
            while may_start(running, waiting, parallel, on_gpu):
                running, waiting = running + 1, waiting - 1
            out.append(running)
            running -= 1
        return out

    # The demo: 5 jobs on 2 cores. Two run; when one ends, one more starts; when three are left,
    # they all run at once instead of the fifth running alone on a core.
    assert waves(5, 2) == [2, 2, 3, 2, 1]
    assert waves(15, 2).count(3) == 1 and max(waves(15, 2)) == 3
    assert waves(7, 4)[:2] == [4, 6]
    assert max(waves(5, 2, on_gpu=True)) == 2  # one job per GPU, always
    assert max(waves(3, 1)) == 1
    # Every job of a wave runs on one thread; only a job alone on a machine gets all the cores.
    assert cpu_threads(2, 2, 3) == 1 and cpu_threads(2, 2, 1) == 2
