"""``bljust compare`` end to end on the tiny corpus: every method under both budget rules, the report,
reuse, re-scoring and resume; and the budget rules, run keys and scheduling on their own."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from bljust.compare.budget import (
    ABLATIONS,
    BUDGET_RULES,
    method_settings,
    ptft_pretrain_steps,
    spent,
    stream_batches,
    train_method,
)
from bljust.compare.jobs import OPTIONAL_EVAL_SPLITS, plan_jobs, training_settings
from bljust.compare.results import RUN_KEYS, SCHEMA, validate_results
from bljust.config import load_config
from bljust.engine.precision import native_bf16
from bljust.lm import PreparedLM
from bljust.methods import METHOD_NAMES
from bljust.methods.bljust import make_plan, plan_cost
from tests.conftest import REPO, TINY

DEMO = REPO / "recipes" / "demo.yaml"
BUDGET = 4
# tiny.yaml pins N1 = 1 and N2 = 2. Under equal passes a budget of 4 shrinks BL-JUST's one outer epoch to
# N1 = 1, N2 = 1 (3 passes) and N3 = 1; under equal labeled updates it is K = 2 epochs of N1 = 1 + N2 = 2.
ARGS = ["--config", str(TINY), "--budget", str(BUDGET), "--jobs", "2", "--no-progress"]
ALL = ["--methods", ",".join(METHOD_NAMES), "--seeds", "1"]


def compare(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bljust", "compare", *args], capture_output=True, text=True, check=False,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)


def _compare_every_method(tiny_corpus, tmp_path_factory, rule: str):
    out = tmp_path_factory.mktemp(f"compare-{rule}")
    r = compare("--data", str(tiny_corpus), "--out", str(out), *ALL, *ARGS, "--budget-rule", rule)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


@pytest.fixture(scope="module")
def passes(tiny_corpus, tmp_path_factory):
    """Every method, seed 0, a budget of 4 batch passes."""
    return _compare_every_method(tiny_corpus, tmp_path_factory, "passes")


@pytest.fixture(scope="module")
def labeled(tiny_corpus, tmp_path_factory):
    """Every method, seed 0, a budget of 4 supervised updates."""
    return _compare_every_method(tiny_corpus, tmp_path_factory, "labeled")


@pytest.mark.parametrize("rule", BUDGET_RULES)
def test_every_method_runs_under_each_budget_rule(rule, request):
    out, r = request.getfixturevalue(rule)
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert results["failed"] == [] and sorted(run["method"] for run in results["runs"]) == sorted(METHOD_NAMES)
    assert results["budget"]["budget_rule"] == rule and results["budget"]["value"] == BUDGET
    assert results["machine"]["processor"].endswith(" bf16)")  # the CPU's model and whether it has native bf16
    runs = {run["method"]: run for run in results["runs"]}
    for run in runs.values():
        assert run["budget_rule"] == rule and run["budget"] == BUDGET
        assert not set(OPTIONAL_EVAL_SPLITS) & set(run)  # the corpus has none of them
        assert (out / run["run_dir"] / "best.pt").is_file()
        assert set(run["test"]["groups"]) == {"espeak", "flite", "festival"}
        assert run["wall_seconds"] >= run["train_seconds"] > 0
        assert run["precision"] == ("bfloat16" if native_bf16(torch.device("cpu")) else "float32")  # train.amp auto
        if rule == "passes":  # the same forward/backward batch passes, spent exactly
            assert run["batch_passes"] == BUDGET, run
        else:  # the same supervised updates; PL's pseudo-labeled batches are labeled ones
            assert (run["steps"] if run["method"] == "pl" else run["labeled_batches"]) == BUDGET, run
    assert runs["supervised"]["unlabeled_batches"] == runs["pl"]["unlabeled_batches"] == 0
    assert runs["supervised"]["unlabeled_passes"] == 0
    cfg = load_config(TINY)
    if rule == "passes":
        assert runs["just"]["steps"] == BUDGET // 2 and runs["ptft"]["steps"] == BUDGET
        assert "bljust.finetune_steps=1" in runs["bljust"]["settings"] and runs["bljust"]["steps"] == 3
    else:  # each method's unlabeled work comes on top
        n_pt = ptft_pretrain_steps(cfg, BUDGET)
        assert runs["ptft"]["steps"] == BUDGET + n_pt and runs["ptft"]["unlabeled_batches"] == n_pt
        assert runs["just"]["steps"] == runs["just"]["unlabeled_batches"] == BUDGET
        assert "bljust.outer_epochs=2" in runs["bljust"]["settings"]
        assert runs["bljust"]["unlabeled_batches"] == 2 * (1 + 2) and runs["bljust"]["steps"] == 6
    title = {"passes": "equal batch passes", "labeled": "equal labeled updates"}[rule]
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(f"# bljust compare ({title}): ") and f"## Cost ({title})" in markdown
    assert results["selection"].endswith("); test evaluated once") and "dev_other" not in markdown
    assert "| method | labeled batches | unlabeled batches | batch passes | train min | wall min |" in markdown
    assert f"({rule} rule)" in r.stdout


def test_report_is_self_contained_and_has_the_table(passes):
    out, r = passes
    html = (out / "report.html").read_text()
    assert (out / "report.md").is_file()
    for ref in ("http://", "https://", "<script src", "<link"):
        assert ref not in html
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<table" in html and "BL-JUST" in html and "supervised" in html
    assert "test CER" in r.stdout and "report.html" in r.stdout  # the headline table is printed
    # the methods with an SSL loss log g on the held-out unlabeled utterances; the report plots it
    assert (out / "plots" / "ssl_convergence.png").is_file() and "held-out unlabeled" in html


def test_results_and_every_run_name_the_code_that_made_them(passes):
    import bljust

    out, _ = passes
    results = json.loads((out / "results.json").read_text())
    assert results["code"]["version"] == bljust.__version__
    assert all(run["code"] == results["code"] for run in results["runs"])
    if results["code"]["commit"]:  # a git checkout (CI clones one)
        assert re.fullmatch(r"[0-9a-f]{40}", results["code"]["commit"])
        assert f"commit {results['code']['commit'][:7]}" in (out / "report.md").read_text()
    assert "| code | " + bljust.__version__ in (out / "report.md").read_text()


def test_rerun_reuses_finished_runs(passes, tiny_corpus):
    out, _ = passes
    records = sorted((out / "runs").glob("*/record.json"))
    before = {p: p.stat().st_mtime_ns for p in records}
    r = compare("--data", str(tiny_corpus), "--out", str(out), *ALL, *ARGS)  # passes is the default rule
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reused") == 5 + 6 and "started" not in r.stderr  # the runs, then the probes
    assert {p: p.stat().st_mtime_ns for p in records} == before


def test_the_other_rule_adopts_the_runs_that_train_the_same_model(passes, tiny_corpus, tmp_path):
    """``--reuse-from``: supervised and PL make the same steps under both rules, so the passes-rule runs (and their
    probes) are copied into a labeled-rule comparison; PT+FT's share differs, so it trains."""
    src, _ = passes
    source_records = {p: p.read_text() for p in (src / "runs").glob("*/record.json")}
    out = tmp_path / "labeled"
    args = ["--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,pl,ptft", "--seeds", "1", *ARGS,
            "--budget-rule", "labeled", "--reuse-from", str(src)]
    wrong = compare(*args[:-1], str(tmp_path / "nowhere"))  # a directory that holds no comparison is named
    assert wrong.returncode != 0 and f"--reuse-from {tmp_path / 'nowhere'}: not a comparison directory" in wrong.stderr
    assert not (out / "runs").exists()
    r = compare(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"compare: 2 of 3 run(s) not trained here adopted from {src}" in r.stderr
    for method in ("supervised", "pl"):
        assert f"{method}-seed0: the same model trained in {src / 'runs' / f'{method}-seed0'} (passes rule)" in r.stderr
        assert f"{method}-seed0: started" not in r.stderr and f"probe-{method}-seed0: started" not in r.stderr
    assert "ptft-seed0: started" in r.stderr and "probe-ptft-seed0: started" in r.stderr
    results = json.loads((out / "results.json").read_text())
    validate_results(results)  # every run, the adopted ones included, is a labeled-rule run
    runs = {run["method"]: run for run in results["runs"]}
    before = {run["method"]: run for run in json.loads((src / "results.json").read_text())["runs"]}
    for method in ("supervised", "pl"):
        assert runs[method]["budget_rule"] == "labeled" and runs[method]["key"] != before[method]["key"]
        assert runs[method]["adopted_from"] == str(src / "runs" / f"{method}-seed0")
        assert runs[method]["test"] == before[method]["test"] and runs[method]["probe"] == before[method]["probe"]
    assert {p: p.read_text() for p in (src / "runs").glob("*/record.json")} == source_records  # source untouched
    again = compare(*args)  # the adopted runs are now this comparison's own
    assert again.returncode == 0, again.stderr[-3000:]
    assert "started" not in again.stderr and "adopted" not in again.stderr
    # re-scoring the copies (new decoding settings) rewrites their hypotheses, never the source's
    def files(root):
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (root / "runs").glob("*/eval/*.txt")}

    source_files, copies = files(src), files(out)
    rescored = compare(*args, "--set", "decode.lm_weights=[1.0]")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert "trained earlier; re-evaluating" in (out / "runs" / "supervised-seed0.log").read_text()
    assert files(src) == source_files
    assert all(files(out)[p][1] != stamp for p, (_, stamp) in copies.items())  # the copies were rewritten


