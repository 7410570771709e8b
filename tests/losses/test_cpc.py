"""CPC-style InfoNCE with masked targets (non-trivial for bidirectional encoders)."""

from __future__ import annotations

import time

import pytest

import torch

from bljust.losses import build_ssl_loss, info_nce, sample_negatives
from bljust.losses.cpc import CPCLoss, cpc_pairs
from bljust.losses.masking import span_mask, subsample_mask
from bljust.models.subsampling import valid_mask
from tests.losses.conftest import (FEAT, check_autocast, run_loss, check_contract, check_determinism,
                                   check_gradients_and_buffers, optimise, random_batch, ssl_cfg, tiny_encoder)

torch.set_num_threads(1)

STATS = {"loss", "acc", "acc_chance", "masked_frac", "target_std"}


def make(**kw) -> CPCLoss:
    torch.manual_seed(1)
    loss = build_ssl_loss(ssl_cfg("cpc", **kw), 64, FEAT)
    assert isinstance(loss, CPCLoss)
    return loss


def test_pairs_predict_only_masked_frames_from_unmasked_contexts():
    g = torch.Generator().manual_seed(0)
    lens = torch.tensor([900, 500, 260])
    in_mask = span_mask(lens, 900, 0.03, 20, g)
    out_lens = torch.tensor([224, 124, 64])
    mask = subsample_mask(in_mask, 224, out_lens)
    valid = valid_mask(out_lens, 224)
    pairs = cpc_pairs(mask, valid, 4)
    assert len(pairs) == 4
    total = 0
    for k, pair in enumerate(pairs, start=1):
        assert pair.shape == (3, 224 - k)
        b, t = pair.nonzero(as_tuple=True)
        assert (valid[b, t] & ~mask[b, t]).all(), "contexts are unmasked valid frames"
        assert (valid[b, t + k] & mask[b, t + k]).all(), "targets are masked valid frames"
        total += len(t)
        # Every masked frame with an unmasked frame k before it is predicted at offset k.
        expect = valid[:, :-k] & ~mask[:, :-k] & mask[:, k:] & valid[:, k:]
        assert torch.equal(pair, expect)
    assert total > 0
    # The last unmasked frame before each masked run predicts the run's first frames.
    run_start = mask[:, 1:] & ~mask[:, :-1] & valid[:, :-1]
    assert torch.equal(pairs[0] & run_start, run_start)
    # Offsets beyond the sequence select nothing.
    tiny = cpc_pairs(torch.tensor([[False, True]]), torch.ones(1, 2, dtype=torch.bool), 4)
    assert [p.shape[1] for p in tiny] == [1, 0, 0, 0] and tiny[0].item()


def test_sample_negatives_and_info_nce():
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor([0, 0, 10, 10, 30])
    sizes = torch.tensor([10, 10, 20, 20, 1])
    selves = torch.tensor([0, 9, 10, 29, 30])
    idx, ok = sample_negatives(offsets, sizes, selves, 200, g)
    assert idx.shape == ok.shape == (5, 200)
    for i in range(4):
        assert ok[i].all()
        assert ((idx[i] >= offsets[i]) & (idx[i] < offsets[i] + sizes[i])).all()
        assert (idx[i] != selves[i]).all()
        assert len(set(idx[i].tolist())) == sizes[i] - 1  # every other member is drawn
    assert not ok[4].any()  # a pool of one holds nothing but the positive
    pred = torch.randn(6, 8)
    pos = pred.clone()
    neg = torch.randn(6, 3, 8)
    loss, correct = info_nce(pred, pos, neg, 0.1)
    assert correct.all() and (loss > 0).all()
    logits = torch.cat([torch.ones(6, 1), torch.nn.functional.cosine_similarity(pred[:, None], neg, dim=-1)], 1) / 0.1
    assert torch.allclose(loss, torch.logsumexp(logits, 1) - logits[:, 0], atol=1e-5)
    loss_masked, _ = info_nce(pred, pos, neg, 0.1, torch.zeros(6, 3, dtype=torch.bool))
    assert torch.allclose(loss_masked, torch.zeros(6), atol=1e-6)


