"""Span masks over input frames and their image on the encoder's (×4 subsampled) frames.

``span_mask`` is wav2vec-style: every valid 10 ms frame starts a span of ``span`` frames with
probability ``mask_prob``; spans may overlap, so away from the edges the expected masked
fraction is ``1 - (1 - mask_prob)**span`` (≈ ``mask_prob·span`` when that is small; 0.33 for
the defaults 0.02 × 20). Spans start only where they fit inside the utterance, so nothing at or
beyond ``lens`` is masked, and an utterance of at least ``span`` frames that drew no start gets
one span at a uniform position. Utterances shorter than ``span`` are left unmasked.

``subsample_mask`` maps an input-frame mask to encoder frames. The front-end
(:class:`~bljust.models.subsampling.Conv2dSubsampling4`: two unpadded kernel-3 stride-2
convolutions) gives output frame ``t`` the receptive field of input frames ``4t .. 4t+6``; the
output frame counts as masked when most (at least 4) of those 7 frames are masked. The number
of output frames and the valid ones are those of the encoder (pass its ``output_lengths`` or
the lengths it returned), so the mask is consistent with the encoder's output by construction.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bljust.models.subsampling import subsampled_lengths, valid_mask

RECEPTIVE_FIELD = 7
"""Input frames seen by one output frame of the ×4 front-end (4t .. 4t+6)."""
STRIDE = 4
"""Input frames per output frame."""
MAJORITY = RECEPTIVE_FIELD // 2 + 1
"""Masked input frames (of the receptive field) that make an output frame masked."""


def span_mask(lens: Tensor, T: int, mask_prob: float, span: int, generator: torch.Generator) -> Tensor:
    """(B, T) bool mask of spans of ``span`` input frames, True = masked (see the module docstring).

    Draws ``B·T + B`` uniforms from ``generator`` on the CPU whatever the outcome; the result is
    on the device of ``lens``.
    """
    device = lens.device
    lens_cpu = lens.detach().to("cpu", torch.long).clamp(max=T)
    b = lens_cpu.numel()
    u = torch.rand((b, T), generator=generator)
    fallback_u = torch.rand((b,), generator=generator)
    if T == 0 or b == 0:
        return torch.zeros((b, T), dtype=torch.bool, device=device)
    last_start = lens_cpu - span  # inclusive; negative: the utterance is too short for a span
    can_start = torch.arange(T)[None, :] <= last_start[:, None]
    starts = (u < mask_prob) & can_start
    # At least one span per utterance that can hold one.
    needs = (~starts.any(dim=1)) & (last_start >= 0)
    forced = (fallback_u * (last_start + 1).clamp(min=1)).long().minimum(last_start.clamp(min=0))
    starts[needs, forced[needs]] = True
    # Frame t is masked when a span starts in (t - span, t]: a window sum over the starts.
    c = F.pad(starts.to(torch.int32).cumsum(dim=1), (span, 0))
    mask = (c[:, span:] - c[:, :-span]) > 0
    return mask.to(device)


def subsample_mask(mask: Tensor, out: int | Callable[[Tensor], Tensor] = subsampled_lengths,
                   out_lens: Tensor | None = None) -> Tensor:
    """Input-frame mask (B, T) → encoder-frame mask (B, T').

    ``out``: the number of output frames T', or the encoder's ``output_lengths`` function (then
    ``T' = out(T)``). ``out_lens``: the encoder's output lengths; frames at or beyond them are
    never masked. Output frame ``t`` is masked when at least :data:`MAJORITY` of input frames
    ``4t .. 4t+6`` are (frames beyond the input count as unmasked).
    """
    b, t = mask.shape
    t_out = int(out(torch.tensor([t]))[0]) if callable(out) else int(out)
    need = STRIDE * (t_out - 1) + RECEPTIVE_FIELD if t_out > 0 else 0
    m = mask.to(torch.float32)
    if need > t:
        m = F.pad(m, (0, need - t))
    if t_out == 0:
        return torch.zeros((b, 0), dtype=torch.bool, device=mask.device)
    counts = m[:, :need].unfold(1, RECEPTIVE_FIELD, STRIDE).sum(dim=-1)  # (B, T')
    sub = counts >= MAJORITY
    if out_lens is not None:
        sub = sub & valid_mask(out_lens.to(mask.device), t_out)
    return sub