def test_a_run_with_the_same_settings_is_adopted_whatever_the_recipe_file(passes, tiny_corpus, tmp_path, monkeypatch):
    """``--reuse-from`` under the same rule: a run that trained with the settings this one would (BL-JUST's
    included) is copied with its probe, although the comparison's config differs in a value the budget
    overrides, so the keys differ. (A run whose settings differ is trained: PT+FT in the test above.) A run keyed
    by another KEY_VERSION (older training code) is never adopted."""
    from bljust.compare import jobs

    src, _ = passes
    out = tmp_path / "again"
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "bljust", "--seeds", "1", *ARGS,
                "--set", "train.max_steps=7", "--reuse-from", str(src))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"bljust-seed0: the same model trained in {src / 'runs' / 'bljust-seed0'} (passes rule), adopted" in r.stderr
    assert "bljust-seed0: started" not in r.stderr and "probe-bljust-seed0: started" not in r.stderr
    assert "compare: 1 of 1 run(s) not trained here adopted" in r.stderr
    [run] = json.loads((out / "results.json").read_text())["runs"]
    [before] = [run for run in json.loads((src / "results.json").read_text())["runs"] if run["method"] == "bljust"]
    assert run["key"] != before["key"] and run["test"] == before["test"] and run["probe"] == before["probe"]
    assert run["adopted_from"] == str(src / "runs" / "bljust-seed0")

    cfg = load_config(TINY, ["train.max_steps=7"])
    [job] = plan_jobs(cfg, tiny_corpus.resolve(), tmp_path / "x", ["bljust"], [0], BUDGET)
    assert jobs.same_model(job, cfg, tiny_corpus.resolve(), "", src / "runs" / "bljust-seed0")
    monkeypatch.setattr(jobs, "KEY_VERSION", jobs.KEY_VERSION + 1)
    assert not jobs.same_model(job, cfg, tiny_corpus.resolve(), "", src / "runs" / "bljust-seed0")


