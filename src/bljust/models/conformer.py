"""Conformer encoder (Gulati et al., 2020) with rotary relative positions.

Front-end :class:`~bljust.models.subsampling.Conv2dSubsampling4` (×4 in time), then
``cfg.num_layers`` blocks, each with pre-norm residuals::

    x = x + ½·FFN(x)          # macaron half-step feed-forward
    x = x + MHSA(x)           # rotary position embeddings, key-padding mask
    x = x + Conv(x)           # pointwise+GLU, depthwise (cfg.conv_kernel), LayerNorm, SiLU, pointwise
    x = x + ½·FFN(x)
    x = LayerNorm(x)

Padding invariance: every operation is per-frame except attention (padded keys are masked
out) and the depthwise convolution (padded frames are zeroed before it, which is exactly the
conv's own zero padding at a sequence end). The conv module normalises with LayerNorm, not
BatchNorm, so a sequence's output depends neither on padding nor on the rest of the batch.
Padded output frames are returned as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bljust.config import ModelConfig
from bljust.models.dropout import Dropout
from bljust.models.subsampling import Conv2dSubsampling4, valid_mask

ROPE_BASE = 10000.0


def rotary_tables(length: int, head_dim: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin tables of shape (length, head_dim) for rotate-half rotary embeddings.

    Computed in float32 and cast to ``dtype`` (the dtype of q and k, e.g. bf16 under autocast).
    """
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (..., T, head_dim); rotates pairs (i, i + head_dim/2) by position-dependent angles."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.lin1 = nn.Linear(d_model, mult * d_model)
        self.lin2 = nn.Linear(mult * d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.lin2(self.dropout(F.silu(self.lin1(self.norm(x))))))


class RotarySelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.norm = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = dropout
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        """x: (B, T, d); attn_mask: (B, 1, 1, T) bool, True = attend."""
        b, t, d = x.shape
        qkv = self.qkv(self.norm(x)).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, T, dh)
        cos, sin = rope
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.dropout(self.out(y.transpose(1, 2).reshape(b, t, d)))


class ConvModule(nn.Module):
    def __init__(self, d_model: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.conv_norm = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor, pad_mask: Tensor) -> Tensor:
        """x: (B, T, d); pad_mask: (B, T, 1) bool, True on padded frames."""
        x = F.glu(self.pointwise1(self.norm(x)), dim=-1)
        x = x.masked_fill(pad_mask, 0.0)
        # The depthwise Conv1d run as a (kernel × 1) Conv2d on a channels-last (B, d, T, 1) view of
        # (B, T, d): same weights and result, no transposed copies, ~2-3× faster on CPU (oneDNN).
        conv = self.depthwise
        x = F.conv2d(x.transpose(1, 2).unsqueeze(-1), conv.weight.unsqueeze(-1), conv.bias,
                     padding=(conv.padding[0], 0), groups=conv.groups)
        x = x.squeeze(-1).transpose(1, 2)
        x = self.pointwise2(F.silu(self.conv_norm(x)))
        return self.dropout(x)


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.attn = RotarySelfAttention(d, cfg.num_heads, cfg.dropout)
        self.conv = ConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: Tensor, attn_mask: Tensor, pad_mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn(x, attn_mask, rope)
        x = x + self.conv(x, pad_mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


def block_index(layer: int, num_layers: int) -> int:
    """The 0-based block that ``layer`` names (negative counts from the end), with a clear error."""
    index = layer + num_layers if layer < 0 else layer
    if not 0 <= index < num_layers:
        raise ValueError(f"layer {layer} does not exist in an encoder of {num_layers} blocks "
                         f"(valid: {-num_layers}..{num_layers - 1})")
    return index


class ConformerEncoder(nn.Module):
    """(B, T, input_dim) log-mel features → (B, T', cfg.d_model), T' = ((T-1)//2 - 1)//2."""

    def __init__(self, cfg: ModelConfig, input_dim: int):
        super().__init__()
        self.cfg = cfg
        self.input_dim = input_dim
        self.output_dim = cfg.d_model
        self.subsampling = Conv2dSubsampling4(input_dim, cfg.subsampling_channels, cfg.d_model, cfg.dropout)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_layers))

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.subsampling.output_lengths(lengths)

    def forward(self, x: Tensor, lengths: Tensor, layer: int = -1) -> tuple[Tensor, Tensor]:
        """``layer``: return the output of this block (0-based, negative from the end; -1: the last);
        the blocks above it are not run."""
        blocks = self.layers[:block_index(layer, len(self.layers)) + 1]
        x, out_lengths = self.subsampling(x, lengths)
        t = x.size(1)
        valid = valid_mask(out_lengths, t)  # (B, T')
        # A sequence with no valid frame would mask every key (NaN rows): let it see frame 0.
        attn_mask = valid_mask(out_lengths.clamp(min=1), t)[:, None, None, :]
        pad_mask = ~valid[:, :, None]
        rope = rotary_tables(t, self.cfg.d_model // self.cfg.num_heads, x.device, torch.float32)
        for block in blocks:
            x = block(x, attn_mask, pad_mask, rope)
        return x.masked_fill(pad_mask, 0.0), out_lengths
