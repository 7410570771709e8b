"""Self-supervised (lower-level) losses g(θ, η) of BL-JUST on unlabeled audio.

Every loss is an :class:`SSLLoss`: an ``nn.Module`` that holds the self-supervised head η
(projections, predictors, quantiser codebooks; frozen random projections and codebooks are
buffers, not parameters) and computes its loss from the shared encoder θ on a batch of
normalised log-mel features. The loss decides what the encoder sees (masked or plain input)
and calls the encoder itself.

- :class:`~bljust.losses.bestrq.BestRQLoss`: BEST-RQ (Chiu et al., 2022), masked prediction of
  the labels of a frozen random-projection quantiser, cross-entropy.
- :class:`~bljust.losses.cpc.CPCLoss`: CPC-style InfoNCE made non-trivial for bidirectional
  encoders: contexts predict the stop-gradient targets of *masked* frames 1..K ahead.
- :class:`~bljust.losses.wav2vec2.Wav2Vec2Loss`: wav2vec 2.0-style masked contrastive loss with
  a Gumbel-softmax product quantiser and the codebook diversity loss.
- :class:`~bljust.losses.hubert.HubertLoss`: HuBERT (Hsu et al., 2021), masked prediction of
  k-means cluster ids computed once per utterance (:mod:`bljust.ssl_targets`), cross-entropy.

Conventions shared by all of them:

- ``forward(encoder, feats, lens, generator, ids) -> (loss_sum, count, stats)``: ``loss_sum`` is a
  float32 scalar summed over the predicted positions, ``count`` a float32 scalar (the number of
  positions) so that a DDP caller can normalise by the count summed over processes;
  ``stats`` are plain floats (one device sync per call).
- All randomness (masks, mask noise, negatives, Gumbel noise) is drawn from the ``generator``
  argument (a CPU ``torch.Generator``) on the CPU and moved to the device: a resumed run that
  rebuilds the step's generator replays the step exactly. Frozen random buffers are drawn at
  construction from their own seeded generator, so every process builds the same ones.
- Logits, softmax and cross-entropy run in float32 with autocast disabled; the encoder may run
  under bf16 autocast.
- ``set_progress(g_step, g_steps)`` is a pure function of the run's g steps done and planned:
  calling it after restoring a checkpoint, or before every g step, gives the same state.
- Each loss masks with ``cfg.masking()`` (its own defaults unless configured) and reads the
  encoder's block ``cfg.layer``; every loss that masks logs ``masked_frac``, the fraction of valid
  encoder frames actually masked.
- ``encoder`` may be wrapped (DDP): attributes (``subsampling``, ``output_lengths``) are looked
  up on ``encoder.module`` when present, while the forward pass goes through the wrapper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import SSLConfig

__all__ = ["SSLLoss", "build_ssl_loss", "unwrap", "sample_negatives", "info_nce"]


class SSLLoss(nn.Module):
    """Base class of the self-supervised losses (see the module docstring for the contract)."""

    def forward(self, encoder: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator,
                ids: list[str] | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """feats: (B, T, F) normalised log-mel of unlabeled audio (zeros beyond lens), lens: (B,) frames,
        ids: the cut ids of the batch (needed by losses with per-utterance targets).

        Returns ``(loss_sum, count, stats)``: the loss summed over predicted positions, the number
        of positions (both float32 scalar tensors on the features' device) and health metrics.
        """
        raise NotImplementedError

    def set_progress(self, g_step: int, g_steps: int) -> None:
        """Schedules inside g at the run's g step ``g_step`` of ``g_steps``; a pure function of both
        (default: nothing)."""


def build_ssl_loss(cfg: SSLConfig, encoder_dim: int, feat_dim: int, seed: int = 0, targets=None) -> SSLLoss:
    """The loss named by ``cfg.loss`` for an encoder of width ``encoder_dim`` on ``feat_dim`` mel bins.

    ``targets``: HuBERT's :class:`~bljust.ssl_targets.Targets` (their number of clusters sizes its head;
    without them the head is sized by ``cfg.clusters`` and the loss can be loaded but not run).

    ``seed`` draws the frozen random buffers (BEST-RQ projection and codebooks, CPC target
    projection) from a generator of their own: the same in every process, independent of the
    global RNG. Learnable parameters are initialised from the global RNG like any module.
    """
    if cfg.loss == "bestrq":
        from bljust.losses.bestrq import BestRQLoss

        return BestRQLoss(cfg, encoder_dim, feat_dim, seed=seed)
    if cfg.loss == "cpc":
        from bljust.losses.cpc import CPCLoss

        return CPCLoss(cfg, encoder_dim, feat_dim, seed=seed)
    if cfg.loss == "wav2vec2":
        from bljust.losses.wav2vec2 import Wav2Vec2Loss

        return Wav2Vec2Loss(cfg, encoder_dim, feat_dim)
    if cfg.loss == "hubert":
        from bljust.losses.hubert import HubertLoss

        return HubertLoss(cfg, encoder_dim, feat_dim, targets=targets)
    raise ValueError(f"unknown ssl.loss {cfg.loss!r}")


# ---------------------------------------------------------------- helpers shared by the losses


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (the module itself otherwise)."""
    return getattr(module, "module", module)


