"""PT+FT: the pre-training / fine-tuning split, the frozen-encoder start and the encoder's learning rate."""

from __future__ import annotations

import json

import torch

from bljust.checkpoint import load
from bljust.config import load_config
from bljust.methods import ptft
from tests.conftest import TINY


def _encoder(state: dict) -> dict:
    return {k: v for k, v in state["model"].items() if k.startswith("encoder.")}


def _head(state: dict) -> dict:
    return {k: v for k, v in state["model"].items() if k.startswith("ctc_head.")}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_encoder_steps_train_the_head_alone(tiny_corpus, tmp_path):
    cfg = load_config(TINY, ["train.max_steps=6", "ptft.pretrain_steps=2", "ptft.freeze_encoder_steps=2",
                             "train.checkpoint_every=1", "train.keep_last=10", "train.valid_every=2"])
    summary = ptft.train(cfg, tiny_corpus, tmp_path / "run")
    assert (summary["pretrain_steps"], summary["finetune_steps"]) == (2, 4)
    ck = {s: load(tmp_path / "run" / "checkpoints" / f"step-{s:07d}.pt") for s in (2, 3, 4, 5)}
    assert _same(_encoder(ck[2]), _encoder(ck[4]))  # steps 3 and 4: θ frozen ...
    assert not _same(_head(ck[2]), _head(ck[3])) and not _same(_head(ck[3]), _head(ck[4]))  # ... φ learns
    assert not _same(_encoder(ck[4]), _encoder(ck[5]))  # then θ fine-tunes too
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert [train[s]["phase"] for s in range(1, 7)] == ["pretrain"] * 2 + ["finetune-frozen"] * 2 + ["finetune"] * 2
    assert all("grad_norm_theta" not in train[s] and "grad_norm_phi" in train[s] for s in (3, 4))
    # g on the held-out unlabeled audio is measured while pre-training, when dev is not decoded yet
    dev = {r["step"]: r for r in rows if r["kind"] == "dev"}
    assert "g_heldout" in dev[2] and "cer" not in dev[2]
    assert "g_heldout" in dev[4] and "cer" in dev[4]


def test_encoder_lr_scale_zero_keeps_the_pretrained_encoder(tiny_corpus, tmp_path):
    cfg = load_config(TINY, ["train.max_steps=5", "ptft.pretrain_steps=2", "ptft.encoder_lr_scale=0",
                             "train.checkpoint_every=1", "train.keep_last=10"])
    ptft.train(cfg, tiny_corpus, tmp_path / "run")
    ck = {s: load(tmp_path / "run" / "checkpoints" / f"step-{s:07d}.pt") for s in (1, 2, 5)}
    assert not _same(_encoder(ck[1]), _encoder(ck[2]))  # pre-training moves θ
    assert _same(_encoder(ck[2]), _encoder(ck[5]))  # fine-tuning at lr × 0 does not
    assert not _same(_head(ck[2]), _head(ck[5]))
