"""Supervised-only training: f (CTC or RNN-T) on the labeled split. The baseline every method builds on."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bljust.config import Config
from bljust.engine.optim import lr_factor
from bljust.engine.run import Run


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    """Train on ``data_dir``'s labeled split for ``train.max_steps`` steps, validating on dev."""
    run = Run(cfg, data_dir, run_dir, method="supervised", resume=resume)
    try:
        run.add_stream("labeled", run.labeled)
        total, o = cfg.train.max_steps, cfg.optim
        run.start(total)
        run.model.train()
        while run.counters.step < total:
            started = time.time()
            batch = run.next_batch("labeled")
            if batch is None:
                continue
            f = run.f_loss(batch)
            run.backward(f)
            lr = o.lr * lr_factor(run.counters.step, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
            _, norms = run.step(bool(torch.isfinite(f)), {"theta": lr, "phi": lr})
            run.after_step({"f": run.value(f), "lr": lr, **norms, "epoch": run.streams["labeled"].epoch},
                           started=started)
        return run.finish()
    finally:
        run.close()