def test_contract_and_stop_gradient_targets():
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = tiny_encoder()

        def forward(self, x, lens, layer=-1):
            calls.append((torch.is_grad_enabled(), self.training, x.detach().clone()))
            return self.enc(x, lens, layer=layer)

    spy = Spy().train()
    loss = make(mask_prob=0.05, mask_span=10, num_negatives=20)
    feats, lens = random_batch()
    loss_sum, count, stats = check_contract(loss, spy, feats, lens, STATS)
    # Targets: no gradient, eval mode, plain input; then the masked pass with gradient in train mode.
    (g0, train0, x0), (g1, train1, x1) = calls
    assert not g0 and not train0 and torch.equal(x0, feats)
    assert g1 and train1 and spy.training
    in_mask = span_mask(lens, feats.size(1), 0.05, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x1[~in_mask], feats[~in_mask])
    assert torch.allclose(x1[in_mask], loss.mask_emb.detach().expand(int(in_mask.sum()), FEAT))
    assert abs(stats["acc_chance"] - 1 / 21) < 1e-6 and stats["target_std"] > 0.05


def test_masked_input_does_not_reach_the_predictions():
    """The loss depends on the input inside masked spans only through constant targets: no trivial copy."""
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    feats, lens = random_batch()
    feats = feats.clone().requires_grad_(True)
    loss_sum, count, _ = loss(enc, feats, lens, torch.Generator().manual_seed(4))
    loss_sum.backward()
    in_mask = span_mask(lens, feats.size(1), 0.05, 10, torch.Generator().manual_seed(4))
    assert in_mask.sum() > 0
    assert feats.grad[in_mask].abs().max() == 0
    assert feats.grad[~in_mask & valid_mask(lens, feats.size(1))].abs().sum() > 0


def test_gradients_reach_encoder_and_heads_not_frozen_projection():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10, num_negatives=20)
    feats, lens = random_batch()
    heads = [f"heads.{k}.weight" for k in range(loss.steps)]
    check_gradients_and_buffers(loss, enc, feats, lens, frozen=["target_proj"], head_params=heads + ["mask_emb"])


def test_deterministic_given_generator():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    check_determinism(loss, enc, *random_batch())


def test_bf16_autocast():
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10)
    check_autocast(loss, enc, *random_batch())


def test_learns_on_speech_without_collapse(speech):
    enc, loss = tiny_encoder(), make()
    t0 = time.perf_counter()
    before, after, history = optimise(loss, enc, speech, steps=80)
    elapsed = time.perf_counter() - t0
    print(f"cpc: {before} -> {after} ({elapsed:.1f} s)")
    assert after["loss"] < before["loss"] - 0.5
    # Most distractors are other frames of the same utterance (same voice and channel, often the same
    # sound nearby): a harder task than telling utterances apart, hence a lower bar than batch-wide ones.
    assert after["acc"] > 3 * after["acc_chance"]
    assert after["target_std"] > 0.3
    # No collapse while training: the targets stay at least as spread as the random encoder's.
    assert min(h["target_std"] for h in history[-10:]) > 0.9 * history[0]["target_std"] > 0.1


@pytest.mark.parametrize("share", [1.0, 0.8, 0.0])
def test_most_distractors_come_from_the_positives_own_utterance(share, monkeypatch):
    import bljust.losses.cpc as cpc

    drawn = []

    def spy(pool_offset, pool_size, self_index, num, generator):
        idx, valid = sample_negatives(pool_offset, pool_size, self_index, num, generator)
        drawn.append((pool_offset, pool_size, self_index, idx))
        return idx, valid

    monkeypatch.setattr(cpc, "sample_negatives", spy)
    enc, loss = tiny_encoder(), make(mask_prob=0.05, mask_span=10, num_negatives=20, cpc_same_utterance=share)
    feats, lens = random_batch(lens=(400, 300, 350))
    run_loss(loss, enc, feats, lens)
    (own_off, own_size, pos, own_idx), (_, batch_size, _, batch_idx) = drawn
    assert own_idx.size(1) == round(20 * share) and batch_idx.size(1) == 20 - round(20 * share)
    # The own-utterance draws stay inside the positive's utterance (a contiguous range of the flat pool) ...
    assert ((own_idx >= own_off[:, None]) & (own_idx < (own_off + own_size)[:, None])).all()
    assert (own_size < batch_size).all()
    # ... and never pick the positive itself.
    assert (own_idx != pos[:, None]).all() and (batch_idx != pos[:, None]).all()
