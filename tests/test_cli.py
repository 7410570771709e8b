"""Every command through the real command line, on generated data, with the tiny recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import soundfile as sf

from bljust.data.manifests import SPLITS, has_split, load_split
from bljust.methods import METHOD_NAMES
from tests.conftest import REPO, TINY


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "bljust", *args], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_corpus_synth(tmp_path):
    r = run("corpus", "synth", str(tmp_path / "c"), "--labeled-minutes", "0.1", "--unlabeled-minutes", "0.1",
            "--dev-minutes", "0.05", "--test-minutes", "0.05", "--jobs", "2", "--quiet")
    assert all(has_split(tmp_path / "c", s) for s in SPLITS)
    assert "labeled" in r.stdout and (tmp_path / "c" / "summary.json").is_file()


def test_corpus_import_folder_reports_skips(tmp_path, tiny_corpus):
    cuts = load_split(tiny_corpus, "dev").subset(first=2)
    audio = tmp_path / "audio"
    audio.mkdir()
    lines = []
    for cut in cuts:
        sf.write(audio / f"{cut.id}.wav", cut.load_audio()[0], 16000)
        lines.append(f"{cut.id}\t{cut.supervisions[0].text}")
    (audio / "broken.wav").write_bytes(b"not audio at all")
    lines.append("broken\tSOME TEXT")
    (tmp_path / "text.tsv").write_text("\n".join(lines) + "\n")
    r = run("corpus", "import", str(tmp_path / "out"), "--split", "test", "--audio-dir", str(audio),
            "--transcripts", str(tmp_path / "text.tsv"))
    assert "kept 2" in r.stdout and "broken.wav" in r.stdout
    assert len(load_split(tmp_path / "out", "test")) == 2


def test_train_evaluate_transcribe(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    r = run("train", "--data", str(tiny_corpus), "--out", str(out), "--config", str(TINY),
            "--set", "model.arch=cnn_lstm")
    assert json.loads(r.stdout)["steps"] == 4
    for f in ("config.yaml", "metrics.jsonl", "best.pt", "summary.json", "train.log"):
        assert (out / f).is_file(), f
    assert any((out / "tb").iterdir())

    r = run("evaluate", str(out), "--data", str(tiny_corpus), "--split", "test")
    result = json.loads((out / "eval" / "test.json").read_text())
    assert {"wer", "cer", "num_utterances", "num_words", "groups", "loss"} <= result.keys()
    assert result["decoding"] == "greedy CTC" and (out / "eval" / "test.hyp.txt").is_file()
    assert result["num_utterances"] == len(load_split(tiny_corpus, "test"))
    assert "WER" in r.stdout and "CER" in r.stdout

    wavs = [c.recording.sources[0].source for c in load_split(tiny_corpus, "test").subset(first=2)]
    bad, nan = tmp_path / "bad.wav", tmp_path / "nan.wav"
    bad.write_bytes(b"junk")
    x = sf.read(wavs[0], dtype="float32")[0]
    x[100] = float("nan")
    sf.write(nan, x, 16000, subtype="FLOAT")
    r = run("transcribe", str(out), wavs[0], str(bad), wavs[1], str(nan), check=False)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == wavs
    assert str(bad) in r.stderr
    assert f"{nan}: non-finite samples: 1 of {len(x)} are NaN or inf" in r.stderr

    # word-level decoding with an LM estimated from the corpus's LM text
    arpa = tmp_path / "lm.arpa"
    r = run("lm", str(tiny_corpus / "lm_text.txt"), str(arpa), "--order", "2")
    assert arpa.is_file() and "2-gram LM" in r.stdout
    vocab = {ln.split("\t")[1] for ln in arpa.read_text().split("\\2-grams:")[0].splitlines() if "\t" in ln}
    r = run("evaluate", str(out), "--data", str(tiny_corpus), "--split", "test", "--lm", str(arpa),
            "--lm-weight", "2", "--word-score", "1")
    result = json.loads((out / "eval" / "test.json").read_text())
    assert "beam search" in result["decoding"] and "word score 1" in result["decoding"] and 0 <= result["wer"] < 10
    assert set(result["greedy"]) == {"wer", "cer"}  # the greedy scores beside the LM's
    lm_hyps = (out / "eval" / "test.lm.hyp.txt").read_text().splitlines()
    hyps = [ln.split("HYP: ", 1)[1] for ln in lm_hyps if "HYP: " in ln]
    assert all(w in vocab for h in hyps for w in h.split())
    r = run("transcribe", str(out), *wavs, "--lm", str(arpa))
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines()] == wavs
    assert all(w in vocab for ln in r.stdout.splitlines() for w in ln.split("\t")[1].split())
    r = run("transcribe", str(out), *wavs, "--lm", str(tmp_path / "none.arpa"), check=False)
    assert r.returncode == 2 and "none.arpa" in r.stderr


def test_bad_config_is_a_clear_error(tmp_path, tiny_corpus):
    r = run("train", "--data", str(tiny_corpus), "--out", str(tmp_path / "r"), "--set", "model.d_modle=3",
            check=False)
    assert r.returncode == 2 and "unknown config key" in r.stderr
    r = run("train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2"), "--config", str(TINY),
            check=False)
    assert r.returncode == 2 and "no 'labeled' split" in r.stderr


def test_demo_with_tiny_recipe(tmp_path, tiny_corpus):
    """The demo runs compare: its four methods (JUST and the topline only when named), the headline table and the
    report (tests/compare/test_compare.py runs compare itself under both budget rules; the demo takes the option too)."""
    r = run("demo", "--data", str(tiny_corpus), "--out", str(tmp_path / "demo"), "--config", str(TINY),
            "--budget", "4", "--budget-rule", "labeled", "--no-progress")
    assert "budget: 4 labeled updates per run (labeled rule)" in r.stdout
    for name in ("supervised", "PT+FT", "PL", "BL-JUST"):
        assert f"| {name} | 1 |" in r.stdout
    assert "| JUST | 1 |" not in r.stdout
    assert (tmp_path / "demo" / "report.html").is_file()
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {r["method"] for r in results["runs"]} == {"supervised", "ptft", "pl", "bljust"}
    assert results["failed"] == [] and results["budget"]["budget_rule"] == "labeled"
    # The fixture is an unseen corpus, not the demo scenario's: the demo runs on it and says so.
    assert "scenario unseen, not demo" in r.stderr


def test_demo_runs_the_recipe_of_its_scenario(tmp_path, tiny_corpus, monkeypatch):
    """--scenario benchmark runs recipes/benchmark.yaml (the method benchmark) with every method; a scenario without
    a recipe of its own runs the demo's with the demo's four methods; --config and --methods win. compare itself is
    replaced: only the choice is under test."""
    import bljust.compare
    from bljust.cli import DEMO_METHODS, main

    calls = []
    monkeypatch.setattr(bljust.compare, "compare", lambda data, out, config, **kw: calls.append(
        (config, kw["methods"])) or {"runs": [], "failed": []})
    for scenario in ("benchmark", "demo", "unseen"):
        assert main(["demo", "--scenario", scenario, "--data", str(tiny_corpus), "--out", str(tmp_path)]) == 0
    assert main(["demo", "--scenario", "benchmark", "--data", str(tiny_corpus), "--out", str(tmp_path),
                 "--config", str(TINY)]) == 0
    assert main(["demo", "--data", str(tiny_corpus), "--out", str(tmp_path), "--methods", "just,topline"]) == 0
    assert calls == [(REPO / "recipes" / "benchmark.yaml", None), (REPO / "recipes" / "demo.yaml", DEMO_METHODS),
                     (REPO / "recipes" / "demo.yaml", DEMO_METHODS), (str(TINY), None),
                     (REPO / "recipes" / "demo.yaml", ["just", "topline"])]


def test_demo_names_a_corpus_summary_it_cannot_read(tmp_path, tiny_corpus):
    """The scenario check reads the corpus's summary.json: a broken one is an error naming it, before anything trains."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    (data / "summary.json").write_text("{truncated")
    r = run("demo", "--data", str(data), "--out", str(tmp_path / "demo"), "--config", str(TINY), check=False)
    assert r.returncode == 2 and f"{data / 'summary.json'}: not a readable corpus summary" in r.stderr
    assert not (tmp_path / "demo" / "runs").exists()


