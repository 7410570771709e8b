"""BL-JUST: bilevel joint unsupervised and supervised training (method.md §3).

Upper level f(θ, φ): CTC on labeled data. Lower level g(θ, η): the self-supervised loss on
unlabeled data. Penalty-based bilevel gradient descent minimises f + γ·(g − v*); v* is a
constant, so a joint step follows ∇f + γ∇g on the shared encoder θ. One run:

    for k in 1..K:                        outer epochs
        N1 × (a) exploration:  (θ, η) -= ρ ∇g            on unlabeled batches
        N2 × (b) joint:        θ -= α (∇f + γ_k ∇g),  φ -= α ∇f,  η -= α ∇g
    N3 × (c) fine-tuning:      (θ, φ) -= τ ∇f            on labeled batches

with γ_k growing from γ_0 to γ_max. ``train`` below is that loop, top to bottom.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bljust.config import BLJustConfig, Config, OptimConfig
from bljust.methods.common import Run, joint_gradients, track_penalty_gap
from bljust.training import lr_factor


@dataclass(frozen=True)
class Plan:
    """The step counts of one BL-JUST run; step s of the run maps to (phase, outer epoch, index)."""

    outer_epochs: int
    explore: int
    joint: int
    finetune: int
    first_explore: int | None = None
    """N1 of the first outer epoch (None: ``explore``)."""

    @property
    def per_epoch(self) -> int:
        return self.explore + self.joint

    @property
    def explore_0(self) -> int:
        return self.explore if self.first_explore is None else self.first_explore

    @property
    def explore_total(self) -> int:
        return self.explore_0 + (self.outer_epochs - 1) * self.explore

    @property
    def total(self) -> int:
        return self.outer_epochs * self.per_epoch + self.explore_0 - self.explore + self.finetune

    def explore_index(self, k: int, i: int) -> int:
        """Exploration steps before step i of outer epoch k's exploration."""
        return i if k == 0 else self.explore_0 + (k - 1) * self.explore + i

    def locate(self, step: int) -> tuple[str, int, int]:
        first = self.explore_0 + self.joint
        if step < first:
            return ("explore", 0, step) if step < self.explore_0 else ("joint", 0, step - self.explore_0)
        loop = first + (self.outer_epochs - 1) * self.per_epoch
        if step >= loop:
            return "finetune", self.outer_epochs, step - loop
        k, i = divmod(step - first, self.per_epoch)
        return ("explore", k + 1, i) if i < self.explore else ("joint", k + 1, i - self.explore)


