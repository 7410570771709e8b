"""Typed run configuration.

Configs are plain data: nested dataclasses with a docstring under every field, validated in
``__post_init__``, loaded from YAML, overridden by ``--set section.key=value`` and dumped
whole into every run directory and checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
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
    speed_perturb: list[float] = field(default_factory=list)
    """Speed factors whose copies join the labeled split (icefall's 0.9/1.1 recipe; empty: none).
    A speed change moves pitch and formants too, so it adds voices to a few-speaker labeled set."""
    heldout_unlabeled_fraction: float = 0.03
    """Share of the unlabeled split's audio held out of every method's training (whole utterances,
    picked by a hash of the cut id). The methods with an SSL head measure g on it in eval mode at
    every validation (``g_heldout``): a fixed, noise-free measure of the lower level. 0: none."""
    heldout_unlabeled_max_seconds: float = 300.0
    """Cap on the held-out unlabeled audio, so validation stays cheap on large unlabeled sets."""
    lazy: bool = False
    """Read the labeled and unlabeled training splits lazily, for splits too large for memory (LibriSpeech's
    960 h): one streaming pass at the start of a run filters each (drop counts complete, as without it)
    and writes what trains to ``RUN/lazy/{split}_cuts.jsonl.gz``, which the sampler then reads anew each
    epoch; the held-out unlabeled utterances are chosen in that pass. Each split's supervisions must
    come in their recordings' order. Dev and test stay in memory; pseudo-labeling does not support it."""
    features: Literal["audio", "precomputed"] = "audio"
    """Where log-mel features come from: ``audio``, computed from the waveform in the trainer (on its device);
    ``precomputed``, read from what ``bljust features DATA`` stored for every split the run reads (labeled,
    unlabeled, dev; lilcom archives), so the loader decodes no audio. Missing or stale features (manifests
    changed since) are an error naming the file. Speed-perturbed copies are computed from audio either way;
    ``bljust evaluate``, ``transcribe`` and ``compare``'s test scoring read audio (the model's front-end)."""
    labeled_splits: list[str] = field(default_factory=lambda: ["labeled"])
    """The splits whose union is the labeled training set (each needs transcripts). ``bljust compare``'s
    topline trains on ``[labeled, unlabeled_text]``: the unlabeled utterances with their transcripts."""

    def __post_init__(self) -> None:
        _check(self.max_duration > 0, "data.max_duration must be > 0")
        _check(all(0.5 <= f <= 2.0 and f != 1.0 for f in self.speed_perturb),
               "data.speed_perturb factors must be in [0.5, 2] and not 1 (the original is always kept)")
        _check(self.num_buckets >= 1, "data.num_buckets must be >= 1")
        _check(0 <= self.min_utterance_seconds < self.max_utterance_seconds,
               "data.min_utterance_seconds must be >= 0 and < data.max_utterance_seconds")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")
        _check(0 <= self.heldout_unlabeled_fraction < 0.5, "data.heldout_unlabeled_fraction must be in [0, 0.5)")
        _check(self.heldout_unlabeled_max_seconds >= 0, "data.heldout_unlabeled_max_seconds must be >= 0")
        _check(bool(self.labeled_splits) and len(set(self.labeled_splits)) == len(self.labeled_splits),
               "data.labeled_splits must name at least one split, each once")
        _check("unlabeled" not in self.labeled_splits,
               "data.labeled_splits cannot hold 'unlabeled': it has no transcripts (its transcribed copy is "
               "'unlabeled_text')")


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
    loss: Literal["ctc", "rnnt"] = "ctc"
    """The supervised loss f and its head φ: 'ctc' (a linear CTC layer over the encoder) or 'rnnt' (an RNN
    transducer: a prediction network over the units emitted so far and a joiner, trained with the RNN-T loss;
    decoded greedily while training and by a beam search in evaluation). The word-LM beam search
    (``decode.lm``, ``--lm``, ``pl.decode: lm``) reads CTC posteriors, so it is CTC-only."""
    predictor: Literal["stateless", "lstm"] = "stateless"
    """rnnt: the prediction network: icefall's stateless one (an embedding of the last ``context_size`` units and
    a 1-D convolution over them) or a one-layer LSTM over all units emitted so far."""
    context_size: int = 2
    """rnnt, stateless predictor: units of left context it reads (2: a bigram-like predictor, as icefall)."""
    predictor_dim: int = 256
    """rnnt: width of the prediction network's embedding and output (a multiple of 4: the stateless
    predictor's convolution has predictor_dim / 4 groups, as icefall's)."""
    joiner_dim: int = 256
    """rnnt: the joiner projects the encoder and the predictor to this width, adds them, applies tanh and a
    linear layer over the units (blank = 0 included)."""
    rnnt_chunk: int = 4
    """rnnt: utterances whose (T, U+1, units) joint is computed at once. The loss recomputes each chunk's joint
    in the backward pass instead of keeping it, so memory grows with the chunk, not with the batch."""

    def __post_init__(self) -> None:
        _check(self.d_model > 0 and self.num_layers > 0, "model.d_model and model.num_layers must be > 0")
        _check(self.context_size >= 1, "model.context_size must be >= 1")
        _check(self.predictor_dim > 0 and self.predictor_dim % 4 == 0, "model.predictor_dim must be a positive "
               "multiple of 4")
        _check(self.joiner_dim > 0, "model.joiner_dim must be > 0")
        _check(self.rnnt_chunk >= 1, "model.rnnt_chunk must be >= 1")
        _check(self.d_model % self.num_heads == 0, "model.num_heads must divide model.d_model")
        _check((self.d_model // self.num_heads) % 2 == 0, "model.d_model / model.num_heads must be even (rotary positions)")
        _check(self.conv_kernel % 2 == 1, "model.conv_kernel must be odd")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")


@dataclass
class SSLConfig:
    loss: Literal["bestrq", "cpc", "wav2vec2", "hubert"] = "bestrq"
    """The self-supervised (lower-level) loss g on unlabeled audio."""
    mask_prob: float | None = None
    """Probability that a 10 ms input frame starts a masked span; None: the loss's own default
    (``MASK_DEFAULTS``, from its paper and recipes: about half of the frames masked, in spans)."""
    mask_span: int | None = None
    """Length of a masked span in 10 ms input frames; None: the loss's own default (``MASK_DEFAULTS``)."""
    layer: int = -1
    """Encoder block whose output g reads (0-based; negative counts from the end, -1 = the final output, the one
    the CTC head reads). A lower block leaves the blocks above it to f alone."""
    codebook_size: int = 512
    """BEST-RQ: entries of the frozen random codebook (the number of classes predicted)."""
    codebook_dim: int = 16
    """BEST-RQ: dimension of the random projection and codebook."""
    num_codebooks: int = 1
    """BEST-RQ: independent random codebooks (one softmax each; losses averaged)."""
    targets: str | None = None
    """HuBERT: a targets file written by ``bljust ssl-targets`` (e.g. iteration 2: k-means of a trained run's
    encoder layer); None: iteration-1 targets, k-means of per-utterance normalised ``target_features`` frames of
    the unlabeled split, computed once and cached in DATA/ssl_targets/."""
    target_features: Literal["mfcc", "fbank"] = "mfcc"
    """HuBERT iteration 1: cluster MFCCs (13 + deltas + delta-deltas) or log-mel frames."""
    clusters: int = 100
    """HuBERT iteration 1: k-means clusters (the number of classes predicted)."""
    proj_dim: int = 128
    """Dimension of the contrastive projection space (cpc, wav2vec2)."""
    temperature: float = 0.1
    """Temperature of the cosine-similarity InfoNCE logits (cpc, wav2vec2)."""
    num_negatives: int = 50
    """Distractors per positive (cpc, wav2vec2; wav2vec2 draws them from the positive's own utterance)."""
    cpc_same_utterance: float = 0.8
    """CPC: share of the distractors drawn from the positive's own utterance (the rest from the whole batch), so
    that speaker and channel identity alone cannot tell the positive apart (Oord et al.; review §2.1)."""
    cpc_steps: int = 4
    """CPC: future offsets k = 1..K predicted by per-offset heads (in encoder frames)."""
    quantizer_groups: int = 2
    """wav2vec 2.0: codebook groups of the Gumbel-softmax quantiser."""
    quantizer_entries: int = 64
    """wav2vec 2.0: entries per group."""
    gumbel_temperature: tuple[float, ...] = (2.0, 0.5)
    """wav2vec 2.0: Gumbel temperature at the first g step and its floor."""
    gumbel_anneal_fraction: float = 0.7
    """wav2vec 2.0: share of the run's own g steps over which the temperature decays geometrically from its start
    to its floor (wav2vec 2.0 reaches its floor after ~70 % of its 400 k updates)."""
    diversity_weight: float = 0.1
    """wav2vec 2.0: weight of the codebook diversity loss."""

    def __post_init__(self) -> None:
        if len(self.gumbel_temperature) == 3:  # earlier versions: (start, floor, per-step decay)
            logging.getLogger("bljust").warning(
                "ssl.gumbel_temperature's third value (a per-step decay) is retired and ignored; the temperature "
                "now anneals over ssl.gumbel_anneal_fraction of the run's g steps")
        self.gumbel_temperature = tuple(self.gumbel_temperature)[:2]
        _check(self.mask_prob is None or 0.0 < self.mask_prob < 1.0, "ssl.mask_prob must be in (0, 1)")
        _check(self.mask_span is None or self.mask_span >= 1, "ssl.mask_span must be >= 1")
        _check(self.codebook_size >= 2 and self.codebook_dim >= 1 and self.num_codebooks >= 1,
               "ssl codebook sizes must be positive")
        _check(self.clusters >= 2, "ssl.clusters must be >= 2")
        _check(self.temperature > 0, "ssl.temperature must be > 0")
        _check(self.num_negatives >= 1 and self.cpc_steps >= 1, "ssl.num_negatives and ssl.cpc_steps must be >= 1")
        _check(0.0 <= self.cpc_same_utterance <= 1.0, "ssl.cpc_same_utterance must be in [0, 1]")
        _check(self.quantizer_groups >= 1 and self.quantizer_entries >= 2, "ssl quantizer sizes must be positive")
        start, floor = self.gumbel_temperature if len(self.gumbel_temperature) == 2 else (0, 0)
        _check(len(self.gumbel_temperature) == 2 and 0 < floor <= start,
               "ssl.gumbel_temperature must be [start, floor] with 0 < floor <= start")
        _check(0.0 < self.gumbel_anneal_fraction <= 1.0, "ssl.gumbel_anneal_fraction must be in (0, 1]")
        _check(self.diversity_weight >= 0, "ssl.diversity_weight must be >= 0")

    def masking(self) -> tuple[float, int]:
        """(mask_prob, mask_span) in effect: the configured values, else the loss's defaults."""
        prob, span = MASK_DEFAULTS[self.loss]
        return (prob if self.mask_prob is None else self.mask_prob,
                span if self.mask_span is None else self.mask_span)


MASK_DEFAULTS: dict[str, tuple[float, int]] = {
    # Per 10 ms input frame; 1 - (1 - p)^span of the frames end up masked away from the edges.
    "bestrq": (0.04, 16),     # SpeechBrain's BEST-RQ recipe: 0.15 per 40 ms frame, spans of 4 (160 ms): ≈ 48 %
    "wav2vec2": (0.0325, 20),  # wav2vec 2.0: p = 0.065 per 20 ms step, M = 10 steps (200 ms): ≈ 48 %
    "hubert": (0.04, 20),     # HuBERT: p = 0.08 per 20 ms frame, spans of 10 (200 ms): ≈ 56 %
    "cpc": (0.03, 20),        # our masked CPC: 200 ms gaps, ≈ 46 %, so a gap still has context on both sides
}
"""Default (mask_prob, mask_span) per SSL loss; review §2.3 and ../shared/docs/ssl-small-scale.md §4."""


@dataclass
class OptimConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    """The optimiser: AdamW, or SGD with momentum (PBGD as published; see bljust.pbgd_scaling). Either way
    θ, φ and η are parameter groups with learning rates of their own."""
    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 1e-2
    """Weight decay: decoupled under AdamW, L2 under SGD."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    momentum: float = 0.9
    """SGD momentum (heavy ball)."""
    warmup_steps: int = 500
    """Linear warm-up from 0 to lr."""
    schedule: Literal["cosine", "constant", "noam"] = "cosine"
    """Decay after warm-up: cosine to min_lr_ratio·lr at the last step, constant, or inverse square root."""
    min_lr_ratio: float = 0.05
    """Floor of the cosine decay, relative to lr."""
    clip_grad_norm: float = 1.0
    """Clip the gradient norm of each parameter group (θ, φ, η) to this value on its own (0 disables), so
    one group's gradient never shrinks another's step."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives lists
        _check(self.lr > 0, "optim.lr must be > 0")
        _check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
        _check(len(self.betas) == 2, "optim.betas must have two values")
        _check(0 <= self.momentum < 1, "optim.momentum must be in [0, 1)")
        _check(self.clip_grad_norm >= 0, "optim.clip_grad_norm must be >= 0")


@dataclass
class BLJustConfig:
    outer_epochs: int | None = None
    """K, outer epochs; None: as many as fit train.max_steps after the final fine-tuning steps."""
    explore_steps: int | None = None
    """N1, exploration steps on g per outer epoch; None: explore_fraction of an unlabeled pass."""
    explore_fraction: float = 0.25
    """N1 as a fraction of the unlabeled stream's batches per pass (when explore_steps is None)."""
    first_explore_steps: int | None = None
    """N1 of the first outer epoch only: a warm start of (θ, η) towards argmin g before the first joint step;
    None: N1 like every other epoch."""
    joint_steps: int | None = None
    """N2, penalised joint steps per outer epoch; None: one pass over the labeled stream."""
    finetune_steps: int | None = None
    """N3, the least final fine-tuning steps on f; None: finetune_fraction of the budget. Whatever the budget
    leaves after the whole outer epochs that fit is added to N3 (unless ``leftover`` is 'joint'), so a run
    spends its budget exactly."""
    finetune_fraction: float = 0.1
    """N3 as a fraction of the budget (when finetune_steps is None)."""
    leftover: Literal["finetune", "joint"] = "finetune"
    """Where the budget that the whole outer epochs leave goes: 'finetune' adds it to N3; 'joint' adds it to the
    last outer epoch's joint steps, so that N3 stays as set (finetune_steps=0: no final fine-tuning at all, the
    N3 = 0 ablation). Under the batch-pass budget an odd pass that no joint step fits is left unspent."""
    rho: float = 2e-3
    """ρ, peak learning rate of the exploration steps."""
    alpha: float = 1e-3
    """α, peak learning rate of the joint steps."""
    tau: float = 3e-4
    """τ, peak learning rate of the final fine-tuning steps."""
    gamma_schedule: Literal["linear", "cosine", "step", "constant", "auto"] = "linear"
    """How γ grows with progress through the run's joint steps (all outer epochs together, so it ramps for
    any K, one included): linear or cosine ramp, stairs, or constant γ_max. 'auto' sets γ at every joint
    step from the gradients themselves: θ's penalty share ‖γ∇θg‖ / ‖∇θf‖ follows a target that ramps
    linearly from 0 to ``auto_ratio`` over ``ramp_fraction`` of the joint steps, so γ = target ·
    ‖∇θf‖ / ‖∇θg‖ (running averages of the two norms over the joint steps, taken on every process), capped at
    γ_max. Why: the γ that balances the two levels depends on the scales of f and g, which change with the
    SSL loss, the model, the data and the training stage; a target share of θ's step is one number that
    means the same everywhere, where γ_max has to be searched per setting."""
    gamma_0: float = 0.0
    """γ at the first joint step (ignored by 'constant')."""
    gamma_max: float = 1.0
    """The cap of γ."""
    ramp_fraction: float = 0.5
    """Fraction of the run's joint steps after which γ reaches γ_max."""
    gamma_stairs: int = 4
    """Number of equal increments of the 'step' schedule."""
    auto_ratio: float = 0.5
    """'auto' schedule: the target of ‖γ∇θg‖ / ‖∇θf‖ once ramped, i.e. how large the penalty's push on the
    shared encoder is next to the supervised one (1: as large). γ_max still caps γ: raise it when the
    logged ``gamma`` sits at the cap."""
    auto_decay: float = 0.9
    """'auto' schedule: the decay of the running averages of ‖∇θf‖ and ‖∇θg‖ (per joint step); they smooth
    out the batch-to-batch noise of the norms that γ is set from."""
    pbgd_scaling: bool | None = None
    """PBGD's step rule (Shen & Chen): a joint step follows the penalised objective's gradient scaled by
    min(1, 1/γ), i.e. θ ← s(∇f + γ∇g), φ ← s∇f, η ← sγ∇g with s = min(1, 1/γ). Off, η follows ∇g unscaled
    (ours: under Adam the lower level keeps its own pace). None: on under SGD, off under AdamW (which is
    nearly invariant to the gradient's scale)."""
    reset_optimizer_at_finetune: bool = False
    """Clear the optimiser state (Adam moments, SGD momentum) when the final fine-tuning starts, as PT+FT
    does when its fine-tuning starts. Off by default: on the demo's dev set it changed nothing (53.8 against
    53.7 dev CER, seed 42; benchmarks/RESULTS.md)."""
    lr_schedule: Literal["phase", "global"] = "phase"
    """Learning-rate schedule: 'phase' gives each phase its own warm-up and decay (exploration and joint
    steps counted over all outer epochs, fine-tuning apart); 'global' has one warm-up (optim.warmup_steps)
    and one decay over all steps of the run, each phase scaled by its own peak ρ, α or τ."""

    def __post_init__(self) -> None:
        for name in ("outer_epochs", "explore_steps", "first_explore_steps", "joint_steps", "finetune_steps"):
            v = getattr(self, name)
            _check(v is None or v >= 0, f"bljust.{name} must be >= 0 (or null)")
        _check(self.outer_epochs is None or self.outer_epochs >= 1, "bljust.outer_epochs must be >= 1")
        _check(self.joint_steps is None or self.joint_steps >= 1, "bljust.joint_steps must be >= 1")
        _check(0 <= self.explore_fraction and 0 <= self.finetune_fraction < 1, "bljust fractions out of range")
        _check(min(self.rho, self.alpha, self.tau) > 0, "bljust learning rates must be > 0")
        _check(0 <= self.gamma_0 <= self.gamma_max, "bljust: need 0 <= gamma_0 <= gamma_max")
        _check(0 < self.ramp_fraction <= 1, "bljust.ramp_fraction must be in (0, 1]")
        _check(self.gamma_stairs >= 1, "bljust.gamma_stairs must be >= 1")
        _check(self.auto_ratio > 0, "bljust.auto_ratio must be > 0")
        _check(0 <= self.auto_decay < 1, "bljust.auto_decay must be in [0, 1)")


@dataclass
class JustConfig:
    lam: float = 0.3
    """λ, the fixed weight of g in JUST's f + λ·g."""

    def __post_init__(self) -> None:
        _check(self.lam >= 0, "just.lam must be >= 0")


@dataclass
class PTFTConfig:
    pretrain_fraction: float = 0.5
    """Share of train.max_steps that pre-trains (θ, η) on g (when pretrain_steps is None); the rest
    fine-tunes (θ, φ) on f."""
    pretrain_steps: int | None = None
    """Pre-training steps; None: pretrain_fraction of train.max_steps."""
    pretrain_lr: float = 2e-3
    """Peak learning rate of pre-training."""
    finetune_lr: float = 1e-3
    """Peak learning rate of fine-tuning (a fresh optimiser state; η is discarded)."""
    encoder_lr_scale: float = 1.0
    """The pretrained encoder θ fine-tunes at this multiple of finetune_lr (the new head φ at finetune_lr):
    a lower rate keeps more of what pre-training learned, as wav2vec 2.0 fine-tuning does."""
    freeze_encoder_steps: int = 0
    """The first fine-tuning steps train the head φ alone on the frozen pretrained encoder (wav2vec 2.0
    freezes it for its first updates), so a random head does not send large gradients into θ."""

    def __post_init__(self) -> None:
        _check(0 < self.pretrain_fraction < 1, "ptft.pretrain_fraction must be in (0, 1)")
        _check(self.pretrain_steps is None or self.pretrain_steps >= 0, "ptft.pretrain_steps must be >= 0")
        _check(self.encoder_lr_scale >= 0, "ptft.encoder_lr_scale must be >= 0")
        _check(self.freeze_encoder_steps >= 0, "ptft.freeze_encoder_steps must be >= 0")


@dataclass
class PLConfig:
    rounds: int = 2
    """R, rounds of decode → filter → retrain (iterative pseudo-labeling)."""
    seed_fraction: float = 0.4
    """Share of train.max_steps that trains the seed model on labeled data; rounds split the rest."""
    keep_fraction: float = 0.8
    """Keep this fraction of the unlabeled utterances with the highest mean token log-posterior."""
    min_chars_per_second: float = 4.0
    """Length filter: drop hypotheses with fewer characters per second of audio."""
    max_chars_per_second: float = 25.0
    """Length filter: drop hypotheses with more characters per second of audio."""
    decode: Literal["greedy", "lm"] = "greedy"
    """How the unlabeled split is transcribed: greedy CTC, or the lexicon beam search with the word LM of
    ``decode.lm`` (its weight and word score chosen on dev with the current model, from the decode grid);
    confidence is the acoustic model's either way."""
    round_warmup_steps: int = 0
    """Linear learning-rate warm-up at the start of every pseudo-labeling round (the seed model warms up
    over optim.warmup_steps); a round starts on new targets, so a warm-up avoids a jump at peak rate."""
    lr_schedule: Literal["round", "global"] = "round"
    """'round': the seed model and every round each run the optim schedule over their own steps (a round
    restarts at the peak rate, after ``round_warmup_steps``); 'global': one schedule over the whole run, and a
    round only swaps the targets, as iterative and continuous pseudo-labeling do (Xu et al. 2020,
    Likhomanenko et al. 2021)."""

    def __post_init__(self) -> None:
        _check(self.rounds >= 1, "pl.rounds must be >= 1")
        _check(0 < self.seed_fraction < 1, "pl.seed_fraction must be in (0, 1)")
        _check(0 < self.keep_fraction <= 1, "pl.keep_fraction must be in (0, 1]")
        _check(0 <= self.min_chars_per_second < self.max_chars_per_second, "pl chars-per-second bounds")
        _check(self.round_warmup_steps >= 0, "pl.round_warmup_steps must be >= 0")


@dataclass
class TrainConfig:
    seed: int = 42
    """Seed of every random number generator (model init, sampler order, SpecAugment, dropout)."""
    max_steps: int = 3000
    """Optimiser steps of the run (the training budget, shared by every method's phases); epochs roll over."""
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
    """Mixed precision (see ``amp_dtype``); float32 when off."""
    amp_dtype: Literal["auto", "bf16", "fp16"] = "auto"
    """'auto': bf16 on CUDA devices with bf16 and on CPUs with native bf16 (AVX512-BF16 or AMX), fp16 with a
    gradient scaler on CUDA devices without bf16 (pre-Ampere), float32 elsewhere; 'bf16' / 'fp16' force one."""
    max_bad_step_fraction: float = 0.02
    """Stop the run (non-zero exit) once more than this share of its steps were skipped for a non-finite
    loss or gradient; each skipped step is logged with its batch's cut ids."""
    num_threads: int = 0
    """torch intra-op threads per process (0: leave torch's default)."""
    accum_steps: int = 1
    """Batches per process whose gradients one optimiser step sums (gradient accumulation): a step trains on
    accum_steps × processes × data.max_duration seconds of audio per stream, holding one batch's graph at a time.
    Budgets count optimiser steps, so a step then reads accum_steps batches of each stream it uses."""
    ema_decay: float = 0.0
    """> 0: keep an exponential moving average of the weights (decay per optimiser step, e.g. 0.999; icefall
    evaluates averaged weights); validation, best.pt and pseudo-labeling then use the average. 0: off."""
    compile: str = ""
    """torch.compile backend for the encoder's blocks ('inductor', the usual one; 'aot_eager' or 'eager' to
    check graph capture without code generation); '' (default): no compilation. Shapes vary per batch, so the
    blocks compile with dynamic shapes, once for training and once for decoding (no_grad). Compilation takes
    minutes on a CPU core before the first step."""
    dist_timeout: float = 1800.0
    """Seconds a collective waits for the other processes (torchrun) before the run fails instead of hanging."""

    def __post_init__(self) -> None:
        _check(self.max_steps >= 1, "train.max_steps must be >= 1")
        _check(self.dist_timeout > 0, "train.dist_timeout must be > 0")
        _check(self.accum_steps >= 1, "train.accum_steps must be >= 1")
        _check(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        _check(self.valid_every >= 1 and self.checkpoint_every >= 1 and self.log_every >= 1,
               "train.valid_every, train.checkpoint_every and train.log_every must be >= 1")
        _check(self.keep_last >= 1, "train.keep_last must be >= 1")
        _check(0 <= self.max_bad_step_fraction <= 1, "train.max_bad_step_fraction must be in [0, 1]")


@dataclass
class DecodeConfig:
    """Word-level decoding with an n-gram LM (CTC models), beside the greedy decoding every run gets, and the
    transducer's beam search (``model.loss: rnnt``).

    Evaluation only: changing it never retrains a ``compare`` run, only re-scores it.
    """

    lm: str = ""
    """ARPA word n-gram LM for a lexicon beam search (its vocabulary is the lexicon). Empty:
    ``compare`` estimates one from ``DATA/lm_text.txt`` when the data directory has that file
    (the demo corpus does), else decodes greedily only."""
    lm_order: int = 3
    """Order of the n-gram LM that ``compare`` estimates from ``lm_text.txt``."""
    beam_size: int = 50
    """Hypotheses kept per frame by the beam search."""
    lm_weights: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 6.0])
    """LM weights tried on dev; the pair (weight, word score) with the lowest dev WER is used on test."""
    word_scores: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 5.0])
    """Per-word scores tried on dev together with ``lm_weights``."""
    rnnt_beam: int = 0
    """Transducer models (``model.loss: rnnt``): 0 decodes greedily (at most 3 units per frame), as validation
    and pseudo-labeling always do; N > 0: icefall's modified beam search keeping N hypotheses, at most one unit
    per frame. Greedy by default: character units at 40 ms frames often need several units at one frame, and an
    overfit character model lost most of them to the beam search (dev CER 11.2 % greedy, 39.7 % beam 4)."""

    def __post_init__(self) -> None:
        _check(self.lm_order >= 1, "decode.lm_order must be >= 1")
        _check(self.beam_size >= 1, "decode.beam_size must be >= 1")
        _check(self.rnnt_beam >= 0, "decode.rnnt_beam must be >= 0 (0: greedy)")
        _check(bool(self.lm_weights) and bool(self.word_scores), "decode.lm_weights and decode.word_scores "
               "need at least one value each")


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
    ssl: SSLConfig = field(default_factory=SSLConfig)
    """The self-supervised loss of the semi-supervised methods."""
    bljust: BLJustConfig = field(default_factory=BLJustConfig)
    """BL-JUST's phases, learning rates and penalty schedule."""
    just: JustConfig = field(default_factory=JustConfig)
    """JUST's fixed weight."""
    ptft: PTFTConfig = field(default_factory=PTFTConfig)
    """Pre-training + fine-tuning."""
    pl: PLConfig = field(default_factory=PLConfig)
    """Iterative pseudo-labeling."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Budget, validation, checkpoints, device."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """LM decoding at evaluation."""

    def __post_init__(self) -> None:
        if self.model.loss == "rnnt":  # the lexicon beam search decodes per-frame CTC posteriors only
            _check(not self.decode.lm, "decode.lm: the word-LM beam search decodes CTC models only, and "
                   "model.loss is rnnt; unset decode.lm (--set decode.lm=)")
            _check(self.pl.decode != "lm", "pl.decode=lm: the word-LM beam search decodes CTC models only, and "
                   "model.loss is rnnt; use pl.decode=greedy")


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
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(typing.get_args(tp)[0], v, where) for v in value]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
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


RETIRED = {"train.max_bad_steps": "train.max_bad_step_fraction"}
"""Keys earlier versions wrote, ignored (with a warning) so that their models and configs still load."""


def _from_dict(cls: type, data: dict, where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in [k for k in data if f"{where}.{k}" in RETIRED]:
        logging.getLogger("bljust").warning("config key %s.%s is retired (ignored); see %s", where, key,
                                            RETIRED[f"{where}.{key}"])
        data = {k: v for k, v in data.items() if k != key}
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
    """Written whole or not at all: ``--resume`` reads it back."""
    from bljust.checkpoint import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
