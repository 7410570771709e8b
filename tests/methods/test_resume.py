"""A run killed mid-phase and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bljust.checkpoint import load
from bljust.config import load_config
from bljust.engine.run import FAULT_ENV
from bljust.methods import METHODS
from tests.conftest import REPO, TINY

COMMON = ["train.checkpoint_every=2", "train.valid_every=4", "model.dropout=0.1", "data.max_duration=10"]
CASES = {
    # method, extra settings, step after which the process dies (the last checkpoint is the even step before)
    "supervised": (["train.max_steps=6"], 5),
    # fp16 under a gradient scaler (CPU autocast has fp16 too): the scaler's factor is checkpointed
    "supervised-fp16": (["train.max_steps=6", "train.amp_dtype=fp16"], 5),
    # two batches per step (gradient accumulation) and an averaged model (EMA), both checkpointed
    "supervised-accum": (["train.max_steps=6", "train.accum_steps=2", "train.ema_decay=0.9"], 5),
    "bljust": (["train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2", "bljust.joint_steps=3",
                "bljust.finetune_steps=2"], 9),           # dies in epoch 2's joint phase
    # γ set from running gradient norms (checkpointed), with health computed on every joint step
    "bljust-auto": (["train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2", "bljust.joint_steps=3",
                     "bljust.finetune_steps=2", "bljust.gamma_schedule=auto"], 9),
    "ptft-pretrain": (["train.max_steps=8"], 3),          # dies while pre-training
    "ptft-finetune": (["train.max_steps=8"], 7),          # dies while fine-tuning
    "ptft-frozen": (["train.max_steps=8", "ptft.pretrain_steps=2", "ptft.freeze_encoder_steps=3",
                     "ptft.encoder_lr_scale=0.5"], 5),   # dies with the encoder frozen
    "bljust-hubert": (["train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2", "bljust.joint_steps=3",
                       "bljust.finetune_steps=2", "ssl.loss=hubert", "ssl.clusters=8"], 7),  # cached targets reloaded
    "just-wav2vec2": (["train.max_steps=8", "ssl.loss=wav2vec2"], 5),  # the Gumbel temperature follows g steps
    "bljust-reset": (["train.max_steps=9", "bljust.outer_epochs=1", "bljust.explore_steps=1", "bljust.joint_steps=3",
                      "bljust.reset_optimizer_at_finetune=true", "optim.name=sgd"], 7),  # dies in fine-tuning
    "pl": (["train.max_steps=10", "pl.min_chars_per_second=0"], 7),  # dies in round 2, after its labeling
    "bljust-rnnt": (["train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2", "bljust.joint_steps=3",
                     "bljust.finetune_steps=2", "model.loss=rnnt", "model.predictor_dim=32", "model.joiner_dim=32",
                     "model.rnnt_chunk=2"], 9),  # a transducer head, its joint recomputed in backward
}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bljust", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, cwd=REPO)


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_run_resumes_exactly(case, tiny_corpus, tmp_path):
    method = case.split("-")[0]
    extra, die_after = CASES[case]
    settings = COMMON + extra
    cfg = load_config(TINY, settings)
    summary = METHODS[method](cfg, tiny_corpus, tmp_path / "straight")
    total = summary["steps"]

    sets = [a for s in settings for a in ("--set", s)]
    base = ["train", "--method", method, "--data", str(tiny_corpus), "--out", str(tmp_path / "killed")]
    killed = _cli(*base, "--config", str(TINY), *sets, env={FAULT_ENV: str(die_after)})
    assert killed.returncode == 17, killed.stderr[-3000:]
    last = max((tmp_path / "killed" / "checkpoints").glob("step-*.pt"))
    first_wall = load(last)["counters"]["wall_seconds"]  # the killed process's part, up to its last checkpoint
    resumed = _cli(*base, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {die_after - die_after % 2}" in resumed.stderr
    done = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert done["wall_seconds"] > first_wall > 0 and done["wall_seconds"] >= done["train_seconds"]

    name = f"step-{total:07d}.pt"
    a, b = load(tmp_path / "straight" / "checkpoints" / name), load(tmp_path / "killed" / "checkpoints" / name)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["streams"] == b["streams"] and a["method_state"] == b["method_state"]
    assert a["grad_scaler"] == b["grad_scaler"] and (a["grad_scaler"] is not None) == case.endswith("fp16")
    assert (a["ema"] is not None) == (b["ema"] is not None) == case.endswith("accum")
    for k in (a["ema"] or {}):
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    ca, cb = dict(a["counters"]), dict(b["counters"])
    for c in (ca, cb):
        c.pop("train_seconds"), c.pop("wall_seconds")
    assert ca == cb
    records = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "train"' in r for r in records) == total  # each step logged once
