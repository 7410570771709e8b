"""BEST-RQ: frozen random-projection quantiser labels, masked prediction with cross-entropy."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from bljust.losses import SSLLoss, build_ssl_loss
from bljust.losses.bestrq import MASK_NOISE_STD, BestRQLoss, stack_frames
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask
from tests.losses.conftest import (FEAT, check_autocast, check_contract, check_determinism,
                                   check_gradients_and_buffers, optimise, random_batch, ssl_cfg, tiny_encoder)

torch.set_num_threads(1)

STATS = {"loss", "acc", "masked_frac", "code_usage"}


def make(**kw) -> BestRQLoss:
    torch.manual_seed(1)
    loss = build_ssl_loss(ssl_cfg("bestrq", **kw), 64, FEAT)
    assert isinstance(loss, BestRQLoss) and isinstance(loss, SSLLoss)
    return loss


@pytest.mark.parametrize("arch", ["conformer", "cnn_lstm"])
def test_contract_and_shapes(arch):
    enc, loss = tiny_encoder(arch), make(num_codebooks=2, codebook_size=64, mask_prob=0.05, mask_span=10)
    feats, lens = random_batch()
    loss_sum, count, stats = check_contract(loss, enc, feats, lens, STATS)
    out_lens = enc.output_lengths(lens)
    in_mask = span_mask(lens, feats.size(1), 0.05, 10, torch.Generator().manual_seed(0))
    assert count.item() == subsample_mask(in_mask, enc.output_lengths, out_lens).sum().item()
    assert abs(stats["masked_frac"] - count.item() / out_lens.sum().item()) < 1e-6
    assert 0 < stats["code_usage"] <= 1 and 0 <= stats["acc"] <= 1
    # Untrained: the loss is about log(codebook_size).
    assert abs(stats["loss"] - torch.log(torch.tensor(64.0)).item()) < 1.5


def test_labels_from_unmasked_features_and_frozen_quantiser():
    loss = make(codebook_size=32, codebook_dim=8, num_codebooks=3)
    assert loss.projection.shape == (3, 4 * FEAT, 8) and loss.codebooks.shape == (3, 32, 8)
    assert torch.allclose(loss.codebooks.norm(dim=-1), torch.ones(3, 32))
    # Xavier uniform bound.
    assert loss.projection.abs().max() <= (6 / (4 * FEAT + 8)) ** 0.5
    # The same seed gives the same frozen quantiser in every process; persistent in the state dict.
    other = make(codebook_size=32, codebook_dim=8, num_codebooks=3)
    assert torch.equal(loss.projection, other.projection) and torch.equal(loss.codebooks, other.codebooks)
    assert {"projection", "codebooks"} <= set(loss.state_dict())
    feats, lens = random_batch()
    t_out = 99
    labels = loss.labels(feats, t_out)
    assert labels.shape == (3, t_out, 3) and labels.dtype == torch.long
    # Brute force: nearest codebook entry by cosine of the projected stacked frames 4t+1..4t+4.
    x = feats[:, 1 + 4 * 5: 1 + 4 * 6].reshape(3, -1)  # output frame 5
    for n in range(3):
        z = F.normalize(x @ loss.projection[n], dim=-1)
        assert torch.equal(labels[:, 5, n], (z @ loss.codebooks[n].t()).argmax(-1))
    assert torch.equal(stack_frames(feats, t_out)[:, 5], x)


def test_encoder_sees_noise_in_masked_frames_only():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = tiny_encoder()
            self.subsampling = self.enc.subsampling

        def forward(self, x, lens, layer=-1):
            seen["x"] = x.detach().clone()
            return self.enc(x, lens, layer=layer)

    loss = make(mask_prob=0.05, mask_span=10)
    feats, lens = random_batch(lens=(800, 700))
    loss(Spy(), feats, lens, torch.Generator().manual_seed(3))
    in_mask = span_mask(lens, 800, 0.05, 10, torch.Generator().manual_seed(3))
    x = seen["x"]
    assert torch.equal(x[~in_mask], feats[~in_mask])
    noise = x[in_mask]
    assert not torch.equal(noise, feats[in_mask])
    assert abs(noise.std().item() - MASK_NOISE_STD) < 0.01 and abs(noise.mean().item()) < 0.01


def test_gradients_reach_encoder_and_head_not_frozen_buffers():
    enc, loss = tiny_encoder(), make(codebook_size=64, mask_prob=0.05, mask_span=10)
    feats, lens = random_batch()
    check_gradients_and_buffers(loss, enc, feats, lens, frozen=["projection", "codebooks"],
                                head_params=["head.weight", "head.bias"])


def test_deterministic_given_generator():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    feats, lens = random_batch()
    check_determinism(loss, enc, feats, lens)


def test_bf16_autocast():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    check_autocast(loss, enc, *random_batch())


def test_nothing_to_mask_gives_an_empty_connected_loss():
    enc, loss = tiny_encoder(), make()
    feats, lens = random_batch(lens=(15, 12))  # shorter than a span of 20 frames
    loss_sum, count, stats = loss(enc, feats, lens, torch.Generator().manual_seed(0))
    assert count.item() == 0 and loss_sum.item() == 0.0 and stats["masked_frac"] == 0.0
    loss_sum.backward()
    assert loss.head.weight.grad is not None and loss.head.weight.grad.abs().sum() == 0


def test_learns_on_speech_without_collapse(speech):
    enc, loss = tiny_encoder(), make()
    t0 = time.perf_counter()
    before, after, history = optimise(loss, enc, speech, steps=100)
    elapsed = time.perf_counter() - t0
    chance = 1 / loss.codebook_size
    # Majority-label baseline on the evaluation batch: what predicting the commonest code gets.
    feats, lens = speech.eval
    labels = loss.labels(feats, int(enc.output_lengths(torch.tensor(feats.size(1)))))
    valid = valid_mask(enc.output_lengths(lens), labels.size(1))
    majority = torch.bincount(labels[valid][:, 0]).max().item() / valid.sum().item()
    print(f"bestrq: {before} -> {after} ({elapsed:.1f} s); majority {majority:.3f}")
    assert after["loss"] < before["loss"] - 1.0
    assert after["acc"] > 10 * chance and after["acc"] > 1.3 * majority
    assert after["code_usage"] > 0.3  # the random quantiser spreads the speech over the codebook
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)


def test_build_dispatch_and_buffer_seed():
    from bljust.losses.cpc import CPCLoss
    from bljust.losses.wav2vec2 import Wav2Vec2Loss

    for name, cls in (("bestrq", BestRQLoss), ("cpc", CPCLoss), ("wav2vec2", Wav2Vec2Loss)):
        assert type(build_ssl_loss(ssl_cfg(name), 64, FEAT)) is cls
    with pytest.raises(ValueError, match="unknown ssl.loss"):
        build_ssl_loss(ssl_cfg("nope"), 64, FEAT)
    a = build_ssl_loss(ssl_cfg("bestrq"), 64, FEAT, seed=0)
    b = build_ssl_loss(ssl_cfg("bestrq"), 64, FEAT, seed=1)
    assert not torch.equal(a.codebooks, b.codebooks)