def test_a_run_kept_without_its_model_files_is_adopted_when_nothing_needs_them(passes, tiny_corpus, tmp_path):
    """A comparison archived without model files (benchmarks/issue14/bench.sh) still lends its runs to the other
    rule: PL's run, evaluated with this comparison's decoding and with its probe beside it, is adopted without
    best.pt; without its probe it is not (the probe would need the model). Supervised keeps its model: the
    random-init probe reads the architecture from it."""
    from bljust.compare import jobs

    src, _ = passes
    kept = tmp_path / "kept"
    shutil.copytree(src, kept)
    for model in (kept / "runs" / "pl-seed0").rglob("*.pt"):
        model.unlink()
    out = tmp_path / "labeled"
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised,pl", "--seeds", "1", *ARGS,
                "--budget-rule", "labeled", "--reuse-from", str(kept))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "compare: 2 of 2 run(s) not trained here adopted" in r.stderr
    assert "pl-seed0: started" not in r.stderr and "probe-pl-seed0: started" not in r.stderr
    pl = {run["method"]: run for run in json.loads((out / "results.json").read_text())["runs"]}["pl"]
    [before] = [run for run in json.loads((src / "results.json").read_text())["runs"] if run["method"] == "pl"]
    assert pl["test"] == before["test"] and pl["probe"] == before["probe"] and pl["budget_rule"] == "labeled"

    cfg = load_config(out / "config.yaml")
    [job] = plan_jobs(cfg, tiny_corpus, tmp_path / "x", ["pl"], [0], BUDGET, "labeled")
    job = dataclasses.replace(job, decode_key=pl["decode_key"])
    assert jobs._usable(job, kept / "runs" / "pl-seed0")
    assert not jobs._usable(dataclasses.replace(job, decode_key="other"), kept / "runs" / "pl-seed0")
    (kept / "probes" / "pl-seed0" / "record.json").unlink()
    assert not jobs._usable(job, kept / "runs" / "pl-seed0")
    assert jobs._usable(job, kept / "runs" / "supervised-seed0")  # a model file is always enough


def test_runs_are_also_decoded_with_the_corpus_lm_tuned_on_dev(passes):
    out, _ = passes
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


def test_new_decoding_settings_rescore_without_retraining(passes, tiny_corpus):
    out, _ = passes
    before = json.loads((out / "results.json").read_text())
    best = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/best.pt")}
    r = compare("--data", str(tiny_corpus), "--out", str(out), *ALL, *ARGS, "--set", "decode.lm_weights=[1.0]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("re-evaluating") == 5
    assert {p: p.stat().st_mtime_ns for p in best} == best  # nothing retrained
    after = json.loads((out / "results.json").read_text())
    for old, new in zip(before["runs"], after["runs"]):
        assert new["train_seconds"] == old["train_seconds"] and new["test"]["cer"] == old["test"]["cer"]
        assert new["precision"] == old["precision"]
        assert [g["lm_weight"] for g in new["dev"]["lm"]["grid"]] == [1.0]
    # and back: the original settings re-score again, to the same numbers as the first time
    r = compare("--data", str(tiny_corpus), "--out", str(out), *ALL, *ARGS)
    assert r.returncode == 0 and r.stderr.count("re-evaluating") == 5
    again = json.loads((out / "results.json").read_text())
    assert [x["test"]["lm"] for x in again["runs"]] == [x["test"]["lm"] for x in before["runs"]]


def test_changed_settings_do_not_reuse_a_run(passes, tiny_corpus):
    out, _ = passes
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised", "--seeds", "1",
                *ARGS, "--set", "optim.lr=0.001")
    assert r.returncode == 2 and "other settings" in r.stderr
    r = compare("--data", str(tiny_corpus), "--out", str(out), "--methods", "supervised", "--seeds", "1",
                *ARGS, "--budget-rule", "labeled")  # same steps, but a run of another comparison
    assert r.returncode == 2 and "other settings" in r.stderr


def test_a_killed_compare_resumes_and_matches(passes, tiny_corpus, tmp_path):
    """Every job dies after step 3 (checkpoint at step 2); the re-run resumes each and ends where an
    uninterrupted run ends. The two seeds are two different trainings."""
    out, _ = passes
    args = ["--data", str(tiny_corpus), "--out", str(tmp_path), "--methods", "supervised", "--seeds", "2", *ARGS]
    r = compare(*args, env={"BLJUST_FAULT_AFTER_STEP": "3"})
    assert r.returncode == 1 and "failed" in r.stderr
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == []
    r = compare(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [torch.load(tmp_path / "runs" / f"supervised-seed{s}" / "best.pt", weights_only=True)["model"]
               for s in (0, 1)]
    clean = torch.load(out / "runs" / "supervised-seed0" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[0][k], clean[k]) for k in clean)
    assert any(not torch.equal(resumed[0][k], resumed[1][k]) for k in clean)


def test_validate_results_names_the_bad_key_and_checks_the_rule(passes, labeled):
    results = json.loads((passes[0] / "results.json").read_text())
    broken = json.loads(json.dumps(results))
    del broken["runs"][1]["test"]["cer"]
    with pytest.raises(ValueError, match=r"runs\[1\]\.test lacks 'cer'"):
        validate_results(broken)
    over = json.loads(json.dumps(results))
    over["runs"][0]["batch_passes"] = BUDGET + 1
    with pytest.raises(ValueError, match=r"runs\[0\] \(\w+\) made 5 batch passes on a budget of 4"):
        validate_results(over)
    results = json.loads((labeled[0] / "results.json").read_text())
    for run in results["runs"]:
        run["labeled_batches"] -= 1
        run["steps"] -= 1
        with pytest.raises(ValueError, match="supervised updates on a budget of 4"):
            validate_results(results)
        run["labeled_batches"] += 1
        run["steps"] += 1
    results["budget"]["budget_rule"] = "passes"  # runs of another rule
    with pytest.raises(ValueError, match="ran under the rule 'labeled'"):
        validate_results(results)