def test_method_choices_come_from_the_registry():
    from bljust.cli import build_parser
    from bljust.methods import METHOD_NAMES

    parser = build_parser()
    assert parser.parse_args(["train", "--data", "d", "--out", "o", "--method", "pl"]).method == "pl"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--method", "nope"])
    args = parser.parse_args(["compare", "--data", "d", "--out", "o"])
    assert args.budget_rule == "passes"
    assert parser.parse_args(["demo", "--budget-rule", "labeled"]).budget_rule == "labeled"
    demo = parser.parse_args(["demo"])
    assert (demo.scenario, demo.data, demo.out) == ("demo", None, None)  # data/demo and runs/demo
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--data", "d", "--out", "o", "--budget-rule", "epochs"])
    help_text = parser._subparsers._group_actions[0].choices["compare"].format_help()
    assert ",".join(METHOD_NAMES) in help_text


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_through_the_cli(method, tmp_path, tiny_corpus):
    out = tmp_path / method
    r = run("train", "--method", method, "--data", str(tiny_corpus), "--out", str(out), "--config", str(TINY),
            "--set", "train.max_steps=6", "--set", "bljust.explore_steps=1", "--set", "bljust.joint_steps=2",
            "--set", "bljust.finetune_steps=2", "--set", "pl.min_chars_per_second=0")
    summary = json.loads(r.stdout)
    # BL-JUST runs whole outer epochs, K = (6 − N3) // (N1 + N2) = 1, and gives the remainder to N3: 3 + 3 steps
    assert summary["method"] == method and summary["steps"] == 6
    if method == "bljust":
        assert summary["outer_epochs"] == 1 and summary["finetune_steps"] == 3
    assert (out / "best.pt").is_file()
    if method in ("ptft", "just", "bljust"):
        assert summary["unlabeled_batches"] > 0
    run("evaluate", str(out), "--data", str(tiny_corpus), "--split", "dev")
    assert (out / "eval" / "dev.json").is_file()


def test_bench_reports_the_three_step_kinds():
    r = run("bench", "--config", str(TINY), "--repeats", "1")
    for kind in ("| supervised |", "| ssl |", "| joint |", "joint step / (supervised step + SSL step) ="):
        assert kind in r.stdout


def test_the_gpu_check_fails_loudly_without_a_gpu(tmp_path):
    """scripts/gpu_check.sh never falls back to the CPU: on a machine without CUDA it stops before any work."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run scripts/gpu_check.sh itself")
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                       text=True, env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert r.returncode == 1 and "CUDA is not available" in r.stderr and "never runs on the CPU" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing synthesised or trained
