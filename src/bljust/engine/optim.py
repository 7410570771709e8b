"""Optimiser, per-group gradient clipping and learning-rate factors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bljust.config import OptimConfig


def build_optimizer(param_groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum (``optim.name``); each group may carry its own ``lr`` and a ``name``."""
    for g in param_groups:
        g.setdefault("lr", cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def clip_groups(groups: dict[str, list[Tensor]], max_norm: float) -> dict[str, Tensor]:
    """Clip each named group's gradient norm to ``max_norm`` on its own (0: no clipping).

    Returns every group's pre-clip norm (a 0-dim tensor; no host sync here). Clipping the groups
    apart keeps a joint step's θ and φ update independent of η's gradient, and treats methods that
    weight η differently (BL-JUST, JUST) alike.
    """
    norms = {}
    for name, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        norm = torch.nn.utils.get_total_norm(grads)
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        norms[name] = norm
    return norms


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Learning-rate factor at ``step`` (0-based) of a phase of ``total`` steps: linear warm-up,
    then cosine decay to ``min_ratio``, constant, or inverse square root ("noam").

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "noam":
        return math.sqrt(max(warmup, 1) / (step + 1))
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
