import math

import torch

from bljust.config import FeatureConfig, SpecAugmentConfig
from bljust.data.features import HOP_LENGTH, LogMel, num_frames, spec_augment


def _tone(freq: float, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(16000 * seconds)) / 16000
    return torch.sin(2 * math.pi * freq * t)


def test_shapes_and_padding_are_masked():
    fe = LogMel(FeatureConfig(normalize="none"))
    a, b = _tone(440, 1.0), _tone(440, 0.5)
    wav = torch.nn.utils.rnn.pad_sequence([a, b], batch_first=True)
    feats, lens = fe(wav, torch.tensor([a.numel(), b.numel()]))
    assert feats.shape == (2, num_frames(16000), 80)
    assert lens.tolist() == [16000 // HOP_LENGTH + 1, 8000 // HOP_LENGTH + 1]
    assert torch.all(feats[1, lens[1]:] == 0)
    # The valid part of the short utterance does not depend on its padding (except the last frame's window).
    alone, _ = fe(b[None], torch.tensor([b.numel()]))
    torch.testing.assert_close(feats[1, : lens[1] - 2], alone[0, : lens[1] - 2], atol=1e-4, rtol=1e-4)


def test_energy_lands_in_the_right_mel_bin():
    fe = LogMel(FeatureConfig(normalize="none"))
    low, _ = fe(_tone(300)[None], torch.tensor([16000]))
    high, _ = fe(_tone(4000)[None], torch.tensor([16000]))
    assert int(low[0, 50].argmax()) < int(high[0, 50].argmax())


def test_normalisation_modes():
    torch.manual_seed(0)
    wav = torch.randn(3, 16000) * torch.tensor([[0.1], [0.5], [1.0]])
    lens = torch.tensor([16000] * 3)
    fe = LogMel(FeatureConfig(normalize="utterance"))
    f, _ = fe(wav, lens)
    assert f.mean(1).abs().max() < 1e-3 and (f.std(1) - 1).abs().max() < 0.05
    fe = LogMel(FeatureConfig(normalize="global"))
    fe.set_global_stats([{"wav": wav, "wav_lens": lens}])
    f, _ = fe(wav, lens)
    assert f.reshape(-1, 80).mean(0).abs().max() < 1e-3


def test_spec_augment_is_reproducible_and_masks_something():
    feats = torch.randn(2, 300, 80) + 5
    lens = torch.tensor([300, 150])
    cfg = SpecAugmentConfig()
    a = spec_augment(feats, lens, cfg, torch.Generator().manual_seed(1))
    b = spec_augment(feats, lens, cfg, torch.Generator().manual_seed(1))
    c = spec_augment(feats, lens, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    zero_frac = (a[0] == 0).float().mean().item()
    assert 0.0 < zero_frac < 0.6
    # Time masks stay within the configured budget of a short utterance.
    full_frames = (a[1, :150] == 0).all(dim=1).float().sum().item()
    assert full_frames <= cfg.max_time_fraction * 150 + 1