# ------------------------------------------------------------------ the budget rules, without training


@pytest.mark.parametrize("budget", [1000, 4])
@pytest.mark.parametrize("rule", BUDGET_RULES)
def test_every_method_gets_its_share_of_the_budget(rule, budget):
    """On the demo config with its realistic stream sizes (40 labeled, 145 unlabeled batches a pass)."""
    cfg = load_config(DEMO)
    shares = {m: method_settings(m, cfg, budget, 40, 145, rule) for m in METHOD_NAMES}
    for method, (settings, steps) in shares.items():
        assert load_config(DEMO, settings).train.max_steps == steps
    assert shares["supervised"] == shares["pl"] == ([f"train.max_steps={budget}"], budget)
    if rule == "passes":
        assert shares["ptft"] == ([f"train.max_steps={budget}"], budget)
        assert shares["just"] == ([f"train.max_steps={budget // 2}"], budget // 2)
    else:  # PT+FT fine-tunes for the budget after pre-training at its configured ratio (0.2 : 0.8)
        n_pt = round(0.2 / 0.8 * budget)
        assert shares["ptft"] == ([f"ptft.pretrain_steps={n_pt}", f"train.max_steps={budget + n_pt}"], budget + n_pt)
        assert shares["just"] == ([f"train.max_steps={budget}"], budget)
        pinned = load_config(DEMO, ["ptft.pretrain_steps=7"])
        assert method_settings("ptft", pinned, budget, 40, 145, rule)[0][0] == "ptft.pretrain_steps=7"


@pytest.mark.parametrize("budget", [1000, 4])
@pytest.mark.parametrize("rule", BUDGET_RULES)
@pytest.mark.parametrize("first", [None, 200])
def test_bljust_plan_spends_the_budget_exactly_and_the_job_reproduces_it(rule, budget, first):
    unit = rule  # BL-JUST plans in the rule's unit (bljust.methods.bljust.UNITS)
    cfg = load_config(DEMO, [f"bljust.first_explore_steps={first if first is not None else 'null'}",
                             f"bljust.explore_steps={0 if first is None else 10}"])
    planned = make_plan(cfg.bljust, budget, 40, 145, unit=unit)
    assert plan_cost(planned, unit) == budget and planned.finetune >= 0  # never over, nothing left unspent
    settings, steps = method_settings("bljust", cfg, budget, 40, 145, rule)
    job_cfg = load_config(DEMO, settings)
    assert steps == job_cfg.train.max_steps == planned.total
    for lab, unl in ((40, 145), (7, 9)):  # the job's own streams do not matter: the plan is pinned
        job_plan = make_plan(job_cfg.bljust, job_cfg.train.max_steps, lab, unl)
        assert (job_plan.outer_epochs, job_plan.explore, job_plan.explore_0, job_plan.joint, job_plan.finetune,
                job_plan.total) == (planned.outer_epochs, planned.explore, planned.explore_0, planned.joint,
                                    planned.finetune, planned.total)
        assert plan_cost(job_plan, unit) == budget


def test_a_bljust_plan_that_cannot_fit_is_an_error():
    cfg = load_config(DEMO, ["bljust.outer_epochs=20"])
    for rule in BUDGET_RULES:
        with pytest.raises(ValueError, match="exceed the budget"):
            method_settings("bljust", cfg, 50, 40, 145, rule)
    with pytest.raises(ValueError, match="no joint step"):
        method_settings("just", cfg, 1, 40, 145, "passes")
    with pytest.raises(ValueError, match="unknown budget rule"):
        method_settings("supervised", cfg, 50, 40, 145, "epochs")


# ------------------------------------------------------------------ BL-JUST's ablations, without training


@pytest.mark.parametrize("budget", [1000, 1001])
@pytest.mark.parametrize("rule", BUDGET_RULES)
def test_an_ablation_is_bljust_with_its_settings_after_the_comparisons_and_bljusts_share(rule, budget):
    """On the demo config with the comparison's own --set, which each ablation's settings override."""
    overrides = ["bljust.explore_steps=3", "bljust.first_explore_steps=5", "bljust.finetune_steps=100",
                 "bljust.gamma_schedule=cosine"]
    cfg = load_config(DEMO, overrides)
    bljust, _ = method_settings("bljust", cfg, budget, 40, 145, rule)
    plans = {}
    for ablation, own in ABLATIONS.items():
        assert train_method(ablation) == "bljust"
        settings, steps = method_settings(ablation, cfg, budget, 40, 145, rule)
        assert settings[-len(own):] == list(own)  # last: they win over the pinned plan and the comparison's --set
        job = load_config(DEMO, [*overrides, *settings])  # the job reads config.yaml, then its settings
        plan = plans[ablation] = make_plan(job.bljust, job.train.max_steps, 7, 9)  # its own plan, in steps
        assert steps == job.train.max_steps == plan.total
        odd = 1 if rule == "passes" and ablation == "bljust-no-finetune" else 0  # a pass no joint step fits
        assert budget - odd <= plan_cost(plan, rule) <= budget
    assert plans["bljust-no-explore"].explore_total == 0 and plans["bljust-no-explore"].finetune >= 100
    no_ft = plans["bljust-no-finetune"]
    assert no_ft.finetune == 0 and no_ft.explore == 3 and no_ft.explore_0 == 5 and no_ft.joint_last > no_ft.joint
    assert plan_cost(no_ft, rule) == budget - (budget % 2 if rule == "passes" else 0)
    # constant γ changes no step count: BL-JUST's own plan, then the schedule
    assert method_settings("bljust-const-gamma", cfg, budget, 40, 145, rule)[0] == [
        *bljust, "bljust.gamma_schedule=constant"]


def test_an_ablation_the_config_already_has_is_flagged(caplog):
    with caplog.at_level("WARNING", logger="bljust.compare"):
        method_settings("bljust-no-explore", load_config(DEMO), 1000, 40, 145)  # the demo's BL-JUST has N1 = 0
    assert "trains the same run as bljust" in caplog.text


def _record(method: str, labeled_batches: int, steps: int) -> dict:
    """A run record of results.json, valid but for what the test sets."""
    rates = {"wer": 0.5, "cer": 0.3, "groups": {}}
    values = {int: 0, float: 0.0, str: "", list: [], dict: {}}
    return {**{key: values[tp] for key, tp in RUN_KEYS.items()}, "method": method, "budget_rule": "labeled",
            "budget": 40, "labeled_batches": labeled_batches, "steps": steps, "batch_passes": steps,
            "dev": rates, "test": rates}


def test_optional_splits_are_validated_like_test_when_present():
    run = _record("supervised", 40, 40)
    results = {"schema": SCHEMA, "data": "d", "corpus": {}, "methods": ["supervised"], "seeds": [0], "machine": {},
               "failed": [], "runs": [run],
               "budget": {"budget_rule": "labeled", "rule_text": "t", "unit": "labeled_updates", "value": 40}}
    validate_results(results)  # a record without them (an older one, or a corpus without them) is valid
    for split in OPTIONAL_EVAL_SPLITS:
        run[split] = {"wer": 0.5, "cer": 0.3, "groups": {}, "lm": {"wer": 0.4, "cer": 0.2, "lm_weight": 1.0,
                                                                    "word_score": 0.0}}
    validate_results(results)
    del run["test_other"]["lm"]["word_score"]
    with pytest.raises(ValueError, match=r"runs\[0\]\.test_other\.lm lacks 'word_score'"):
        validate_results(results)
    run["dev_other"]["cer"] = 12.0
    with pytest.raises(ValueError, match=r"runs\[0\]\.dev_other\.cer = 12.0 is not a rate"):
        validate_results(results)


def test_ablations_are_accounted_as_bljust_under_the_labeled_rule():
    """Supervised updates are the labeled batches, however many exploration steps came on top."""
    runs = [_record(m, 40, 70) for m in ("bljust", *ABLATIONS)]
    assert {spent(run, "labeled") for run in runs} == {40}
    results = {"schema": SCHEMA, "data": "d", "corpus": {}, "methods": ["bljust", *ABLATIONS], "seeds": [0],
               "machine": {}, "failed": [], "runs": runs,
               "budget": {"budget_rule": "labeled", "rule_text": "t", "unit": "labeled_updates", "value": 40}}
    validate_results(results)
    runs[-1]["labeled_batches"] = 39
    with pytest.raises(ValueError, match=r"runs\[3\] \(bljust-const-gamma\) made 39 supervised updates"):
        validate_results(results)


def test_ablations_run_only_when_named_under_their_own_keys(tiny_corpus, tmp_path):
    from bljust.compare import comparison_methods

    assert not set(ABLATIONS) & set(comparison_methods(tiny_corpus, None))
    assert comparison_methods(tiny_corpus, ["bljust", "bljust-no-finetune"]) == ["bljust", "bljust-no-finetune"]

    def jobs(methods, *overrides):  # N2 from the streams: the ablations are planned on them too
        cfg = load_config(TINY, ["bljust.joint_steps=null", *overrides])
        return {j.method: j for j in plan_jobs(cfg, tiny_corpus, tmp_path, methods, [0], 40, "labeled")}

    every = jobs(["ptft", "bljust", *ABLATIONS])
    assert len({j.key for j in every.values()}) == len(every)
    for ablation, own in ABLATIONS.items():
        job = every[ablation]
        assert job.run_dir == tmp_path / "runs" / f"{ablation}-seed0" and job.settings[-len(own):] == list(own)
        alone = jobs([ablation])[ablation]  # without bljust beside it, still planned from the streams
        assert (alone.key, alone.settings) == (job.key, job.settings)
    retuned_ptft, retuned_bljust = jobs(list(every), "ptft.pretrain_fraction=0.3"), jobs(list(every), "bljust.rho=0.1")
    for ablation in ABLATIONS:
        assert retuned_ptft[ablation].key == every[ablation].key != retuned_bljust[ablation].key


def test_stream_batches_counts_what_the_training_run_batches(tiny_corpus, tmp_path):
    """With speed perturbation, the held-out unlabeled utterances and the job's seed, as ``Run`` does."""
    from bljust.engine.run import Run

    cfg = load_config(TINY, ["data.speed_perturb=[0.9,1.1]", "data.heldout_unlabeled_fraction=0.3"])
    plain = stream_batches(load_config(TINY, ["data.heldout_unlabeled_fraction=0"]), tiny_corpus)
    for seed in (0, 1):
        seeded = load_config(TINY, ["data.speed_perturb=[0.9,1.1]", "data.heldout_unlabeled_fraction=0.3",
                                    f"train.seed={seed}"])
        run = Run(seeded, tiny_corpus, tmp_path / f"seed{seed}", method="bljust", ssl=True)
        try:
            expected = (run.add_stream("labeled", run.labeled).batches_per_epoch(),
                        run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1).batches_per_epoch())
        finally:
            run.close()
        assert stream_batches(cfg, tiny_corpus, seed) == expected
    counted = stream_batches(cfg, tiny_corpus, 0)
    assert counted[0] > plain[0] and counted[1] <= plain[1]


