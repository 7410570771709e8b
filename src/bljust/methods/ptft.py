"""PT+FT: self-supervised pre-training of (θ, η) on g over the unlabeled split, then
supervised fine-tuning of (θ, φ) on f over the labeled split. Fine-tuning starts from the
pre-trained encoder with a fresh optimiser state; η is discarded. As in wav2vec 2.0's
fine-tuning, the encoder may stay frozen for the first fine-tuning steps (the new head φ
trains alone) and fine-tune at a lower learning rate than the head.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path


from bljust.config import Config
from bljust.engine.optim import lr_factor
from bljust.engine.run import Run


@dataclass
class PTFTState:
    finetune_started: bool = False
    """Whether fine-tuning began (its fresh optimiser state is made once, not again on resume)."""


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    run = Run(cfg, data_dir, run_dir, method="ptft", resume=resume, ssl=True, state=PTFTState)
    try:
        p, o, total = cfg.ptft, cfg.optim, cfg.train.max_steps
        n_pt = p.pretrain_steps if p.pretrain_steps is not None else round(p.pretrain_fraction * total)
        if n_pt >= total:
            raise ValueError(f"ptft: {n_pt} pre-training steps leave no fine-tuning step in train.max_steps={total}")
        labeled = run.add_stream("labeled", run.labeled)
        unlabeled = run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1)
        run.log_plan(f"{n_pt} pre-training steps on g, then {total - n_pt} fine-tuning steps on f (the first "
                     f"{p.freeze_encoder_steps} with the encoder frozen; encoder lr × {p.encoder_lr_scale:g}); labeled "
                     f"pass = {labeled.batches_per_epoch()} batches, unlabeled pass = "
                     f"{unlabeled.batches_per_epoch()} batches")
        run.start(total, g_steps=n_pt)
        run.model.train()
        while run.counters.step < total:
            step, started = run.counters.step, time.time()
            if step < n_pt:  # pre-training: (θ, η) -= lr ∇g
                batches = run.next_batches("unlabeled")
                if batches is None:
                    continue
                g, stats = run.g_backward(batches)
                lr = p.pretrain_lr * lr_factor(step, n_pt, o.warmup_steps, o.schedule, o.min_lr_ratio)
                _, norms = run.step(math.isfinite(g), {"theta": lr, "eta": lr})
                run.after_step({"g": g, "lr": lr, **norms, **{f"ssl_{n}": v for n, v in stats.items()}},
                               phase="pretrain", started=started, decode=False)
                continue
            if not run.method_state.finetune_started:
                run.optimizer.state.clear()  # a fresh optimiser for fine-tuning, as in two separate runs
                run.method_state.finetune_started = True
                run.close_streams("labeled")
            batches = run.next_batches("labeled")  # fine-tuning: (θ, φ) -= lr ∇f
            if batches is None:
                continue
            f = run.f_backward(batches)
            lr = p.finetune_lr * lr_factor(step - n_pt, total - n_pt, o.warmup_steps, o.schedule, o.min_lr_ratio)
            frozen = step - n_pt < p.freeze_encoder_steps
            lrs = {"phi": lr} if frozen else {"theta": p.encoder_lr_scale * lr, "phi": lr}
            _, norms = run.step(math.isfinite(f), lrs)
            run.after_step({"f": f, "lr": lr, **norms}, phase="finetune-frozen" if frozen else "finetune",
                           started=started)
        return run.finish({"pretrain_steps": n_pt, "finetune_steps": total - n_pt})
    finally:
        run.close()
