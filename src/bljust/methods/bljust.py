"""BL-JUST: bilevel joint unsupervised and supervised training (method.md §3).

Upper level f(θ, φ): CTC on labeled data. Lower level g(θ, η): the self-supervised loss on
unlabeled data. Penalty-based bilevel gradient descent minimises f + γ·(g − v*); v* is a
constant, so a joint step follows ∇f + γ∇g on the shared encoder θ. One run:

    for k in 1..K:                        outer epochs
        N1 × (a) exploration:  (θ, η) -= ρ ∇g            on unlabeled batches
        N2 × (b) joint:        θ -= α (∇f + γ ∇g),  φ -= α ∇f,  η -= α ∇g
    N3 × (c) fine-tuning:      (θ, φ) -= τ ∇f            on labeled batches

with γ growing from γ_0 to γ_max over the run's joint steps (or, with ``gamma_schedule: auto``, set from
the gradient norms so that ‖γ∇θg‖ / ‖∇θf‖ follows a ramped target). A joint step builds f's graph,
back-propagates it, and only then builds g's, so it never holds both. ``train`` below is that
loop, top to bottom.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from bljust.config import BLJustConfig, Config, OptimConfig
from bljust.engine.objectives import PenaltyGap, penalised_gradients
from bljust.engine.optim import lr_factor
from bljust.engine.run import Run


@dataclass
class GradNorms:
    """Running averages of ‖∇θf‖ and ‖∇θg‖ over the joint steps, which the 'auto' γ is set from."""

    f: float | None = None
    g: float | None = None

    def update(self, f: float, g: float, decay: float) -> None:
        if not (math.isfinite(f) and math.isfinite(g)):
            return
        self.f = f if self.f is None else decay * self.f + (1 - decay) * f
        self.g = g if self.g is None else decay * self.g + (1 - decay) * g


@dataclass
class BLJustState:
    finetune_started: bool = False
    """Whether phase (c) began (its optimiser reset and stream closing happen once, not again on resume)."""
    gap: PenaltyGap = field(default_factory=PenaltyGap)
    """The smoothed g and its running minimum (the logged penalty gap)."""
    norms: GradNorms = field(default_factory=GradNorms)
    """The 'auto' γ's gradient norms (checkpointed, so a resumed run sets the same γ)."""


