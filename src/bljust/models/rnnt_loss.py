"""The RNN-T loss (Graves 2012) in plain PyTorch: no packaged implementation installs here
(``shared/docs/stack.md``).

The lattice of an utterance with T encoder frames and U units has a node (t, u) for every frame and
number of units emitted so far; from (t, u) the model either emits blank and moves to (t+1, u) or
emits unit y_{u+1} and moves to (t, u+1). The loss is −log of the sum over every path from (0, 0) that
ends with a blank out of (T−1, U). ``lattice_log_probs`` turns joint logits into the two log-probs
each node needs, ``rnnt_loss_sum`` runs the forward (alpha) recursion over them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def lattice_log_probs(logits: Tensor, labels: Tensor, blank: int = 0) -> tuple[Tensor, Tensor]:
    """Log-probs of blank (B, T, U+1) and of the next unit (B, T, U) from joint logits (B, T, U+1, V) and
    padded ``labels`` (B, U), in float32 (float64 stays float64) whatever the logits' dtype.

    Only the normaliser and two gathered entries per node leave this function, never the (B, T, U+1, V)
    log-softmax, so a caller that recomputes the logits in the backward pass keeps no tensor of that size.
    """
    logits = logits.float() if logits.dtype != torch.float64 else logits
    norm = torch.logsumexp(logits, dim=-1)  # (B, T, U+1)
    blank_lp = logits[..., blank] - norm
    u = labels.shape[1]
    index = labels[:, None, :, None].expand(-1, logits.shape[1], -1, 1)
    label_lp = logits[:, :, :u].gather(3, index).squeeze(3) - norm[:, :, :u]
    return blank_lp, label_lp


def rnnt_loss_sum(blank_lp: Tensor, label_lp: Tensor, frames: Tensor, units: Tensor) -> Tensor:
    """Summed RNN-T loss of a batch: Σ_b −log P(y_b | x_b).

    ``blank_lp`` (B, T, U+1) and ``label_lp`` (B, T, U) as ``lattice_log_probs`` returns them, padded to the
    batch's longest utterance; ``frames`` and ``units`` (B,) the true T_b ≥ 1 and U_b ≥ 0 (entries past them
    are never read into the result). Non-finite values are kept so that the caller can see and skip them.

    The recursion  α(t, u) = logaddexp(α(t−1, u) + blank(t−1, u), α(t, u−1) + label(t, u−1))  runs one frame
    at a time, all of u at once: with C(t, u) = Σ_{j<u} label(t, j),
    α(t, u) = C(t, u) + logcumsumexp_{k≤u}(α(t−1, k) + blank(t−1, k) − C(t, k)),
    so the Python loop is over frames only and every step is a few batched tensor operations.
    """
    cum = F.pad(label_lp.cumsum(dim=2), (1, 0))  # C(t, u): (B, T, U+1)
    alpha = cum[:, 0]  # from (0, 0) the only way to (0, u) is emitting u units at frame 0
    alphas = [alpha]
    for t in range(1, blank_lp.shape[1]):
        alpha = cum[:, t] + torch.logcumsumexp(alpha + blank_lp[:, t - 1] - cum[:, t], dim=1)
        alphas.append(alpha)
    every = torch.stack(alphas, dim=1)  # (B, T, U+1)
    b = torch.arange(blank_lp.shape[0], device=blank_lp.device)
    last = frames.long() - 1
    return -(every[b, last, units] + blank_lp[b, last, units]).sum()
