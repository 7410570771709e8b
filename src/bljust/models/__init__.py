"""Acoustic models: a shared encoder (θ) and per-objective heads."""

from __future__ import annotations

from torch import nn

from bljust.config import ModelConfig


def build_encoder(cfg: ModelConfig, input_dim: int) -> nn.Module:
    """The encoder named by ``cfg.arch``; every encoder maps (B, T, F), lengths → (B, T/4, d_model), lengths."""
    if cfg.arch == "conformer":
        from bljust.models.conformer import ConformerEncoder

        return ConformerEncoder(cfg, input_dim)
    if cfg.arch == "cnn_lstm":
        from bljust.models.cnn_lstm import CnnLstmEncoder

        return CnnLstmEncoder(cfg, input_dim)
    raise ValueError(f"unknown model.arch {cfg.arch!r}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (works on the 'meta' device too)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
