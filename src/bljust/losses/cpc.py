"""CPC-style InfoNCE (as in the ICASSP BL-JUST paper), made non-trivial for bidirectional encoders.

Plain CPC lets the context ``c_t`` predict the frames ``t+1 .. t+K`` ahead. Our encoders are
bidirectional: ``c_t`` has already seen ``t+k``, and with targets taken from the same encoder
the prediction is trivial. So the future is hidden from the encoder instead:

1. Spans of input frames are masked (:func:`span_mask`) and replaced by a learned mask
   embedding in input-feature space (η); the encoder runs on the masked input (with gradient).
2. Targets: the encoder runs again on the UNMASKED input, in eval mode (no dropout) and under
   ``torch.no_grad`` (stop-gradient), and its outputs go through a frozen random projection
   (a buffer) to ``proj_dim``: ``z_t``. Being constants for the step, the targets cannot be
   moved towards the predictions, so the loss cannot collapse them; InfoNCE against
   distractors keeps the predictions from collapsing.
3. Pairs: an UNMASKED encoder frame ``t`` (the context) predicts the target of frame ``t+k``,
   ``k = 1..K`` (``cpc_steps``), only when ``t+k`` is a MASKED encoder frame
   (:func:`subsample_mask`) inside the utterance. So the last unmasked frame before a masked
   span predicts the span's first K frames, the frame before it the first K-1, etc. The
   input behind every target is hidden from the whole encoder (but for at most 3 of the 7
   input frames in a target's receptive field at a span's edge: the majority rule of
   :func:`subsample_mask`), and the targets carry no gradient, so nothing can be copied. The
   context may use the audio on both sides of the gap: CPC becomes gap-filling rather than
   pure extrapolation, which is what a bidirectional encoder allows without a second, causal
   network. (The input frames inside the masked spans get exactly zero gradient; tested.)
4. ``pred = W_k c_t`` with a per-offset linear head ``W_k`` (η), initialised to the target
   projection (a start from "the future looks like the present", which otherwise takes the
   heads some 50 steps to find); the score of a candidate is
   ``cos(pred, z) / temperature``; distractors are ``num_negatives`` targets drawn uniformly
   (with replacement), never the positive frame itself: a share ``cpc_same_utterance`` from the
   valid frames of the positive's own utterance, the rest from all valid frames of the batch.
   Distractors from other utterances can be told apart by speaker and channel alone, which a
   frame-level representation should not be rewarded for (Oord et al. found same-sequence
   negatives better for phones); an utterance with a single valid frame draws all from the batch.

Stats: ``acc`` (positive ranked first), ``acc_chance`` (1/(num_negatives+1)), ``masked_frac``,
``loss`` (mean InfoNCE), ``target_std`` (collapse indicator: per-dimension standard deviation over the
batch's valid frames of the l2-normalised targets, averaged over dimensions and multiplied by
sqrt(proj_dim); ≈ 1 for isotropic targets, → 0 if the encoder's outputs collapse),
``pairs_per_frame`` (predicted pairs per valid encoder frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import SSLConfig
from bljust.losses import SSLLoss, info_nce, sample_negatives, stats_to_floats, utterance_pools
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask


def cpc_pairs(mask: Tensor, valid: Tensor, steps: int) -> list[Tensor]:
    """Context/target pairs per offset k = 1..steps over encoder frames.

    mask, valid: (B, T') bool (masked, valid encoder frames). Returns one (B, T' - k) bool tensor
    per k, True at ``t`` when frame ``t`` is a valid unmasked context and ``t + k`` a valid masked
    target (an offset k >= T' is clipped to T' and selects nothing).
    """
    t_out = mask.size(1)
    context_ok = valid & ~mask
    target_ok = valid & mask
    pairs = []
    for k in range(1, steps + 1):  # a handful of offsets; each is vectorised over frames
        k = min(k, t_out)
        pairs.append(context_ok[:, :t_out - k] & target_ok[:, k:])
    return pairs


class CPCLoss(SSLLoss):
    def __init__(self, cfg: SSLConfig, encoder_dim: int, feat_dim: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.steps = cfg.cpc_steps
        g = torch.Generator().manual_seed(seed)
        # Frozen random projection of the targets: N(0, 1/D) keeps the norms; a buffer, never trained.
        self.register_buffer("target_proj", torch.randn((encoder_dim, cfg.proj_dim), generator=g) / encoder_dim ** 0.5)
        self.mask_emb = nn.Parameter(torch.empty(feat_dim).normal_(0.0, 0.1))
        self.heads = nn.ModuleList(nn.Linear(encoder_dim, cfg.proj_dim) for _ in range(cfg.cpc_steps))
        with torch.no_grad():  # start from "the future looks like the present": W_k = target projection
            for head in self.heads:
                head.weight.copy_(self.target_proj.t())
                head.bias.zero_()

    @torch.no_grad()
    def targets(self, encoder: nn.Module, feats: Tensor, lens: Tensor) -> Tensor:
        """Stop-gradient targets (B, T', proj_dim) in float32: the encoder (eval mode) on the plain input."""
        was_training = encoder.training
        encoder.eval()
        try:
            hidden, _ = encoder(feats, lens, layer=self.cfg.layer)
        finally:
            encoder.train(was_training)
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return hidden.float() @ self.target_proj.float()

    def forward(self, encoder: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator,
                ids: list[str] | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        b, t, f = feats.shape
        device = feats.device
        lens = lens.to(device)
        in_mask = span_mask(lens, t, *self.cfg.masking(), generator)

        z = self.targets(encoder, feats, lens)  # (B, T', P), constants
        masked_feats = torch.where(in_mask[:, :, None], self.mask_emb.to(feats.dtype), feats)
        hidden, out_lens = encoder(masked_feats, lens, layer=self.cfg.layer)  # (B, T', D)
        t_out = hidden.size(1)
        valid = valid_mask(out_lens, t_out)
        mask = subsample_mask(in_mask, t_out, out_lens)

        # Flat index of every valid target frame (row-major, so each utterance's frames are contiguous).
        flat_index = valid.flatten().long().cumsum(0).sub(1).view(b, t_out)
        pool = z[valid]  # (Nv, P)

        preds, positive_index = [], []
        with torch.autocast(device_type=device.type, enabled=False):
            h32 = hidden.float()
            for head, pair in zip(self.heads, cpc_pairs(mask, valid, self.steps)):
                k = t_out - pair.size(1)
                preds.append(head(h32[:, :t_out - k][pair]))  # contexts at t
                positive_index.append(flat_index[:, k:][pair])  # targets at t + k
        pred = torch.cat(preds)
        pos_idx = torch.cat(positive_index)
        n = pos_idx.numel()
        n_own = round(self.cfg.cpc_same_utterance * self.cfg.num_negatives)
        utt_offset, utt_size = utterance_pools(valid)
        utt_offset, utt_size = utt_offset[pos_idx], utt_size[pos_idx]
        own = utt_size >= 2  # otherwise the utterance holds nothing but the positive: draw from the batch
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        everyone = torch.full_like(zeros, pool.size(0))
        own_idx, own_valid = sample_negatives(torch.where(own, utt_offset, zeros), torch.where(own, utt_size, everyone),
                                              pos_idx, n_own, generator)
        batch_idx, batch_valid = sample_negatives(zeros, everyone, pos_idx, self.cfg.num_negatives - n_own, generator)
        neg_idx, neg_valid = torch.cat((own_idx, batch_idx), dim=1), torch.cat((own_valid, batch_valid), dim=1)
        loss, correct = info_nce(pred, pool[pos_idx], pool[neg_idx], self.cfg.temperature, neg_valid)
        counted = neg_valid.any(dim=1)  # False only when the batch has a single valid frame
        loss_sum = torch.where(counted, loss, torch.zeros_like(loss)).sum()
        count = counted.sum().to(torch.float32)

        with torch.no_grad():
            nv = valid.sum().clamp(min=1).float()
            zn = F.normalize(pool.float(), dim=-1, eps=1e-6)
            target_std = zn.std(dim=0, unbiased=False).mean() * zn.size(1) ** 0.5 if zn.size(0) > 1 \
                else torch.zeros((), device=device)
            stats = {
                "loss": loss_sum.detach() / count.clamp(min=1),
                "acc": (correct & counted).float().sum() / count.clamp(min=1),
                "acc_chance": torch.tensor(1.0 / (1 + self.cfg.num_negatives), device=device),
                "masked_frac": mask.sum() / nv,
                "target_std": target_std,
                "pairs_per_frame": torch.tensor(float(n), device=device) / nv,
            }
        return loss_sum, count, stats_to_floats(stats)
