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


def test_non_finite_loss_skips_the_step_and_counts_it(tiny_corpus, tmp_path, monkeypatch):
    import bljust.methods.common as common

    real, calls = common.ctc_loss_sum, {"n": 0}

    def sometimes_inf(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(common, "ctc_loss_sum", sometimes_inf)
    summary = supervised.train(load_config(TINY, ["train.max_steps=4"]), tiny_corpus, tmp_path / "run")
    assert summary["bad_steps"] == 1 and summary["steps"] == 4
    state = load(tmp_path / "run" / "checkpoints" / "step-0000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unreadable_audio_mid_run_is_skipped_and_counted(tiny_corpus, tmp_path):
    import shutil

    from lhotse import RecordingSet
    from lhotse.utils import fastcopy

    data = tmp_path / "data"
    shutil.copytree(tiny_corpus, data)
    labeled = load_split(data, "labeled")
    recs, sups = labeled.decompose()[:2]
    broken = tmp_path / "broken.flac"
    broken.write_bytes(b"this is not audio")  # passed the import checks once, then got corrupted
    first = recs[0]
    bad = fastcopy(first, sources=[fastcopy(first.sources[0], source=str(broken))])
    write_split(data, "labeled", RecordingSet.from_recordings([bad, *list(recs)[1:]]), sups)
    cfg = load_config(TINY, ["train.max_steps=30", "train.valid_every=100"])
    summary = supervised.train(cfg, data, tmp_path / "run")
    assert summary["steps"] == 30 and summary["failed_audio"] >= 1
    assert "broken.flac" in (tmp_path / "run" / "train.log").read_text()


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
        assert supervised.train(cfg, tiny_corpus, tmp_path / name)["failed_audio"] == 0
        epochs[name] = int(re.search(r"labeled: [0-9.]+ h, one epoch = (\d+) batches", caplog.text).group(1))
    assert 2.5 * epochs["plain"] <= epochs["perturbed"] <= 3.5 * epochs["plain"], epochs
    from bljust.config import ConfigError

    with pytest.raises(ConfigError, match="speed_perturb"):
        load_config(TINY, ["data.speed_perturb=[1.0]"])
