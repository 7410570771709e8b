"""Supervised-only training: f (CTC or RNN-T) on the labeled split. The baseline every method builds on."""

from __future__ import annotations

import math
import time
from pathlib import Path


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
            batches = run.next_batches("labeled")
            if batches is None:
                continue
            f = run.f_backward(batches)
            lr = o.lr * lr_factor(run.counters.step, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
            _, norms = run.step(math.isfinite(f), {"theta": lr, "phi": lr})
            run.after_step({"f": f, "lr": lr, **norms, "epoch": run.streams["labeled"].epoch},
                           started=started)
        return run.finish()
    finally:
        run.close()
