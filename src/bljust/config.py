"""Typed run configuration.

Configs are plain data: nested dataclasses with a docstring under every field, validated in
``__post_init__``, loaded from YAML, overridden by ``--set section.key=value`` and dumped
whole into every run directory and checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass
class DataConfig:
    max_duration: float = 60.0
    """Seconds of audio per batch and per process (lhotse's bucketing sampler constraint)."""
    num_buckets: int = 10
    """Duration buckets of the bucketing sampler; utterances of like length are batched together."""
    min_utterance_seconds: float = 0.3
    """Training utterances shorter than this are dropped (logged with the reason)."""
    max_utterance_seconds: float = 30.0
    """Training utterances longer than this (or than max_duration) are dropped (logged with the reason)."""
    num_workers: int = 1
    """DataLoader worker processes that read and decode audio (0: in the main process)."""
    buffer_size: int = 20000
    """Cuts the bucketing sampler holds at once to fill its buckets and shuffle."""

    def __post_init__(self) -> None:
        _check(self.max_duration > 0, "data.max_duration must be > 0")
        _check(self.num_buckets >= 1, "data.num_buckets must be >= 1")
        _check(0 <= self.min_utterance_seconds < self.max_utterance_seconds,
               "data.min_utterance_seconds must be >= 0 and < data.max_utterance_seconds")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")


@dataclass
class SpecAugmentConfig:
    num_freq_masks: int = 2
    """Frequency masks per utterance."""
    max_freq_width: int = 27
    """Widest frequency mask, in mel bins."""
    num_time_masks: int = 10
    """Upper bound on time masks per utterance (fewer on short utterances, see max_time_fraction)."""
    max_time_width: int = 40
    """Widest time mask, in frames (10 ms)."""
    max_time_fraction: float = 0.2
    """Largest fraction of an utterance's frames that time masks may cover together."""

    def __post_init__(self) -> None:
        _check(self.num_freq_masks >= 0 and self.num_time_masks >= 0, "spec_augment mask counts must be >= 0")
        _check(0.0 <= self.max_time_fraction < 1.0, "spec_augment.max_time_fraction must be in [0, 1)")


@dataclass
class FeatureConfig:
    num_mel_bins: int = 80
    """Log-mel filterbank channels (25 ms window, 10 ms shift, 16 kHz)."""
    normalize: Literal["global", "utterance", "none"] = "global"
    """Mean/variance normalisation: statistics of the training set (stored in the model), per utterance, or none."""
    spec_augment: bool = True
    """Apply SpecAugment to training batches (never at evaluation)."""
    augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    """SpecAugment masks."""

    def __post_init__(self) -> None:
        _check(self.num_mel_bins >= 8, "features.num_mel_bins must be >= 8")


@dataclass
class TokenizerConfig:
    kind: Literal["char", "bpe", "unigram"] = "char"
    """Output units: characters, or SentencePiece BPE / unigram pieces trained on the labeled transcripts."""
    vocab_size: int = 256
    """SentencePiece vocabulary size including the CTC blank (ignored for characters)."""

    def __post_init__(self) -> None:
        _check(self.vocab_size >= 8, "tokenizer.vocab_size must be >= 8")


@dataclass
class ModelConfig:
    arch: Literal["conformer", "cnn_lstm"] = "conformer"
    """Encoder architecture."""
    d_model: int = 144
    """Encoder width (attention/LSTM output size)."""
    num_layers: int = 4
    """Conformer blocks, or LSTM layers for cnn_lstm."""
    num_heads: int = 4
    """Attention heads (conformer); must divide d_model."""
    ff_mult: int = 4
    """Feed-forward expansion factor (conformer)."""
    conv_kernel: int = 15
    """Depthwise convolution kernel of the conformer conv module (odd)."""
    subsampling_channels: int = 144
    """Channels of the two stride-2 conv layers of the front-end (×4 subsampling in time)."""
    lstm_hidden: int = 256
    """Hidden units per direction of the bidirectional LSTM (cnn_lstm)."""
    dropout: float = 0.1
    """Dropout in the encoder."""

    def __post_init__(self) -> None:
        _check(self.d_model > 0 and self.num_layers > 0, "model.d_model and model.num_layers must be > 0")
        _check(self.d_model % self.num_heads == 0, "model.num_heads must divide model.d_model")
        _check((self.d_model // self.num_heads) % 2 == 0, "model.d_model / model.num_heads must be even (rotary positions)")
        _check(self.conv_kernel % 2 == 1, "model.conv_kernel must be odd")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    warmup_steps: int = 500
    """Linear warm-up from 0 to lr."""
    schedule: Literal["cosine", "constant", "noam"] = "cosine"
    """Decay after warm-up: cosine to min_lr_ratio·lr at the last step, constant, or inverse square root."""
    min_lr_ratio: float = 0.05
    """Floor of the cosine decay, relative to lr."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this value (0 disables)."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives lists
        _check(self.lr > 0, "optim.lr must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        _check(len(self.betas) == 2, "optim.betas must have two values")


@dataclass
class TrainConfig:
    seed: int = 42
    """Seed of every random number generator (model init, sampler order, SpecAugment, dropout)."""
    max_steps: int = 3000
    """Optimiser steps of the run (the training budget); epochs roll over as needed."""
    valid_every: int = 500
    """Validate on dev (loss, greedy CER/WER) every this many steps and at the end."""
    checkpoint_every: int = 250
    """Write a resumable checkpoint every this many steps (and at validation and at the end)."""
    keep_last: int = 3
    """Periodic checkpoints kept; older ones are pruned (best.pt is kept apart)."""
    best_metric: Literal["cer", "wer", "loss"] = "cer"
    """Dev metric that selects best.pt; CER while WER sits near 100 % at demo scale."""
    log_every: int = 10
    """Write metrics every this many steps."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    amp: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    max_bad_steps: int = 100
    """Abort after this many skipped steps with a non-finite loss or gradient (each is logged)."""
    num_threads: int = 0
    """torch intra-op threads per process (0: leave torch's default)."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.valid_every >= 1 and self.checkpoint_every >= 1 and self.log_every >= 1,
               "train.valid_every, train.checkpoint_every and train.log_every must be >= 1")
        _check(self.keep_last >= 1, "train.keep_last must be >= 1")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    """Batching and utterance filtering."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Log-mel features and SpecAugment."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Output units."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Encoder architecture and size."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Budget, validation, checkpoints, device."""


# ---------------------------------------------------------------- loading and dumping


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Build a value of type ``tp`` from plain YAML data, with errors naming the key."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, where)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(typing.get_args(tp), value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in section '{where or 'top level'}'; "
                          f"known: {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:  # pragma: no cover - defensive
        raise ConfigError(f"{where}: {e}") from e


def config_from_dict(data: dict, cls: type = Config) -> Any:
    return _from_dict(cls, data or {})


def to_dict(cfg: Any) -> dict:
    d = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:  # tuples become lists so YAML stays plain
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(d)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` strings (value parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls: type = Config) -> Any:
    """Defaults, then the YAML file, then ``--set`` overrides; validated."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p}: top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    return config_from_dict(data, cls)


def dump_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