# ------------------------------------------------------------------ run keys


def test_run_keys_hash_only_non_default_training_settings():
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
    def keys(*overrides, rule="passes"):
        cfg = load_config(TINY, list(overrides))
        return {j.method: j.key for j in plan_jobs(cfg, tiny_corpus, tmp_path, ["supervised", "ptft", "bljust"],
                                                   [0], 8, rule)}

    base, tuned = keys(), keys("bljust.gamma_max=0.9")
    assert tuned["supervised"] == base["supervised"] and tuned["ptft"] == base["ptft"]
    assert tuned["bljust"] != base["bljust"]
    assert keys("ssl.mask_span=5")["supervised"] == base["supervised"] != keys("optim.lr=0.5")["supervised"]
    # the budget rule is part of every key, even where the settings are the same under both
    assert keys(rule="labeled")["supervised"] != base["supervised"]


def test_pl_with_lm_pseudo_labels_gets_the_lm_and_its_hash_in_the_key(tiny_corpus, tmp_path):
    lm = PreparedLM(str(tmp_path / "2gram.arpa"), "aaaa", "dk")
    other_lm = PreparedLM(lm.path, "bbbb", "dk2")  # the same file name, other contents

    def jobs(lm_, *overrides):
        cfg = load_config(TINY, ["pl.decode=lm", *overrides])
        return {j.method: j for j in plan_jobs(cfg, tiny_corpus, tmp_path, ["supervised", "pl"], [0], 4, "passes",
                                               lm_)}

    base = jobs(lm)
    assert base["pl"].settings == ["train.seed=0", "train.max_steps=4", f"decode.lm={lm.path}"]
    assert base["supervised"].settings == ["train.seed=0", "train.max_steps=4"]
    changed = jobs(other_lm)
    assert changed["pl"].key != base["pl"].key and changed["supervised"].key == base["supervised"].key
    assert changed["pl"].decode_key == "dk2"
    # PL's pseudo-labels depend on the decoding grid it tunes on dev; the others' training does not
    grid = jobs(lm, "decode.lm_weights=[1.0]")
    assert grid["pl"].key != base["pl"].key and grid["supervised"].key == base["supervised"].key
    # greedy pseudo-labels: the LM and the decode section stay out of PL's key and settings
    greedy = {j.method: j for j in plan_jobs(load_config(TINY), tiny_corpus, tmp_path, ["pl"], [0], 4, "passes", lm)}
    assert greedy["pl"].settings == ["train.seed=0", "train.max_steps=4"]
    greedy_other = plan_jobs(load_config(TINY), tiny_corpus, tmp_path, ["pl"], [0], 4, "passes", other_lm)
    assert greedy_other[0].key == greedy["pl"].key
    with pytest.raises(ValueError, match="pl.decode=lm needs a word LM"):
        jobs(PreparedLM())


