"""The two training losses and the joint step's gradient.

f (the supervised loss: CTC, or RNN-T with ``model.loss: rnnt``) and g (the self-supervised loss) are
computed through ``Objectives.forward``, the call DistributedDataParallel wraps: DDP arms its gradient
hooks in a forward through the wrapper, so both losses must go through it. Each loss is normalised by
its count summed over processes (tokens, predicted positions), so summed gradients give the step of one
process on the union of the batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bljust.config import Config
from bljust.data.features import spec_augment
from bljust.engine.dist import Dist, all_reduce_sum
from bljust.engine.precision import autocast


class Objectives(nn.Module):
    """f or g of an ``ASRModel`` behind one forward (``kind``: 'f' or 'g')."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, kind: str, feats: Tensor, lens: Tensor, targets: list[list[int]] | None = None,
                generator: torch.Generator | None = None, ids: list[str] | None = None):
        if kind == "f":  # the loss summed over the batch
            hidden, out_lens = self.model.encode(feats, lens)
            return self.model.loss_sum(hidden, out_lens, targets)
        # (loss summed over predicted positions, their count, health statistics)
        return self.model.ssl(self.model.encoder, feats, lens, generator, ids=ids)


def f_objective(net: nn.Module, feats: Tensor, lens: Tensor, targets: list[list[int]], dist: Dist,
                device: torch.device, amp: bool, amp_dtype: str = "auto") -> Tensor:
    """f per target token of the global batch (tokens summed over processes). ``net``: ``Objectives``,
    or DDP around it. Every method's f is this."""
    tokens = all_reduce_sum(float(sum(len(t) for t in targets)), dist, device)
    with autocast(device, amp, amp_dtype):
        return net("f", feats, lens, targets=targets) / tokens


def g_objective(net: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator, dist: Dist,
                device: torch.device, amp: bool, ids: list[str] | None = None,
                amp_dtype: str = "auto") -> tuple[Tensor, dict]:
    """g per predicted position of the global batch (positions summed over processes), and its health
    statistics on this process's batch. ``ids``: the batch's cut ids (HuBERT looks its targets up by them)."""
    with autocast(device, amp, amp_dtype):
        loss_sum, count, stats = net("g", feats, lens, generator=generator, ids=ids)
    total = all_reduce_sum(float(count), dist, device)
    return loss_sum / max(total, 1.0), stats


def penalised_backward(g: Tensor, theta: list[Tensor], eta: list[Tensor], *, theta_weight: float, eta_weight: float,
                       f_scale: float = 1.0, health: bool = True,
                       scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """The second half of a joint step. Once the backward of ``f_scale·f`` (under DDP's ``no_sync``) has
    left f_scale·∇f in θ and φ on this process, back-propagate g so that

        θ ← f_scale·∇θ f + theta_weight·∇θ g,   φ ← f_scale·∇φ f,   η ← eta_weight·∇η g

    summed over processes by this one backward pass. θ's share of ∇g is weighted by hooks on θ's
    parameters, before it reaches their gradients (and DDP's buckets); η's gradient is scaled after.

    f's graph was freed by its backward pass before g's was built, so a joint step never holds both:
    its peak memory is that of the larger of a supervised and an SSL step. With ``health``: ‖∇θ f‖,
    ‖theta_weight·∇θ g‖ / f_scale and the cosine between ∇θ f and ∇θ g, on this process's batches
    (∇f is read from θ's gradients before g's pass adds to them). ``scaler``: fp16's gradient scaler, which
    scaled f's backward as well; its factor is divided out of the norms.
    """
    dots, squares = [], []
    values: dict[str, float] = {}
    norm_f = None
    if health:
        grads = [p.grad for p in theta if p.grad is not None]
        norm_f = torch.stack(torch._foreach_norm(grads)).float().norm() if grads else torch.zeros(())

    def weigh(p: Tensor):
        def hook(grad: Tensor) -> Tensor:
            if health:
                squares.append(grad.float().square().sum())
                if p.grad is not None:
                    dots.append((p.grad.float() * grad.float()).sum())
            return grad * theta_weight
        return hook

    handles = [p.register_hook(weigh(p)) for p in theta]
    try:
        (scaler.scale(g) if scaler is not None else g).backward()
    finally:
        for h in handles:
            h.remove()
    for p in eta:
        if p.grad is not None:
            p.grad.mul_(eta_weight)
    if health:
        zero = torch.zeros((), device=g.device)
        dot = torch.stack(dots).sum() if dots else zero
        norm_g = torch.stack(squares).sum().sqrt() if squares else zero
        cos = dot / (norm_f * norm_g).clamp(min=1e-12)
        norm_f, norm_g, cos = torch.stack([norm_f.to(zero.device), norm_g, cos]).tolist()  # one host sync
        # the scaler's factor is in both ∇f and ∇g: it cancels in the cosine; theta_weight / f_scale is γ
        factor = f_scale * (scaler.get_scale() if scaler is not None else 1.0)
        values = {"grad_f_norm": norm_f / factor, "weighted_grad_g_norm": theta_weight * norm_g / factor,
                  "grad_cos": cos}
    return values


@dataclass
class PenaltyGap:
    """g − v* estimated as (smoothed g) − (its running minimum); checkpointed with the method's state."""

    g_ema: float | None = None
    g_min: float = math.inf

    def update(self, g: float) -> float:
        if not math.isfinite(g):
            return float("nan")
        self.g_ema = g if self.g_ema is None else 0.9 * self.g_ema + 0.1 * g
        self.g_min = min(self.g_min, self.g_ema)
        return self.g_ema - self.g_min


def make_features(model, batch: dict, device: torch.device, *, train: bool, cfg: Config,
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Waveforms → normalised log-mel, with SpecAugment in training."""
    wav, wav_lens = batch["wav"].to(device, non_blocking=True), batch["wav_lens"].to(device)
    feats, lens = model.frontend(wav, wav_lens)
    if train and cfg.features.spec_augment:
        feats = spec_augment(feats, lens, cfg.features.augment, generator)
    return feats, lens


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The RNG of one step's data augmentation: a function of the step alone, so resumes replay it."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + step) * 131 + rank) * 7 + stream)
    return g
