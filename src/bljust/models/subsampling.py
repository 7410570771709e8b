"""Convolutional front-end: ×4 time subsampling of log-mel features.

Two unpadded ``Conv2d(kernel 3, stride 2)`` layers with ReLU over (time, frequency), then a
linear projection of the flattened (frequency × channels) map to ``d_model``.

For CPU speed the first convolution (one input channel) runs as a matmul over 3×3 patches
and the feature maps stay channels-last (B, T, F, C): oneDNN's channels-last kernels are
markedly faster for the second convolution's backward pass, and the final flatten is free.
The parameters are still those of two ``nn.Conv2d`` (``conv1``, ``conv2``) and ``out``.

Because the convolutions are unpadded, output frame ``t`` sees exactly input frames
``4t .. 4t+6`` and every output frame counted by :meth:`Conv2dSubsampling4.output_lengths`
sees only valid input frames: padding never reaches a valid output. Padded input frames are
zeroed anyway (``masked_fill``, so NaN/Inf in padding cannot propagate either).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bljust.models.dropout import Dropout

MIN_INPUT_FRAMES = 7
"""Shortest input (frames) that yields at least one output frame."""


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Exact output length of two unpadded stride-2 kernel-3 convolutions: ``((L-1)//2 - 1)//2``.

    Lengths below :data:`MIN_INPUT_FRAMES` map to 0 (never negative).
    """
    return torch.div(torch.div(lengths - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor").clamp(min=0)


def valid_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(B, max_len) bool, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class Conv2dSubsampling4(nn.Module):
    """(B, T, input_dim) → (B, T', d_model) with ``T' = ((T-1)//2 - 1)//2``."""

    def __init__(self, input_dim: int, channels: int, d_model: int, dropout: float = 0.0):
        super().__init__()
        if input_dim < MIN_INPUT_FRAMES:
            raise ValueError(f"Conv2dSubsampling4 needs input_dim >= {MIN_INPUT_FRAMES}, got {input_dim}")
        self.input_dim = input_dim
        self.channels = channels
        self.output_dim = d_model
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, stride=2)
        freq_out = ((input_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(freq_out * channels, d_model)
        self.dropout = Dropout(dropout)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        return subsampled_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, input_dim), lengths: (B,) int64 → (B, T', d_model), (B,) int64."""
        if x.dim() != 3 or x.size(-1) != self.input_dim:
            raise ValueError(f"expected input of shape (B, T, {self.input_dim}), got {tuple(x.shape)}")
        if x.size(1) < MIN_INPUT_FRAMES:
            raise ValueError(f"input has {x.size(1)} frames; at least {MIN_INPUT_FRAMES} are needed")
        lengths = lengths.to(device=x.device, dtype=torch.long)
        x = x.masked_fill(~valid_mask(lengths, x.size(1))[:, :, None], 0.0)
        # conv1 as a matmul over 3×3 patches: (B, T1, F1, 3, 3) @ (9, C) → (B, T1, F1, C)
        patches = x.unfold(1, 3, 2).unfold(2, 3, 2)
        b, t1, f1 = patches.shape[:3]
        c = self.channels
        # (9, C) made contiguous so that autograd's weight gradient is the fast patches^T @ grad
        w1 = self.conv1.weight.view(c, 9).t().contiguous()
        h = torch.addmm(self.conv1.bias, patches.reshape(b * t1 * f1, 9), w1)
        h = torch.relu_(h).view(b, t1, f1, c).permute(0, 3, 1, 2)  # (B, C, T1, F1), channels-last memory
        h = torch.relu_(self.conv2(h)).permute(0, 2, 3, 1)  # (B, T', F', C)
        x = self.out(h.reshape(b, h.size(1), -1))
        return self.dropout(x), self.output_lengths(lengths)
