"""BEST-RQ (Chiu et al., 2022): masked prediction of random-projection quantiser labels.

Labels, on the UNMASKED features and without gradient: the 4 consecutive normalised input
frames ``4t+1 .. 4t+4`` (inside output frame ``t``'s receptive field ``4t .. 4t+6``, matching
the ×4 front-end) are stacked into a ``4·F`` vector, projected by a frozen Xavier-initialised
random matrix to ``codebook_dim``, l2-normalised, and labelled with the nearest (by cosine)
entry of a frozen random l2-normalised codebook of ``codebook_size`` entries; one projection
and codebook per ``num_codebooks``. Both are buffers drawn from a fixed seed at construction.

The encoder sees the features with the masked input frames (:func:`span_mask`) replaced by
N(0, 0.1²) noise, as in the paper. A linear head per codebook (η) predicts the labels at the
masked encoder frames (:func:`subsample_mask`) with cross-entropy; ``loss_sum`` sums over
masked frames the cross-entropy averaged over codebooks.

Stats: ``acc`` (label accuracy at masked frames, chance = 1/codebook_size), ``masked_frac``
(masked fraction of valid encoder frames), ``code_usage`` (fraction of codebook entries that
label at least one valid frame of the batch, averaged over codebooks), ``loss`` (mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import SSLConfig
from bljust.losses import SSLLoss, stats_to_floats
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask

STACK = 4
"""Input frames stacked per label (one encoder frame)."""
STACK_OFFSET = 1
"""Output frame t is labelled from input frames 4t+1 .. 4t+4."""
MASK_NOISE_STD = 0.1
"""Standard deviation of the noise that replaces masked input frames."""


def stack_frames(feats: Tensor, t_out: int) -> Tensor:
    """(B, T, F) → (B, t_out, 4·F): input frames 4t+1 .. 4t+4 for each output frame t."""
    b, t, f = feats.shape
    end = STACK_OFFSET + STACK * t_out
    x = feats[:, STACK_OFFSET:end]
    if x.size(1) < STACK * t_out:  # cannot happen with the ×4 front-end; pad defensively
        x = F.pad(x, (0, 0, 0, STACK * t_out - x.size(1)))
    return x.reshape(b, t_out, STACK * f)


class BestRQLoss(SSLLoss):
    def __init__(self, cfg: SSLConfig, encoder_dim: int, feat_dim: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.num_codebooks = cfg.num_codebooks
        self.codebook_size = cfg.codebook_size
        g = torch.Generator().manual_seed(seed)
        n, v, d, fin = cfg.num_codebooks, cfg.codebook_size, cfg.codebook_dim, STACK * feat_dim
        # Xavier (Glorot) uniform: bound sqrt(6 / (fan_in + fan_out)).
        bound = (6.0 / (fin + d)) ** 0.5
        self.register_buffer("projection", (torch.rand((n, fin, d), generator=g) * 2 - 1) * bound)
        self.register_buffer("codebooks", F.normalize(torch.randn((n, v, d), generator=g), dim=-1))
        self.head = nn.Linear(encoder_dim, n * v)  # one linear head per codebook, fused

    @torch.no_grad()
    def labels(self, feats: Tensor, t_out: int) -> Tensor:
        """(B, T, F) features → (B, t_out, num_codebooks) long labels (float32, autocast off)."""
        with torch.autocast(device_type=feats.device.type, enabled=False):
            x = stack_frames(feats.float(), t_out)  # (B, T', 4F)
            z = F.normalize(torch.einsum("btf,nfd->btnd", x, self.projection.float()), dim=-1, eps=1e-6)
            sim = torch.einsum("btnd,nvd->btnv", z, self.codebooks.float())
            return sim.argmax(dim=-1)

    def forward(self, encoder: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator,
                ids: list[str] | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        b, t, f = feats.shape
        device = feats.device
        lens = lens.to(device)
        in_mask = span_mask(lens, t, *self.cfg.masking(), generator)  # (B, T)
        n_masked = int(in_mask.sum())
        noise = (torch.randn((n_masked, f), generator=generator) * MASK_NOISE_STD).to(device, feats.dtype)
        masked_feats = feats.masked_scatter(in_mask[:, :, None].expand(b, t, f), noise)

        hidden, out_lens = encoder(masked_feats, lens, layer=self.cfg.layer)  # (B, T', D)
        t_out = hidden.size(1)
        valid = valid_mask(out_lens, t_out)
        mask = subsample_mask(in_mask, t_out, out_lens)  # (B, T')
        labels = self.labels(feats, t_out)  # (B, T', N)

        n, v = self.num_codebooks, self.codebook_size
        target = labels[mask]  # (M, N)
        with torch.autocast(device_type=device.type, enabled=False):
            logits = self.head(hidden[mask].float()).view(-1, n, v)  # (M, N, V), only at masked frames
            ce = F.cross_entropy(logits.reshape(-1, v), target.reshape(-1), reduction="none").view(-1, n)
            loss_sum = ce.mean(dim=1).sum()
        count = mask.sum().to(torch.float32)
        with torch.no_grad():
            acc = (logits.argmax(dim=-1) == target).float().mean() if target.numel() else torch.zeros((), device=device)
            used = torch.zeros((n, v), dtype=torch.bool, device=device)
            valid_labels = labels[valid]  # (Nv, N)
            used[torch.arange(n, device=device)[None, :].expand_as(valid_labels), valid_labels] = True
            stats = {
                "loss": loss_sum.detach() / count.clamp(min=1),
                "acc": acc,
                "masked_frac": count / valid.sum().clamp(min=1),
                "code_usage": used.float().mean(),
            }
        return loss_sum, count, stats_to_floats(stats)
