"""wav2vec 2.0-style masked contrastive loss with a Gumbel product quantiser and diversity loss."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch

from bljust.losses import build_ssl_loss
from bljust.losses.masking import span_mask
from bljust.losses.wav2vec2 import GumbelQuantizer, Wav2Vec2Loss, gumbel_temperature
from tests.losses.conftest import (FEAT, check_autocast, check_contract, check_determinism,
                                   check_gradients_and_buffers, optimise, random_batch, ssl_cfg, tiny_encoder)

torch.set_num_threads(1)

STATS = {"loss", "acc", "acc_chance", "perplexity", "code_usage", "masked_frac", "temperature", "diversity"}


def make(**kw) -> Wav2Vec2Loss:
    torch.manual_seed(1)
    loss = build_ssl_loss(ssl_cfg("wav2vec2", **kw), 64, FEAT)
    assert isinstance(loss, Wav2Vec2Loss)
    return loss


@pytest.mark.parametrize("arch", ["conformer", "cnn_lstm"])
def test_contract_and_shapes(arch):
    enc, loss = tiny_encoder(arch), make(mask_prob=0.05, mask_span=10, num_negatives=20)
    loss_sum, count, stats = check_contract(loss, enc, *random_batch(), STATS)
    gv = loss.cfg.quantizer_groups * loss.cfg.quantizer_entries
    assert 1 <= stats["perplexity"] <= gv and 0 < stats["code_usage"] <= 1
    assert stats["temperature"] == 2.0 and 0 <= stats["diversity"] < 1


def test_loss_is_contrastive_mean_plus_weighted_diversity():
    enc = tiny_encoder()
    feats, lens = random_batch()
    with_div = make(mask_prob=0.05, mask_span=10, diversity_weight=0.3)
    without = make(mask_prob=0.05, mask_span=10, diversity_weight=0.0)
    a_sum, a_count, a = with_div(enc, feats, lens, torch.Generator().manual_seed(2))
    b_sum, b_count, b = without(enc, feats, lens, torch.Generator().manual_seed(2))
    assert a_count == b_count
    gv = 2 * 64
    assert abs(a["diversity"] - (gv - a["perplexity"]) / gv) < 1e-5
    assert abs((a_sum - b_sum).item() / a_count.item() - 0.3 * a["diversity"]) < 1e-4


def test_gumbel_temperature_anneals_over_the_runs_own_g_steps():
    loss = make(gumbel_temperature=(2.0, 0.5), gumbel_anneal_fraction=0.5)
    assert loss.gumbel_temperature.item() == 2.0
    # 200 g steps, floor reached after half of them: geometric in between, a function of (g_step, g_steps).
    for g_step in (0, 1, 50, 99, 100, 150, 5):
        loss.set_progress(g_step, 200)
        expected = 2.0 * (0.5 / 2.0) ** min(g_step / 100, 1.0)
        assert math.isclose(loss.gumbel_temperature.item(), expected, rel_tol=1e-6)
    loss.set_progress(50, 200)
    assert math.isclose(loss.gumbel_temperature.item(), 1.0, rel_tol=1e-6)  # half-way in log space
    assert gumbel_temperature((2.0, 0.5), 0.7, 10_000, 1000) == 0.5
    # A run of 1000 g steps ends at the floor; the old per-update decay would have left it at 1.99.
    assert gumbel_temperature((2.0, 0.5), 0.7, 999, 1000) == 0.5
    # Carried by the state dict: a module restored from a checkpoint anneals from the right place.
    fresh = make(gumbel_temperature=(2.0, 0.5))
    fresh.load_state_dict(loss.state_dict())
    assert fresh.gumbel_temperature.item() == loss.gumbel_temperature.item()


def test_old_three_value_gumbel_schedule_loads_with_its_decay_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="bljust"):
        cfg = ssl_cfg("wav2vec2", gumbel_temperature=(2.0, 0.5, 0.999995))
    assert cfg.gumbel_temperature == (2.0, 0.5)
    assert "retired" in caplog.text


def test_quantizer_gumbel_noise_from_generator_and_argmax_in_eval():
    torch.manual_seed(0)
    q = GumbelQuantizer(16, groups=2, entries=8, out_dim=12)
    x = torch.randn(50, 16)
    temp = torch.tensor(2.0)
    out1, codes1, probs = q(x, temp, torch.Generator().manual_seed(0))
    out2, codes2, _ = q(x, temp, torch.Generator().manual_seed(0))
    _, codes3, _ = q(x, temp, torch.Generator().manual_seed(1))
    assert out1.shape == (50, 12) and codes1.shape == (50, 2) and probs.shape == (50, 2, 8)
    assert torch.equal(out1, out2) and torch.equal(codes1, codes2) and not torch.equal(codes1, codes3)
    assert torch.allclose(probs.sum(-1), torch.ones(50, 2))
    q.eval()
    _, e1, _ = q(x, temp, torch.Generator().manual_seed(0))
    _, e2, _ = q(x, temp, torch.Generator().manual_seed(1))
    assert torch.equal(e1, e2) and torch.equal(e1, probs.argmax(-1))
    # Straight-through: the hard choice passes gradients to the logits and the code vectors.
    q.train()
    out, _, _ = q(x, temp, torch.Generator().manual_seed(0))
    out.square().sum().backward()
    assert q.weight_proj.weight.grad.abs().sum() > 0 and q.codevectors.grad.abs().sum() > 0


def test_encoder_sees_the_learned_mask_embedding_and_latents_are_unmasked():
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = tiny_encoder()
            self.subsampling = _SubSpy(self.enc.subsampling)

        def forward(self, x, lens, layer=-1):
            calls.append(("encoder", x.detach().clone()))
            return self.enc(x, lens, layer=layer)

    class _SubSpy(torch.nn.Module):
        def __init__(self, sub):
            super().__init__()
            self.sub = sub

        def forward(self, x, lens):
            calls.append(("subsampling", x.detach().clone()))
            return self.sub(x, lens)

    loss = make(mask_prob=0.05, mask_span=10)
    feats, lens = random_batch()
    loss(Spy(), feats, lens, torch.Generator().manual_seed(3))
    (k0, x0), (k1, x1) = calls
    assert k0 == "subsampling" and torch.equal(x0, feats)
    in_mask = span_mask(lens, feats.size(1), 0.05, 10, torch.Generator().manual_seed(3))
    assert k1 == "encoder" and torch.equal(x1[~in_mask], feats[~in_mask])
    assert torch.allclose(x1[in_mask], loss.mask_emb.detach().expand(int(in_mask.sum()), FEAT))


def test_gradients_reach_encoder_quantiser_and_heads():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10, num_negatives=20)
    heads = ["quantizer.weight_proj.weight", "quantizer.codevectors", "quantizer.project_q.weight",
             "final_proj.weight", "mask_emb"]
    check_gradients_and_buffers(loss, enc, *random_batch(), frozen=[], head_params=heads)
    assert "gumbel_temperature" not in dict(loss.named_parameters())


def test_deterministic_given_generator():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    check_determinism(loss, enc, *random_batch())


def test_bf16_autocast():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    check_autocast(loss, enc, *random_batch())


def test_nothing_to_mask_gives_an_empty_connected_loss():
    enc, loss = tiny_encoder(), make()
    loss_sum, count, stats = loss(enc, *random_batch(lens=(15, 12)), torch.Generator().manual_seed(0))
    assert count.item() == 0 and loss_sum.item() == 0.0
    loss_sum.backward()
    assert all(p.grad is not None for p in loss.parameters())


def test_learns_on_speech_without_collapse(speech):
    enc, loss = tiny_encoder(), make()
    t0 = time.perf_counter()
    before, after, history = optimise(loss, enc, speech, steps=60)
    elapsed = time.perf_counter() - t0
    print(f"wav2vec2: {before} -> {after} ({elapsed:.1f} s)")
    gv = loss.cfg.quantizer_groups * loss.cfg.quantizer_entries
    assert after["loss"] < before["loss"] - 0.3
    assert after["acc"] > 3 * after["acc_chance"] and after["acc"] > 0.1
    assert min(h["perplexity"] for h in history) > 0.05 * gv  # the codebook does not collapse
    assert after["code_usage"] > 0.15
    assert history[-1]["temperature"] < 2.0


def test_works_through_a_ddp_style_wrapper():
    """A wrapper (DDP) exposes the encoder as ``.module``: the front-end is found there."""
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x, lens, layer=-1):
            return self.module(x, lens, layer=layer)

    enc = tiny_encoder()
    feats, lens = random_batch()
    loss = make(mask_prob=0.05, mask_span=10)
    a, _, _ = loss(Wrapper(enc), feats, lens, torch.Generator().manual_seed(0))
    b, _, _ = loss(enc, feats, lens, torch.Generator().manual_seed(0))
    assert a.item() == b.item()