def stats_to_floats(stats: dict[str, Tensor | float]) -> dict[str, float]:
    """Tensor-valued stats to plain floats with a single device transfer."""
    keys = [k for k, v in stats.items() if isinstance(v, Tensor)]
    out = {k: float(v) for k, v in stats.items() if not isinstance(v, Tensor)}
    if keys:
        values = torch.stack([stats[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in stats}


def sample_negatives(pool_offset: Tensor, pool_size: Tensor, self_index: Tensor, num: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform draws (with replacement) of ``num`` distractors per positive, never the positive itself.

    Positive ``i`` draws from the flat index range ``[pool_offset[i], pool_offset[i] + pool_size[i])``
    which contains the positive at ``self_index[i]`` (absolute). Returns ``(indices (N, num) long,
    valid (N, num) bool)``; a draw is invalid when the pool holds nothing but the positive.
    Drawn on the CPU from ``generator``, returned on the device of ``pool_offset``.
    """
    device = pool_offset.device
    n = pool_offset.numel()
    u = torch.rand((n, num), generator=generator, device="cpu").to(device)
    others = (pool_size - 1).clamp(min=0)
    r = (u * others[:, None]).long().minimum((others[:, None] - 1).clamp(min=0))
    rel_self = (self_index - pool_offset)[:, None]
    r = r + (r >= rel_self).long()  # skip the positive
    idx = pool_offset[:, None] + r
    valid = (others > 0)[:, None].expand(n, num)
    return torch.where(valid, idx, self_index[:, None]), valid


def utterance_pools(valid: Tensor) -> tuple[Tensor, Tensor]:
    """For the frames selected by ``valid`` (B, T') in row-major (flat) order: the flat offset of each
    frame's utterance's first selected frame and its utterance's number of selected frames, both (N,) long."""
    b, t = valid.shape
    per_utt = valid.sum(dim=1)
    offsets = per_utt.cumsum(0) - per_utt
    utt = torch.arange(b, device=valid.device)[:, None].expand(b, t)[valid]
    return offsets[utt], per_utt[utt]


def info_nce(pred: Tensor, pos: Tensor, neg: Tensor, temperature: float,
             neg_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cosine-similarity InfoNCE in float32, autocast off.

    pred, pos: (N, P); neg: (N, K, P); neg_valid: (N, K) bool (invalid distractors get -inf).
    Returns (per-position loss (N,), correct (N,) bool: the positive scored strictly highest).
    """
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred = F.normalize(pred.float(), dim=-1, eps=1e-6)
        cands = torch.cat((pos.float()[:, None, :], neg.float()), dim=1)  # (N, 1+K, P)
        cands = F.normalize(cands, dim=-1, eps=1e-6)
        logits = torch.einsum("np,nkp->nk", pred, cands) / temperature
        if neg_valid is not None:
            logits = torch.cat((logits[:, :1], logits[:, 1:].masked_fill(~neg_valid, float("-inf"))), dim=1)
        loss = torch.logsumexp(logits, dim=1) - logits[:, 0]
        correct = logits[:, 0] > logits[:, 1:].max(dim=1).values if logits.size(1) > 1 else \
            torch.ones_like(loss, dtype=torch.bool)
    return loss, correct
