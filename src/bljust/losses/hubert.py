"""HuBERT (Hsu et al., 2021): masked prediction of k-means cluster ids.

The targets are fixed per utterance before training (:mod:`bljust.ssl_targets`: iteration 1
clusters normalised MFCC or log-mel frames, iteration 2 a trained run's encoder layer) and looked
up by cut id, one id per encoder frame. The encoder sees its input with masked spans of input
frames (:func:`span_mask`, HuBERT's defaults: about half of the frames) replaced by a learned
mask embedding in input-feature space (η), and reads block ``cfg.layer``; a linear head (η)
predicts the cluster ids at the masked encoder frames (:func:`subsample_mask`) with
cross-entropy (HuBERT's α = 1: the loss is on masked frames only). The paper scores frames by
cosine similarity to learned cluster embeddings; a linear softmax head is the same model class
and what the small-scale recipes (MelHuBERT) use.

Stats: ``acc`` (masked accuracy), ``acc_majority`` (what always predicting the batch's most
frequent masked target would score: the bar ``acc`` must clear to show learning), ``masked_frac``
(masked fraction of valid encoder frames), ``code_usage`` (share of the clusters among the
batch's valid targets), ``loss`` (mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import SSLConfig
from bljust.losses import SSLLoss, stats_to_floats
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask


class HubertLoss(SSLLoss):
    def __init__(self, cfg: SSLConfig, encoder_dim: int, feat_dim: int, targets=None):
        super().__init__()
        self.cfg = cfg
        self.targets = targets  # bljust.ssl_targets.Targets; not module state: the run reloads it by its key
        self.clusters = targets.clusters if targets is not None else cfg.clusters
        self.mask_emb = nn.Parameter(torch.empty(feat_dim).normal_(0.0, 0.1))
        self.head = nn.Linear(encoder_dim, self.clusters)

    def forward(self, encoder: nn.Module, feats: Tensor, lens: Tensor, generator: torch.Generator,
                ids: list[str] | None = None) -> tuple[Tensor, Tensor, dict[str, float]]:
        if self.targets is None or ids is None:
            raise RuntimeError("the HuBERT loss needs its targets and the batch's cut ids")
        b, t, f = feats.shape
        device = feats.device
        lens = lens.to(device)
        in_mask = span_mask(lens, t, *self.cfg.masking(), generator)  # (B, T)
        masked_feats = torch.where(in_mask[:, :, None], self.mask_emb.to(feats.dtype), feats)
        hidden, out_lens = encoder(masked_feats, lens, layer=self.cfg.layer)  # (B, T', D)
        t_out = hidden.size(1)
        valid = valid_mask(out_lens, t_out)
        target = self.targets.batch(ids, out_lens.cpu(), t_out).to(device)  # (B, T'), -1 beyond the targets
        mask = subsample_mask(in_mask, t_out, out_lens) & (target >= 0)

        y = target[mask]
        with torch.autocast(device_type=device.type, enabled=False):
            logits = self.head(hidden[mask].float())  # (M, K), only at masked frames
            loss_sum = F.cross_entropy(logits, y, reduction="sum")
        count = mask.sum().to(torch.float32)
        with torch.no_grad():
            known = target[valid & (target >= 0)]
            freq = torch.bincount(y, minlength=self.clusters) if y.numel() else torch.zeros(1, device=device)
            stats = {
                "loss": loss_sum.detach() / count.clamp(min=1),
                "acc": (logits.argmax(dim=-1) == y).float().sum() / count.clamp(min=1),
                "acc_majority": freq.max().float() / count.clamp(min=1),
                "masked_frac": mask.sum() / valid.sum().clamp(min=1),
                "code_usage": torch.bincount(known, minlength=self.clusters).gt(0).float().mean() if known.numel()
                else torch.zeros((), device=device),
            }
        return loss_sum, count, stats_to_floats(stats)