def test_pl_with_lm_uses_the_corpus_lm(tiny_corpus, tmp_path):
    from bljust.lm import prepare_lm

    cfg = load_config(TINY, ["pl.decode=lm"])
    lm = prepare_lm(cfg.decode, tiny_corpus, tmp_path)
    assert lm.path == str((tmp_path / "lm" / "2gram.arpa").resolve()) and len(lm.sha256) == 16
    (job,) = plan_jobs(cfg, tiny_corpus, tmp_path, ["pl"], [0], 4, "labeled", lm)
    job_cfg = load_config(TINY, ["pl.decode=lm", *job.settings])
    assert job_cfg.decode.lm == lm.path and job_cfg.pl.decode == "lm"


# ------------------------------------------------------------------ scheduling


def test_the_last_wave_of_cpu_jobs_shares_the_cores_instead_of_leaving_one_idle():
    from bljust.compare.jobs import cpu_threads, may_start

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


# ------------------------------------------------------------------ linear probes, the optional splits and the topline


def test_every_encoder_is_probed_beside_a_random_init_one(passes):
    out, _ = passes
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        record = json.loads((out / "probes" / f"{run['method']}-seed0" / "record.json").read_text())
        assert run["probe"]["cer"] == record["dev"]["cer"] and run["probe"]["model"] == record["model"]
        assert record["model"].endswith(f"runs/{run['method']}-seed0/best.pt") and record["encoder"] == "trained"
        assert record["train"]["loss_end"] < record["train"]["loss_start"]
    base = results["probe"]["random-init"]  # borrows supervised's architecture, units and feature statistics
    assert base["model"].endswith("runs/supervised-seed0/best.pt") and 0 <= base["cer"]
    assert results["probe"]["settings"]["steps"] == 300 and results["probe"]["settings"]["random_init"] is False
    section = (out / "report.md").read_text().split("## Linear probe dev CER")[1].split("\n## ")[0]
    assert "| random init | 1 |" in section and "| BL-JUST | 1 |" in section


COPIED = {"test_unseen": "test", "dev_other": "dev", "test_other": "test"}
"""The scored optional splits ``_corpus`` makes, as copies of these, when the source corpus lacks them."""