@dataclass(frozen=True)
class Plan:
    """The step counts of one BL-JUST run; step s of the run maps to (phase, outer epoch, index)."""

    outer_epochs: int
    explore: int
    joint: int
    finetune: int
    first_explore: int | None = None
    """N1 of the first outer epoch (None: ``explore``)."""
    note: str = ""
    """How the plan departs from the config to fit its budget (empty: it does not)."""
    last_joint: int | None = None
    """N2 of the last outer epoch (None: ``joint``): longer when it takes what the whole epochs leave of the
    budget instead of N3 (``bljust.leftover``)."""

    @property
    def per_epoch(self) -> int:
        return self.explore + self.joint

    @property
    def explore_0(self) -> int:
        return self.explore if self.first_explore is None else self.first_explore

    @property
    def joint_last(self) -> int:
        return self.joint if self.last_joint is None else self.last_joint

    @property
    def explore_total(self) -> int:
        return self.explore_0 + (self.outer_epochs - 1) * self.explore

    @property
    def joint_total(self) -> int:
        return self.outer_epochs * self.joint + self.joint_last - self.joint

    @property
    def total(self) -> int:
        return (self.outer_epochs * self.per_epoch + self.explore_0 - self.explore + self.joint_last - self.joint
                + self.finetune)

    def explore_index(self, k: int, i: int) -> int:
        """Exploration steps before step i of outer epoch k's exploration."""
        return i if k == 0 else self.explore_0 + (k - 1) * self.explore + i

    def joint_index(self, k: int, i: int) -> int:
        """Joint steps before step i of outer epoch k's joint phase."""
        return k * self.joint + i

    def locate(self, step: int) -> tuple[str, int, int]:
        first = self.explore_0 + (self.joint if self.outer_epochs > 1 else self.joint_last)
        if step < first:
            return ("explore", 0, step) if step < self.explore_0 else ("joint", 0, step - self.explore_0)
        loop = self.total - self.finetune
        if step >= loop:
            return "finetune", self.outer_epochs, step - loop
        # epochs after the first, the last one possibly longer: its steps past per_epoch stay in it
        k = min((step - first) // self.per_epoch, self.outer_epochs - 2)
        i = step - first - k * self.per_epoch
        return ("explore", k + 1, i) if i < self.explore else ("joint", k + 1, i - self.explore)


UNITS = {"steps": (1, 1, 1), "passes": (1, 2, 1), "labeled": (0, 1, 1)}
"""What an exploration, a joint and a fine-tuning step cost in each budget unit: optimiser steps
(``bljust train``), batch passes (a joint step takes two batches), or updates on labeled batches."""


def make_plan(b: BLJustConfig, budget: int, labeled_batches: int, unlabeled_batches: int,
              unit: str = "steps") -> Plan:
    """Resolve K, N1, N2 and N3 from the config and the sizes of the two streams; the one place
    ``bljust train`` and ``compare`` both plan a run.

    The plan spends ``budget`` in ``unit`` (see ``UNITS``) exactly: K is the most whole outer
    epochs that leave room for the configured N3, and whatever they leave is added to N3, or with
    ``leftover`` 'joint' to the last epoch's N2 (in batch passes an odd pass that no joint step
    fits is then left). When not even one epoch fits, the single epoch is shrunk (N3, then N2, then
    the first N1) and the plan says so in ``Plan.note``. A plan never exceeds its budget: a pinned
    K that does not fit is an error.
    """
    explore_cost, joint_cost, finetune_cost = UNITS[unit]
    n1 = b.explore_steps if b.explore_steps is not None else round(b.explore_fraction * unlabeled_batches)
    n2 = b.joint_steps if b.joint_steps is not None else max(1, labeled_batches)
    n3 = b.finetune_steps if b.finetune_steps is not None else round(b.finetune_fraction * budget)
    n1_first = b.first_explore_steps if b.first_explore_steps is not None else n1
    epoch = explore_cost * n1 + joint_cost * n2
    first = explore_cost * n1_first + joint_cost * n2
    note = ""
    if b.outer_epochs is not None:
        k = b.outer_epochs
        if first + (k - 1) * epoch + finetune_cost * n3 > budget:
            raise ValueError(f"bljust: K={k} outer epochs of N1={n1} exploration + N2={n2} joint steps (first N1="
                             f"{n1_first}) and N3={n3} fine-tuning steps exceed the budget of {budget} {unit}; "
                             f"lower bljust.outer_epochs, joint_steps, explore_steps or finetune_steps")
    elif first + finetune_cost * n3 <= budget:
        k = 1 + (budget - first - finetune_cost * n3) // epoch
    else:  # one epoch does not fit beside N3: shrink it rather than overrun the budget
        k = 1
        n2 = max(1, min(n2, (budget - explore_cost * n1_first) // joint_cost))
        n1_first = min(n1_first, (budget - joint_cost * n2) // explore_cost) if explore_cost else n1_first
        if n1_first < 0:
            raise ValueError(f"bljust: a budget of {budget} {unit} cannot hold one joint step ({joint_cost} {unit})")
        note = f"one outer epoch shrunk to fit the budget of {budget} {unit}"
    used = explore_cost * n1_first + joint_cost * n2 + (k - 1) * epoch
    finetune = (budget - used) // finetune_cost
    extra = 0
    if b.leftover == "joint" and finetune > n3:  # N3 stays as set; the rest lengthens the last epoch's joint phase
        extra, finetune = (budget - used - finetune_cost * n3) // joint_cost, n3
    first_explore = n1_first if n1_first != n1 else b.first_explore_steps
    return Plan(k, n1, n2, finetune, first_explore, note, n2 + extra if extra else None)


def plan_cost(plan: Plan, unit: str) -> int:
    """What ``plan`` spends in ``unit``."""
    explore_cost, joint_cost, finetune_cost = UNITS[unit]
    return explore_cost * plan.explore_total + joint_cost * plan.joint_total + finetune_cost * plan.finetune


def _ramp(b: BLJustConfig, j: int, joint_total: int) -> float:
    """Progress 0 → 1 through the first ``ramp_fraction`` of the joint steps."""
    ramp = b.ramp_fraction * joint_total
    return min(j / ramp, 1.0) if ramp > 0 else 1.0


def gamma_at(b: BLJustConfig, j: int, joint_total: int, norms: GradNorms | None = None) -> float:
    """γ at joint step ``j`` (0-based, counted over every outer epoch) of a run with ``joint_total``:
    γ_0 at the first, γ_max from ``ramp_fraction`` of the joint steps on. Indexed by the joint
    steps, not the outer epochs, so γ ramps for any K, one included.

    'auto': the ramped target of ‖γ∇θg‖ / ‖∇θf‖ (0 → ``auto_ratio``) times the ratio of the running
    gradient norms ``norms`` (‖∇θf‖ / ‖∇θg‖), at most γ_max; γ_0 before any joint step was measured."""
    if b.gamma_schedule == "constant":
        return b.gamma_max
    x = _ramp(b, j, joint_total)
    if b.gamma_schedule == "auto":
        if norms is None or norms.f is None or not norms.g:
            return b.gamma_0
        return min(b.gamma_max, b.auto_ratio * x * norms.f / norms.g)
    if b.gamma_schedule == "cosine":
        x = 0.5 * (1 - math.cos(math.pi * x))
    elif b.gamma_schedule == "step":
        x = math.floor(x * b.gamma_stairs + 1e-9) / b.gamma_stairs
    return b.gamma_0 + (b.gamma_max - b.gamma_0) * x


def gamma_text(b: BLJustConfig) -> str:
    """The γ schedule in words, for the run's plan line."""
    if b.gamma_schedule == "auto":
        return (f"γ: auto, ‖γ∇θg‖ / ‖∇θf‖ ramped 0 → {b.auto_ratio} by {b.ramp_fraction:.0%} of the joint steps, "
                f"γ ≤ {b.gamma_max}")
    return f"γ: {b.gamma_schedule} {b.gamma_0} → {b.gamma_max} by {b.ramp_fraction:.0%} of the joint steps"


def penalty_weights(gamma: float, pbgd: bool) -> tuple[float, float]:
    """(scale of θ's and φ's joint gradient, weight of η's ∇g) at penalty γ.

    PBGD (Shen & Chen) steps along the penalised objective's gradient (∇f + γ∇g, ∇f, γ∇g) scaled by
    min(1, 1/γ). Without it, θ and φ take ∇f + γ∇g and ∇f, and η takes ∇g unscaled by γ, so under
    Adam the lower level keeps its own pace (ours).
    """
    if not pbgd:
        return 1.0, 1.0
    scale = min(1.0, 1.0 / gamma) if gamma > 0 else 1.0
    return scale, scale * gamma


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
        return peak * lr_factor(plan.joint_index(k, i), plan.joint_total, o.warmup_steps, o.schedule,
                                o.min_lr_ratio)
    return peak * lr_factor(i, plan.finetune, min(o.warmup_steps, plan.finetune // 10), o.schedule, o.min_lr_ratio)


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    run = Run(cfg, data_dir, run_dir, method="bljust", resume=resume, ssl=True, state=BLJustState)
    try:
        b, o = cfg.bljust, cfg.optim
        labeled = run.add_stream("labeled", run.labeled)
        unlabeled = run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1)
        plan = make_plan(b, cfg.train.max_steps, labeled.batches_per_epoch(), unlabeled.batches_per_epoch())
        pbgd = b.pbgd_scaling if b.pbgd_scaling is not None else o.name == "sgd"
        auto = b.gamma_schedule == "auto"
        theta, eta = run.group_params("theta", "eta")
        first = "" if plan.first_explore is None else f" (first epoch: N1={plan.explore_0})"
        last = "" if plan.last_joint is None else f" (last epoch: N2={plan.joint_last})"
        run.log_plan(f"K={plan.outer_epochs} outer epochs × (N1={plan.explore} exploration + N2={plan.joint} joint "
                     f"steps){first}{last} + N3={plan.finetune} fine-tuning steps = {plan.total} steps"
                     f"{f' ({plan.note})' if plan.note else ''}; a joint step takes 1 labeled and 1 unlabeled "
                     f"batch; labeled pass = {labeled.batches_per_epoch()} batches, unlabeled pass = "
                     f"{unlabeled.batches_per_epoch()} batches; {gamma_text(b)}; learning rates ({b.lr_schedule} schedule, "
                     f"{o.name}{', PBGD step scaling' if pbgd else ''}): ρ={b.rho}, α={b.alpha}, τ={b.tau}")
        run.start(plan.total, g_steps=plan.explore_total + plan.joint_total)
        run.model.train()

        while run.counters.step < plan.total:
            phase, k, i = plan.locate(run.counters.step)
            started = time.time()

            if phase == "explore":  # (a) (θ, η) -= ρ ∇g
                bu = run.next_batches("unlabeled")
                if bu is None:
                    continue
                g, stats = run.g_backward(bu)
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norms = run.step(math.isfinite(g), {"theta": lr, "eta": lr})
                values = {"g": g, "lr": lr, **norms, **{f"ssl_{n}": v for n, v in stats.items()}}

            elif phase == "joint":  # (b) θ -= α(∇f + γ∇g), φ -= α∇f, η -= α∇g
                bl, bu = run.next_batches("labeled"), run.next_batches("unlabeled")
                if bl is None or bu is None:
                    continue
                gamma = gamma_at(b, plan.joint_index(k, i), plan.joint_total, run.method_state.norms)
                scale, eta_weight = penalty_weights(gamma, pbgd)
                with run.no_sync():  # ∇f stays on this process until g's backward sums ∇f + γ∇g over processes
                    f = run.f_backward(bl, scale)  # ∇f into θ and φ, and f's graph freed before g's is built
                with penalised_gradients(theta, eta, theta_weight=scale * gamma, eta_weight=eta_weight, f_scale=scale,
                                         health=run.logging or auto, scaler=run.scaler) as health:
                    g, stats = run.g_backward(bu)
                if auto:  # every process sets the next γ from the same norms: their quadratic mean over processes
                    run.method_state.norms.update(*run.mean_norms(health["grad_f_norm"], health["grad_g_norm"]),
                                                  b.auto_decay)
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norms = run.step(math.isfinite(f) and math.isfinite(g), {"theta": lr, "phi": lr, "eta": lr})
                values = {"f": f, "g": g, "gamma": gamma, "lr": lr, **norms, **health,
                          **{f"ssl_{n}": v for n, v in stats.items()}}

            else:  # (c) (θ, φ) -= τ ∇f
                if not run.method_state.finetune_started:
                    if b.reset_optimizer_at_finetune:
                        run.optimizer.state.clear()  # fine-tune from fresh moments, as PT+FT does
                    run.close_streams("labeled")
                    run.method_state.finetune_started = True
                bl = run.next_batches("labeled")
                if bl is None:
                    continue
                f = run.f_backward(bl)
                lr = learning_rate(b, o, plan, run.counters.step)
                _, norms = run.step(math.isfinite(f), {"theta": lr, "phi": lr})
                values = {"f": f, "lr": lr, **norms}

            if "g" in values:
                values["penalty_gap"] = run.method_state.gap.update(values["g"])
            values["outer_epoch"] = k
            run.after_step(values, phase=phase, started=started)

        return run.finish({"outer_epochs": plan.outer_epochs, "explore_steps": plan.explore,
                           "first_explore_steps": plan.explore_0, "joint_steps": plan.joint,
                           "last_joint_steps": plan.joint_last, "finetune_steps": plan.finetune})
    finally:
        run.close()
