"""Log-mel features, normalisation and SpecAugment, in plain torch.

By default features are computed from waveforms inside the training process (on the GPU when
there is one): the demo corpus is regenerated often, and a 80-bin log-mel of a batch costs a few
milliseconds next to the encoder. At scale ``bljust features`` stores the same raw log-mel
(``bljust.data.precomputed``); either way normalisation happens in the model (``LogMel.normalise``).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from bljust.config import FeatureConfig, SpecAugmentConfig

SAMPLE_RATE = 16000
WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512


def _hz_to_mel(f: Tensor | float) -> Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_filterbank(num_mel_bins: int, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> Tensor:
    """HTK-style triangular filters, shape (n_fft // 2 + 1, num_mel_bins)."""
    f_max = f_max or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(_hz_to_mel(f_min).item(), _hz_to_mel(f_max).item(), num_mel_bins + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    lower, centre, upper = hz[:-2], hz[1:-1], hz[2:]
    f = freqs[:, None]
    up = (f - lower) / (centre - lower)
    down = (upper - f) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def num_frames(num_samples: Tensor | int) -> Tensor | int:
    """Frames of a waveform of ``num_samples`` samples (centred STFT)."""
    return num_samples // HOP_LENGTH + 1


class LogMel(nn.Module):
    """Waveforms (B, S) → log-mel (B, T, num_mel_bins), normalised, with frame lengths.

    The normalisation statistics are buffers, so a saved model carries them and
    ``bljust transcribe`` needs nothing but the checkpoint.
    """

    def __init__(self, cfg: FeatureConfig):
        super().__init__()
        self.num_mel_bins = cfg.num_mel_bins
        self.normalize = cfg.normalize
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)
        self.register_buffer("fbank", mel_filterbank(cfg.num_mel_bins), persistent=False)
        self.register_buffer("mean", torch.zeros(cfg.num_mel_bins))
        self.register_buffer("std", torch.ones(cfg.num_mel_bins))

    @torch.no_grad()
    def raw(self, wav: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        # Features in float32 even under autocast: log of small powers in bf16 is too coarse.
        with torch.autocast(device_type=wav.device.type, enabled=False):
            spec = torch.stft(wav.float(), N_FFT, HOP_LENGTH, WIN_LENGTH, window=self.window,
                              center=True, return_complex=True)
            power = spec.real.square() + spec.imag.square()  # (B, F, T)
            mel = torch.matmul(power.transpose(1, 2), self.fbank)
            feats = torch.log(mel + 1e-6)
        lens = num_frames(wav_lens)
        mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lens[:, None]
        return feats * mask[..., None], lens

    @torch.no_grad()
    def forward(self, wav: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        return self.normalise(*self.raw(wav, wav_lens))

    def raw_batch(self, batch: dict, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """A loader batch's raw log-mel and lengths: its stored features (``feats``), or computed from ``wav``."""
        device = device or self.mean.device
        if "feats" in batch:
            return batch["feats"].to(device, non_blocking=True), batch["feat_lens"].to(device)
        return self.raw(batch["wav"].to(device, non_blocking=True), batch["wav_lens"].to(device))

    @torch.no_grad()
    def from_batch(self, batch: dict, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        """A loader batch's normalised log-mel and lengths (stored features or audio alike)."""
        return self.normalise(*self.raw_batch(batch, device))

    @torch.no_grad()
    def normalise(self, feats: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """Raw log-mel (B, T, F) → normalised (``features.normalize``), zero past each length."""
        mask = (torch.arange(feats.shape[1], device=feats.device)[None, :] < lens[:, None])[..., None]
        if self.normalize == "global":
            feats = (feats - self.mean) / self.std
        elif self.normalize == "utterance":
            n = lens.clamp(min=1)[:, None, None].to(feats.dtype)
            mean = (feats * mask).sum(1, keepdim=True) / n
            var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / n
            feats = (feats - mean) / (var.sqrt() + 1e-5)
        return feats * mask, lens

    @torch.no_grad()
    def set_global_stats(self, batches) -> None:
        """Estimate the global mean/std from an iterable of loader batches (``raw_batch``)."""
        total = torch.zeros(self.num_mel_bins, dtype=torch.float64)
        total_sq = torch.zeros(self.num_mel_bins, dtype=torch.float64)
        count = 0
        for batch in batches:
            feats, lens = self.raw_batch(batch)
            mask = torch.arange(feats.shape[1], device=feats.device)[None, :] < lens[:, None]
            valid = feats[mask].double().cpu()
            total += valid.sum(0)
            total_sq += (valid ** 2).sum(0)
            count += valid.shape[0]
        if count == 0:
            raise ValueError("cannot estimate feature statistics from no audio")
        mean = total / count
        std = (total_sq / count - mean ** 2).clamp(min=1e-8).sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())


@functools.lru_cache(maxsize=4)
def _logmel(num_mel_bins: int) -> LogMel:
    return LogMel(FeatureConfig(num_mel_bins=num_mel_bins))


def raw_logmel(wav: Tensor, num_mel_bins: int) -> Tensor:
    """One waveform's raw log-mel (T, num_mel_bins), as ``LogMel.raw`` computes it (a loader worker's
    fallback for a cut without stored features)."""
    feats, _ = _logmel(num_mel_bins).raw(wav[None], torch.tensor([wav.numel()]))
    return feats[0]


def spec_augment(feats: Tensor, lens: Tensor, cfg: SpecAugmentConfig, generator: torch.Generator) -> Tensor:
    """Frequency and time masks (masked to zero, i.e. the normalised mean).

    Driven by an explicit generator so that a resumed run draws the same masks as an
    uninterrupted one, independently of the global RNG and of data-loader workers.
    """
    b, t, f = feats.shape
    out = feats.clone()
    cpu = torch.device("cpu")

    def randint(high: int, size: int) -> Tensor:
        return torch.randint(0, max(high, 1), (size,), generator=generator, device=cpu)

    for i in range(b):
        n = int(lens[i])
        for _ in range(cfg.num_freq_masks):
            w = int(randint(cfg.max_freq_width + 1, 1))
            start = int(randint(f - w + 1, 1))
            out[i, :n, start:start + w] = 0.0
        # Time masks scale with length so short utterances are not wiped out.
        budget = int(cfg.max_time_fraction * n)
        n_masks = min(cfg.num_time_masks, math.ceil(n / 100))
        if budget == 0 or n_masks == 0:
            continue
        width = min(cfg.max_time_width, budget // n_masks)
        for _ in range(n_masks):
            w = int(randint(width + 1, 1))
            start = int(randint(n - w + 1, 1))
            out[i, start:start + w, :] = 0.0
    return out
