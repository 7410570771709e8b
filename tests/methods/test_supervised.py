"""Supervised CTC training end to end: learning, exact resume, DDP equivalence."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from bljust.checkpoint import load
from bljust.config import load_config
from bljust.data.manifests import load_split, write_split
from bljust.inference import load_trained
from bljust.methods import supervised
from tests.conftest import REPO, TINY

def test_refuses_to_overwrite_a_run(tiny_corpus, tmp_path):
    cfg = load_config(TINY, ["train.max_steps=2"])
    supervised.train(cfg, tiny_corpus, tmp_path / "run")
    with pytest.raises(FileExistsError, match="--resume"):
        supervised.train(cfg, tiny_corpus, tmp_path / "run")


def test_overfits_twenty_utterances(tiny_corpus, tmp_path):
    """A small model memorises ~20 utterances: it transcribes them back with CER < 0.1."""
    labeled = load_split(tiny_corpus, "labeled")
    few = labeled.subset(first=min(20, len(labeled)))
    data = tmp_path / "data"
    recs = few.decompose()[0]
    sups = few.decompose()[1]
    for split in ("labeled", "dev"):
        write_split(data, split, recs, sups)
    cfg = load_config(TINY, [
        "model.d_model=96", "model.num_layers=2", "model.num_heads=4", "model.subsampling_channels=64",
        "features.spec_augment=false", "train.max_steps=200", "train.valid_every=50", "train.checkpoint_every=200",
        "optim.lr=3e-3", "optim.warmup_steps=20", "data.max_duration=120", "data.max_utterance_seconds=30",
        "train.log_every=20"])
    summary = supervised.train(cfg, data, tmp_path / "run")
    assert summary["best_dev_cer"] < 0.1, summary
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["f"] for r in records if r["kind"] == "train"]
    assert losses[-1] < 0.1 * losses[0]
    model, tokenizer, _ = load_trained(tmp_path / "run")
    assert model.training is False and tokenizer.vocab_size == model.ctc_head.out_features


def test_torchrun_two_processes(tiny_corpus, tmp_path):
    """``torchrun --nproc_per_node=2 -m bljust train`` runs, with files from rank 0 only."""
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                        "-m", "bljust", "train", "--data", str(tiny_corpus), "--out", str(tmp_path / "run"),
                        "--config", str(TINY), "--set", "train.max_steps=3", "--set", "train.device=cpu"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "run" / "best.pt").is_file()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-0000002.pt", "step-0000003.pt"] or \
        sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000003.pt"]
    state = load(tmp_path / "run" / "checkpoints" / "step-0000003.pt")
    assert len(state["rng"]) == 2


def test_non_finite_loss_skips_the_step_and_names_its_batch(tiny_corpus, tmp_path, monkeypatch):
    import bljust.models.asr as asr

    real, calls = asr.ctc_loss_sum, {"n": 0}

    def sometimes_inf(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(asr, "ctc_loss_sum", sometimes_inf)
    cfg = load_config(TINY, ["train.max_steps=4", "train.max_bad_step_fraction=0.25"])
    summary = supervised.train(cfg, tiny_corpus, tmp_path / "run")
    assert summary["bad_steps"] == 1 and summary["steps"] == 4
    state = load(tmp_path / "run" / "checkpoints" / "step-0000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    skipped = state["bad_batches"]
    assert [b["step"] for b in skipped] == [2] and skipped[0]["ids"]
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert f"step 2 skipped: non-finite loss or gradient; its batch: {' '.join(skipped[0]['ids'])}" in log_text


def test_a_run_that_cannot_train_stops_and_names_the_batches(tiny_corpus, tmp_path, monkeypatch):
    """More than max_bad_step_fraction of the steps skipped: a non-zero exit naming the cut ids, not a quiet 'done'."""
    import bljust.models.asr as asr
    from bljust.engine import TrainingFailed

    monkeypatch.setattr(asr, "ctc_loss_sum", lambda *a: torch.tensor(float("nan"), requires_grad=True))
    cfg = load_config(TINY, ["train.max_steps=40", "train.max_bad_step_fraction=0.05"])
    with pytest.raises(TrainingFailed, match=r"3 of 3 steps so far skipped.*step 1: \S+") as e:
        supervised.train(cfg, tiny_corpus, tmp_path / "run")
    ids = {c.id for c in load_split(tiny_corpus, "labeled")}
    named = re.findall(r"step \d+: ([^;]+)", str(e.value))
    assert len(named) == 3 and all(set(n.split()) <= ids for n in named)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_broken_audio_of_every_kind_is_skipped_named_once_and_counted(tiny_corpus, tmp_path):
    """The issue's data directory: NaN/inf, empty, unreadable, short and missing files in every split, and an
    utterance infeasible for CTC through its repeats. The run trains on the rest with no non-finite step."""
    from tests.broken import AUDIO_REASONS, make_broken_corpus

    expected = make_broken_corpus(tiny_corpus, tmp_path / "data")
    r = subprocess.run([sys.executable, "-m", "bljust", "train", "--data", str(tmp_path / "data"),
                        "--out", str(tmp_path / "run"), "--config", str(TINY), "--set", "train.max_steps=24",
                        "--set", "train.valid_every=8"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bad_steps"] == 0 and summary["steps"] == 24
    # labeled (trained on, more than one pass) and dev (validated on three times): each file once
    assert summary["skipped_audio"] == {reason: 2 for reason in AUDIO_REASONS.values()}
    assert summary["dropped_utterances"] == {"more tokens than encoder frames": 1}
    assert summary["labeled_passes"] > 1.5
    log_text = (tmp_path / "run" / "train.log").read_text()
    for path, reason in expected.items():
        if "/labeled-" in path or "/dev-" in path:
            assert log_text.count(f"skipping audio {path} ") == 1, path
            assert re.search(re.escape(f"skipping audio {path} ") + r".*: " + reason, log_text), path
    state = load(tmp_path / "run" / "checkpoints" / "step-0000024.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())

    # evaluate names the bad files too and scores the rest
    r = subprocess.run([sys.executable, "-m", "bljust", "evaluate", str(tmp_path / "run"), "--data",
                        str(tmp_path / "data"), "--split", "test"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for kind in AUDIO_REASONS:
        assert f"test-{kind}.wav" in r.stderr
    result = json.loads((tmp_path / "run" / "eval" / "test.json").read_text())
    assert result["skipped_audio"] == {reason: 1 for reason in AUDIO_REASONS.values()}
    assert result["num_utterances"] == len(load_split(tiny_corpus, "test"))
    assert "5 utterances skipped" in r.stdout


def test_speed_perturbation_adds_resampled_copies_of_the_labeled_split(tiny_corpus, tmp_path, caplog):
    from bljust.data.loader import speed_perturbed

    labeled = load_split(tiny_corpus, "labeled").to_eager()
    both = speed_perturbed(labeled, [0.9, 1.1])
    assert len(both) == 3 * len(labeled)
    cut = labeled[0]
    slow, fast = both[cut.id + "_sp0.9"], both[cut.id + "_sp1.1"]
    assert slow.duration == pytest.approx(cut.duration / 0.9, abs=0.01)
    assert fast.duration == pytest.approx(cut.duration / 1.1, abs=0.01)
    assert slow.supervisions[0].text == cut.supervisions[0].text
    # the audio really is resampled, not just relabeled
    n = cut.load_audio().shape[1]
    assert abs(slow.load_audio().shape[1] - n / 0.9) <= 2 and abs(fast.load_audio().shape[1] - n / 1.1) <= 2
    # and a run trains on the copies: 3x the labeled audio per epoch, none failing to load
    epochs = {}
    caplog.set_level(logging.INFO, logger="bljust")
    for name, sp in (("plain", "[]"), ("perturbed", "[0.9, 1.1]")):
        caplog.clear()
        cfg = load_config(TINY, ["train.max_steps=2", f"data.speed_perturb={sp}"])
        assert supervised.train(cfg, tiny_corpus, tmp_path / name)["skipped_audio"] == {}
        epochs[name] = int(re.search(r"labeled: [0-9.]+ h, one epoch = (\d+) batches", caplog.text).group(1))
    assert 2.5 * epochs["plain"] <= epochs["perturbed"] <= 3.5 * epochs["plain"], epochs
    from bljust.config import ConfigError

    with pytest.raises(ConfigError, match="speed_perturb"):
        load_config(TINY, ["data.speed_perturb=[1.0]"])


def test_a_fresh_start_is_not_blocked_by_a_write_a_kill_interrupted(tiny_corpus, tmp_path):
    """A run killed inside its first checkpoint write leaves only a temp file: not a checkpoint to refuse
    to overwrite (compare restarts such a job without --resume), and removed at the start."""
    leftover = tmp_path / "run" / "checkpoints" / ".step-0000002.pt.tmp-12345"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a checkpoint")
    summary = supervised.train(load_config(TINY, ["train.max_steps=2"]), tiny_corpus, tmp_path / "run")
    assert summary["steps"] == 2 and not leftover.exists()