def make_plan(b: BLJustConfig, max_steps: int, labeled_batches: int, unlabeled_batches: int,
              joint_cost: int = 1) -> Plan:
    """Resolve N1, N2, N3 and K from the config and the sizes of the two streams.

    ``max_steps`` is in units where a joint step costs ``joint_cost`` (1: steps; 2: batch passes,
    compare's budget) and every other step costs 1.
    """
    n1 = b.explore_steps if b.explore_steps is not None else round(b.explore_fraction * unlabeled_batches)
    n2 = b.joint_steps if b.joint_steps is not None else labeled_batches
    n3 = b.finetune_steps if b.finetune_steps is not None else round(b.finetune_fraction * max_steps)
    n1_first = b.first_explore_steps if b.first_explore_steps is not None else n1
    k = b.outer_epochs if b.outer_epochs is not None else max(
        1, (max_steps - n3 - n1_first + n1) // (n1 + joint_cost * n2))
    return Plan(k, n1, n2, n3, b.first_explore_steps)


def gamma_at(b: BLJustConfig, k: int, outer_epochs: int) -> float:
    """γ during outer epoch k (0-based): γ_0 at k = 0, γ_max from the end of the ramp on."""
    if b.gamma_schedule == "constant":
        return b.gamma_max
    ramp = max(b.ramp_fraction * (outer_epochs - 1), 1e-9)  # γ_max is reached at epoch ⌈ramp⌉
    x = min(k / ramp, 1.0)
    if b.gamma_schedule == "cosine":
        x = 0.5 * (1 - math.cos(math.pi * x))
    elif b.gamma_schedule == "step":
        x = math.floor(x * b.gamma_stairs + 1e-9) / b.gamma_stairs
    return b.gamma_0 + (b.gamma_max - b.gamma_0) * x


def learning_rate(b: BLJustConfig, o: OptimConfig, plan: Plan, step: int) -> float:
    """The learning rate of run step ``step``: the peak of its phase (ρ, α or τ) times a schedule factor.

    'phase': exploration and joint steps each count their own steps over the outer epochs, with
    optim's warm-up and decay; fine-tuning has its own decay (warm-up ≤ a tenth of N3).
    'global': one warm-up and one decay over the whole run, indexed by the run's step.
    """
    phase, k, i = plan.locate(step)
    peak = {"explore": b.rho, "joint": b.alpha, "finetune": b.tau}[phase]
    if b.lr_schedule == "global":
        return peak * lr_factor(step, plan.total, o.warmup_steps, o.schedule, o.min_lr_ratio)
    if phase == "explore":
        return peak * lr_factor(plan.explore_index(k, i), plan.explore_total, o.warmup_steps, o.schedule,
                                o.min_lr_ratio)
    if phase == "joint":
        return peak * lr_factor(k * plan.joint + i, plan.outer_epochs * plan.joint, o.warmup_steps, o.schedule,
                                o.min_lr_ratio)
    return peak * lr_factor(i, plan.finetune, min(o.warmup_steps, plan.finetune // 10), o.schedule, o.min_lr_ratio)


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    run = Run(cfg, data_dir, run_dir, method="bljust", resume=resume, ssl=True)
    try:
        b, o = cfg.bljust, cfg.optim
        labeled = run.add_stream("labeled", run.labeled)
        unlabeled = run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1)
        plan = make_plan(b, cfg.train.max_steps, labeled.batches_per_epoch(), unlabeled.batches_per_epoch())
        theta, phi, eta = run.group_params("theta", "phi", "eta")
        first = "" if plan.first_explore is None else f" (first epoch: N1={plan.explore_0})"
        run.log_plan(f"K={plan.outer_epochs} outer epochs × (N1={plan.explore} exploration + N2={plan.joint} joint "
                     f"steps){first} + N3={plan.finetune} fine-tuning steps = {plan.total} steps; a joint step takes 1 "
                     f"labeled and 1 unlabeled batch (ratio 1:1 in batches); labeled pass = "
                     f"{labeled.batches_per_epoch()} batches, unlabeled pass = {unlabeled.batches_per_epoch()} "
                     f"batches; γ: {b.gamma_schedule} {b.gamma_0} → {b.gamma_max}; learning rates ({b.lr_schedule} "
                     f"schedule): ρ={b.rho}, α={b.alpha}, τ={b.tau}")
        run.start(plan.total)
        run.model.train()

        while run.counters.step < plan.total:
            phase, k, i = plan.locate(run.counters.step)
            gamma = gamma_at(b, k, plan.outer_epochs)
            started = time.time()

            if phase == "explore":  # (a) (θ, η) -= ρ ∇g
                bu = run.next_batch("unlabeled")
                if bu is None:
                    continue
                g, stats = run.ssl_loss(bu)
                g.backward()
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norm = run.step(bool(torch.isfinite(g)), {"theta": lr, "eta": lr})
                values = {"g": run.value(g), "lr": lr, "grad_norm": norm, **{f"ssl_{n}": v for n, v in stats.items()}}

            elif phase == "joint":  # (b) θ -= α(∇f + γ∇g), φ -= α∇f, η -= α∇g
                bl, bu = run.next_batch("labeled"), run.next_batch("unlabeled")
                if bl is None or bu is None:
                    continue
                f = run.ctc_loss(bl)
                g, stats = run.ssl_loss(bu)
                # η's gradient is not scaled by γ: under Adam the lower level keeps its own pace (ours).
                scale = min(1.0, 1.0 / gamma) if b.pbgd_scaling and gamma > 0 else 1.0
                health = joint_gradients(f, g, theta, phi, eta, weight=gamma, eta_weight=1.0, scale=scale)
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norm = run.step(bool(torch.isfinite(f)) and bool(torch.isfinite(g)),
                                   {"theta": lr, "phi": lr, "eta": lr})
                values = {"f": run.value(f), "g": run.value(g), "gamma": gamma, "lr": lr, "grad_norm": norm,
                          **health, **{f"ssl_{n}": v for n, v in stats.items()}}

            else:  # (c) (θ, φ) -= τ ∇f
                bl = run.next_batch("labeled")
                if bl is None:
                    continue
                f = run.ctc_loss(bl)
                f.backward()
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norm = run.step(bool(torch.isfinite(f)), {"theta": lr, "phi": lr})
                values = {"f": run.value(f), "lr": lr, "grad_norm": norm}

            if "g" in values:
                values["penalty_gap"] = track_penalty_gap(run.phase_state, values["g"])
            values["outer_epoch"] = k
            run.after_step(values, phase=phase, started=started)

        return run.finish({"outer_epochs": plan.outer_epochs, "explore_steps": plan.explore,
                           "joint_steps": plan.joint, "finetune_steps": plan.finetune})
    finally:
        run.close()