def _corpus(src, dst, optional: bool):
    """``src``'s four splits (linked), and with ``optional`` every optional split: ``src``'s own, or made here
    (test_unseen, dev_other and test_other: copies of the splits ``COPIED`` names; unlabeled_text: the unlabeled split with the
    transcripts that utterances.tsv keeps) when ``src`` lacks it."""
    import dataclasses

    from lhotse import SupervisionSet

    from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, has_split, load_split, manifest_paths, write_split
    from bljust.data.text import normalize_transcript

    dst.mkdir()
    for split in (*SPLITS, *(OPTIONAL_SPLITS if optional else ())):
        if has_split(src, split):
            for path in manifest_paths(src, split):
                (dst / path.name).symlink_to(path)
    (dst / "lm_text.txt").symlink_to(src / "lm_text.txt")
    for split, source in COPIED.items():
        if optional and not has_split(dst, split):
            write_split(dst, split, *load_split(src, source).decompose()[:2])
    if optional and not has_split(dst, "unlabeled_text"):
        rows = [line.split("\t") for line in (src / "utterances.tsv").read_text().splitlines()[1:]]
        texts = {row[0]: normalize_transcript(row[-1]) for row in rows}  # as the synthesiser writes transcripts
        recordings, supervisions, _ = load_split(src, "unlabeled").decompose()
        write_split(dst, "unlabeled_text", recordings,
                    SupervisionSet.from_segments(dataclasses.replace(s, text=texts[s.id]) for s in supervisions))
    return dst


