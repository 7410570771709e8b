"""CTC decoding."""

from __future__ import annotations

import torch
from torch import Tensor


def greedy_ctc(log_probs: Tensor, lens: Tensor, blank: int = 0) -> tuple[list[list[int]], list[float]]:
    """Best path: argmax per frame, repeats merged, blanks removed.

    Also returns a confidence per utterance: the mean log-posterior of the emitted frames'
    best units (0 for an empty hypothesis), as pseudo-labeling filters use.
    """
    best, ids = log_probs.max(dim=-1)
    out, conf = [], []
    for b in range(ids.shape[0]):
        n = int(lens[b])
        seq = ids[b, :n]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        keep &= seq != blank
        out.append(seq[keep].tolist())
        conf.append(float(best[b, :n][keep].mean()) if bool(keep.any()) else 0.0)
    return out, conf
