"""The two training losses and the joint step's gradient.

f (the supervised loss: CTC, or RNN-T with ``model.loss: rnnt``) and g (the self-supervised loss) are
computed through ``Objectives.forward``, the call DistributedDataParallel wraps: DDP arms its gradient
hooks in a forward through the wrapper, so both losses must go through it. Each loss is normalised by
its count summed over processes (tokens, predicted positions), so summed gradients give the step of one
process on the union of the batches.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
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
                device: torch.device, amp: bool, amp_dtype: str = "auto", tokens: float | None = None) -> Tensor:
    """f per target token of the global batch (tokens summed over processes; ``tokens``: a count given
    instead, that of all the micro-batches of an accumulated step). ``net``: ``Objectives``, or DDP around
    it. Every method's f is this."""
    if tokens is None:
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


@contextlib.contextmanager
def penalised_gradients(theta: list[Tensor], eta: list[Tensor], *, theta_weight: float, eta_weight: float,
                        f_scale: float = 1.0, health: bool = True,
                        scaler: torch.amp.GradScaler | None = None) -> Iterator[dict[str, float]]:
    """The second half of a joint step. Once the backward passes of ``f_scale·f`` (under DDP's ``no_sync``)
    have left f_scale·∇f in θ and φ on this process, the backward passes of g inside this context make

        θ ← f_scale·∇θ f + theta_weight·∇θ g,   φ ← f_scale·∇φ f,   η ← eta_weight·∇η g

    summed over processes by the last of them. θ's share of ∇g is weighted by hooks on θ's parameters,
    before it reaches their gradients (and DDP's buckets); η's gradient is scaled on exit.

    f's graph was freed by its backward pass before g's was built, so a joint step never holds both:
    its peak memory is that of the larger of a supervised and an SSL step. Yields a dict that, with
    ``health``, holds on exit ‖∇θ f‖, ‖∇θ g‖, ‖γ·∇θ g‖ (γ = theta_weight / f_scale) and the cosine between
    ∇θ f and ∇θ g, on this process's batches. ∇f is read from θ's gradients as each g pass reaches them
    (less what earlier g passes of the step added), before DDP's all-reduce, and θ's ∇g is summed over the
    passes: one extra copy of θ's gradient, on logging steps only. ``scaler``: fp16's gradient scaler, which
    scaled f's backward too; its factor is divided out of the norms.
    """
    values: dict[str, float] = {}
    norm_f = torch.stack(torch._foreach_norm([p.grad for p in theta if p.grad is not None])).float().norm() \
        if health and any(p.grad is not None for p in theta) else None
    grad_g: dict[int, Tensor] = {}
    dots: list[Tensor] = []

    def weigh(i: int, p: Tensor):
        def hook(grad: Tensor) -> Tensor:
            if health:
                earlier = grad_g.get(i)
                if p.grad is not None:
                    grad_f = p.grad if earlier is None else p.grad - theta_weight * earlier
                    dots.append((grad_f.float() * grad.float()).sum())
                grad_g[i] = grad if earlier is None else earlier + grad
            return grad * theta_weight
        return hook

    handles = [p.register_hook(weigh(i, p)) for i, p in enumerate(theta)]
    try:
        yield values
    finally:
        for h in handles:
            h.remove()
    for p in eta:
        if p.grad is not None:
            p.grad.mul_(eta_weight)
    if health:
        zero = torch.zeros((), device=theta[0].device)
        norm_f = zero if norm_f is None else norm_f
        norm_g = torch.stack([x.float().square().sum() for x in grad_g.values()]).sum().sqrt() if grad_g else zero
        dot = torch.stack(dots).sum() if dots else zero
        cos = dot / (norm_f * norm_g).clamp(min=1e-12)
        norm_f, norm_g, cos = torch.stack([norm_f, norm_g, cos]).tolist()  # one host sync
        factor = scaler.get_scale() if scaler is not None else 1.0  # in ∇f and ∇g alike: it cancels in the cosine
        values.update(grad_f_norm=norm_f / (f_scale * factor), grad_g_norm=norm_g / factor,
                      weighted_grad_g_norm=theta_weight * norm_g / (f_scale * factor), grad_cos=cos)


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
    """A batch's waveforms or stored features → normalised log-mel, with SpecAugment in training."""
    feats, lens = model.frontend.from_batch(batch, device)
    if train and cfg.features.spec_augment:
        feats = spec_augment(feats, lens, cfg.features.augment, generator)
    return feats, lens


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """The RNG of one step's data augmentation: a function of the step alone, so resumes replay it."""
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + step) * 131 + rank) * 7 + stream)
    return g
