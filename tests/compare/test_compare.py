"""``bljust compare`` end to end on the tiny corpus: every method under both budget rules, the report,
reuse, re-scoring, resume and the probes; a transducer comparison."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil

import pytest
import torch

from bljust.compare.budget import BUDGET_RULES, ptft_pretrain_steps
from bljust.compare.jobs import OPTIONAL_EVAL_SPLITS, plan_jobs
from bljust.compare.results import cpu_model, validate_results
from bljust.config import load_config
from bljust.engine.precision import native_bf16
from bljust.methods import METHOD_NAMES
from tests.compare.conftest import ALL, ARGS, BUDGET, compare
from tests.conftest import TINY


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
        assert run["processor"] == cpu_model()
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
    for path in (out / "runs").glob("*/record.json"):  # as if trained on another machine: a re-evaluation keeps it
        path.write_text(json.dumps(json.loads(path.read_text()) | {"processor": "a CPU elsewhere"}))
    r = compare("--data", str(tiny_corpus), "--out", str(out), *ALL, *ARGS, "--set", "decode.lm_weights=[1.0]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("re-evaluating") == 5
    assert {p: p.stat().st_mtime_ns for p in best} == best  # nothing retrained
    after = json.loads((out / "results.json").read_text())
    for old, new in zip(before["runs"], after["runs"]):
        assert new["train_seconds"] == old["train_seconds"] and new["test"]["cer"] == old["test"]["cer"]
        assert new["precision"] == old["precision"] and new["processor"] == "a CPU elsewhere"
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