@pytest.fixture(scope="module")
def topline(tiny_corpus, tmp_path_factory):
    """supervised and the topline, seed 0, on a corpus with every optional split."""
    data = _corpus(tiny_corpus, tmp_path_factory.mktemp("optional") / "data", optional=True)
    out = tmp_path_factory.mktemp("compare-topline")
    r = compare("--data", str(data), "--out", str(out), "--methods", "supervised,topline", "--seeds", "1", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return data, out


def test_topline_trains_supervised_on_every_transcript_and_the_optional_splits_are_scored(topline):
    data, out = topline
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    runs = {run["method"]: run for run in results["runs"]}
    assert set(runs) == {"supervised", "topline"} and {*COPIED, "unlabeled_text"} <= set(results["corpus"])
    top, sup = runs["topline"], runs["supervised"]
    assert top["settings"] == sup["settings"] + ['data.labeled_splits=["labeled", "unlabeled_text"]']
    assert top["batch_passes"] == top["labeled_batches"] == BUDGET and top["unlabeled_batches"] == 0
    # the same budget over a larger labeled set: fewer passes over it
    assert top["labeled_hours"] / top["labeled_passes"] > sup["labeled_hours"] / sup["labeled_passes"]
    assert load_config(out / "runs" / "topline-seed0" / "config.yaml").data.labeled_splits == ["labeled",
                                                                                             "unlabeled_text"]
    for run in runs.values():
        for split in COPIED:  # decoded once, greedily and with the LM at dev's weight and word score, as test is
            assert set(run[split]["groups"]) and "grid" not in run[split]["lm"]
            chosen = ("lm_weight", "word_score")
            assert [run[split]["lm"][k] for k in chosen] == [run["dev"]["lm"][k] for k in chosen]
            for hyp in (f"{split}.hyp.txt", f"{split}.lm.hyp.txt"):
                assert (out / run["run_dir"] / "eval" / hyp).is_file()
        assert 0 <= run["probe"]["cer"]
    # the random-init probe borrows supervised's units and statistics, never the topline's
    assert results["probe"]["random-init"]["model"].endswith("runs/supervised-seed0/best.pt")
    markdown = (out / "report.md").read_text()
    assert "| supervised − topline (points) |" in markdown
    assert "| test_unseen CER % | dev_other WER % | dev_other CER % | test_other WER % | test_other CER % |" in markdown
    assert "dev_other CER share | test_other CER share |" in markdown
    assert "test, test_unseen, dev_other and test_other evaluated once" in results["selection"]


def test_a_rerun_reuses_the_topline_and_the_probes(topline):
    data, out = topline
    r = compare("--data", str(data), "--out", str(out), "--methods", "supervised,topline", "--seeds", "1", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reused") == 2 + 3 and "started" not in r.stderr


def test_the_topline_is_run_by_default_when_the_corpus_has_the_transcripts(tiny_corpus, tmp_path):
    from bljust.compare import comparison_methods

    plain = _corpus(tiny_corpus, tmp_path / "plain", optional=False)
    optional = _corpus(tiny_corpus, tmp_path / "optional", optional=True)
    assert comparison_methods(plain, None) == list(METHOD_NAMES)
    assert comparison_methods(optional, None) == [*METHOD_NAMES, "topline"]
    assert comparison_methods(optional, ["bljust"]) == ["bljust"]
    with pytest.raises(FileNotFoundError, match=r"no 'unlabeled_text' split \(missing .*unlabeled_text_recordings"):
        comparison_methods(plain, ["supervised", "topline"])
    with pytest.raises(ValueError, match="unknown method"):
        comparison_methods(plain, ["toplines"])


def test_a_corpus_that_gains_a_scored_split_rescores_its_runs_without_retraining(tiny_corpus, tmp_path):
    from bljust.compare.jobs import eval_splits
    from bljust.data.manifests import load_split, write_split

    def plan():
        return plan_jobs(load_config(TINY), data, tmp_path, ["supervised", "topline"], [0], 4)

    data = _corpus(tiny_corpus, tmp_path / "data", optional=False)
    before = plan()
    decode_keys = {tuple(j.decode_key for j in before)}
    for split, source in COPIED.items():  # each split gained changes the decode keys, never the training keys
        write_split(data, split, *load_split(tiny_corpus, source).decompose()[:2])
        after = plan()
        assert [j.key for j in after] == [j.key for j in before]
        decode_keys.add(tuple(j.decode_key for j in after))
    assert len(decode_keys) == 1 + len(COPIED)
    assert eval_splits(data) == ("dev", "test", *COPIED)  # dev first: the LM's weight is chosen there alone
    assert before[0].key != before[1].key  # the topline is another training, under the same budget
    assert before[1].settings == before[0].settings + ['data.labeled_splits=["labeled", "unlabeled_text"]']


def test_probe_jobs_follow_their_runs_keys(tiny_corpus, tmp_path):
    from bljust.compare.jobs import plan_probes, write_json

    def planned(*overrides):
        jobs = plan_jobs(load_config(TINY, list(overrides)), tiny_corpus, tmp_path, ["topline", "ptft", "supervised"],
                         [0], 4)
        for j in jobs[1:]:  # the topline never finished
            j.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(j.record_path, {"key": j.key, "decode_key": j.decode_key})
        return {p.method: p for p in plan_probes(jobs, tmp_path)}

    probes = planned()
    assert set(probes) == {"ptft", "supervised", "random-init"}
    assert probes["random-init"].source == tmp_path / "runs" / "supervised-seed0" and probes["random-init"].probe[
        "random_init"]
    assert probes["ptft"].source == tmp_path / "runs" / "ptft-seed0" and probes["ptft"].kind == "probe"
    assert len({p.key for p in probes.values()}) == 3
    retuned = planned("ptft.pretrain_fraction=0.3")  # PT+FT retrained: its probe is redone, the others are kept
    assert retuned["ptft"].key != probes["ptft"].key and retuned["supervised"].key == probes["supervised"].key
    assert retuned["random-init"].key == probes["random-init"].key


def test_labeled_splits_are_a_union_of_distinct_utterances(tiny_corpus, tmp_path):
    from bljust.config import ConfigError
    from bljust.data.manifests import load_split, write_split
    from bljust.engine.run import load_labeled

    data = _corpus(tiny_corpus, tmp_path / "data", optional=True)
    labeled, extra = load_split(data, "labeled"), load_split(data, "unlabeled_text")
    union = load_labeled(data, ["labeled", "unlabeled_text"])
    assert [c.id for c in union] == [c.id for c in labeled] + [c.id for c in extra]
    write_split(data, "test_unseen", *labeled.decompose()[:2])  # the labeled utterances again
    with pytest.raises(ValueError, match=r"utterance \S+ is in both the 'labeled' and the 'test_unseen' split"):
        load_labeled(data, ["labeled", "test_unseen"])
    for bad in ("[]", "[labeled, labeled]", "[labeled, unlabeled]"):
        with pytest.raises(ConfigError, match="data.labeled_splits"):
            load_config(TINY, [f"data.labeled_splits={bad}"])


def test_a_transducer_comparison_decodes_greedily_without_an_lm(tiny_corpus, tmp_path):
    """model.loss=rnnt: the corpus's LM text is left unused with a logged note (the lexicon beam search is
    CTC-only), every run is scored by greedy transducer decoding (the default), and a beam search re-scores without retraining."""
    args = ["--data", str(tiny_corpus), "--out", str(tmp_path), "--methods", "supervised", "--seeds", "1", *ARGS,
            "--set", "model.loss=rnnt", "--set", "model.predictor_dim=32", "--set", "model.joiner_dim=32"]
    r = compare(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no word-LM decoding (the lexicon beam search is CTC-only)" in r.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["lm"] is None and results["decoding"].startswith("greedy transducer")
    (run,) = results["runs"]
    assert "lm" not in run["test"] and run["test"]["decoding"] == results["decoding"]
    assert run["probe"]["cer"] >= 0  # the linear probe read the transducer run's encoder
    best = (tmp_path / run["run_dir"] / "best.pt").stat().st_mtime_ns
    r = compare(*args, "--set", "decode.rnnt_beam=2")
    assert r.returncode == 0 and r.stderr.count("re-evaluating") == 1, r.stderr[-3000:]
    assert (tmp_path / run["run_dir"] / "best.pt").stat().st_mtime_ns == best
    assert json.loads((tmp_path / "results.json").read_text())["runs"][0]["test"]["decoding"].startswith(
        "transducer modified beam search (beam 2")


def test_a_run_record_names_the_code_it_started_training_with(tmp_path, monkeypatch):
    """The checkout can move on while a run trains (hours here): the record names the code of the process that
    trained, read before training, not the checkout's at the end."""
    import bljust.compare.results as results_module
    import bljust.evaluate as evaluate_module
    from bljust.compare.jobs import run_job
    from bljust.methods import METHODS

    state = {"trained": False}
    monkeypatch.setattr(results_module, "code_version",
                        lambda: {"version": "x", "commit": ("b" if state["trained"] else "a") * 40, "dirty": False})
    monkeypatch.setattr(results_module, "unlabeled_seconds", lambda data: 0.0)
    monkeypatch.setattr(results_module, "run_costs", lambda summary, budget, seconds, unlabeled: {"train_seconds": 1.0})
    monkeypatch.setattr(evaluate_module, "evaluate_run", lambda *a, **k: {"dev": {"cer": 0.5}})

    def train(cfg, data, run_dir, resume):
        state["trained"] = True  # a commit lands while the run trains
        run_dir.mkdir(parents=True)
        return {}

    monkeypatch.setitem(METHODS, "supervised", train)
    run_dir = tmp_path / "runs" / "supervised-seed0"
    spec = {"run_dir": str(run_dir), "data": str(tmp_path), "threads": 1, "config": str(TINY), "settings": [],
            "device": "cpu", "method": "supervised", "seed": 0, "key": "k", "budget": 10, "budget_rule": "passes"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert run_job(tmp_path / "spec.json") == 0
    record = json.loads((run_dir / "record.json").read_text())
    assert record["code"]["commit"] == "a" * 40
