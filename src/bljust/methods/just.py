"""JUST (Bai et al., arXiv 2111.08137): one loop on f + λ·g with a fixed λ.

Each step takes one labeled and one unlabeled batch; no exploration, no final fine-tuning.
It is BL-JUST's joint step with a constant weight and η's gradient scaled by λ like θ's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path


from bljust.config import Config
from bljust.engine.objectives import PenaltyGap, penalised_gradients
from bljust.engine.optim import lr_factor
from bljust.engine.run import Run


@dataclass
class JUSTState:
    gap: PenaltyGap = field(default_factory=PenaltyGap)
    """The smoothed g and its running minimum (the logged penalty gap)."""


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    run = Run(cfg, data_dir, run_dir, method="just", resume=resume, ssl=True, state=JUSTState)
    try:
        lam, total, o = cfg.just.lam, cfg.train.max_steps, cfg.optim
        labeled = run.add_stream("labeled", run.labeled)
        unlabeled = run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1)
        theta, eta = run.group_params("theta", "eta")
        run.log_plan(f"{total} joint steps on f + {lam}·g, each on 1 labeled and 1 unlabeled batch (ratio 1:1 in "
                     f"batches); labeled pass = {labeled.batches_per_epoch()} batches, unlabeled pass = "
                     f"{unlabeled.batches_per_epoch()} batches")
        run.start(total)
        run.model.train()
        while run.counters.step < total:
            started = time.time()
            bl, bu = run.next_batches("labeled"), run.next_batches("unlabeled")
            if bl is None or bu is None:
                continue
            with run.no_sync():  # ∇f stays on this process; g's backward sums ∇f + λ∇g over processes
                f = run.f_backward(bl)  # f's graph is freed before g's is built
            with penalised_gradients(theta, eta, theta_weight=lam, eta_weight=lam, health=run.logging,
                                     scaler=run.scaler) as health:
                g, stats = run.g_backward(bu)
            lr = o.lr * lr_factor(run.counters.step, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
            _, norms = run.step(math.isfinite(f) and math.isfinite(g), {"theta": lr, "phi": lr, "eta": lr})
            run.after_step({"f": f, "g": g, "lambda": lam, "lr": lr, **norms,
                            "penalty_gap": run.method_state.gap.update(g), **health,
                            **{f"ssl_{n}": v for n, v in stats.items()}}, phase="joint", started=started)
        return run.finish({"lambda": lam})
    finally:
        run.close()
