"""span_mask and subsample_mask."""

from __future__ import annotations

import pytest
import torch

from bljust.losses.masking import MAJORITY, RECEPTIVE_FIELD, STRIDE, span_mask, subsample_mask
from bljust.models.subsampling import subsampled_lengths, valid_mask
from tests.losses.conftest import FEAT, tiny_encoder

torch.set_num_threads(1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of the True runs of a 1-D bool tensor."""
    out, start = [], None
    for i, v in enumerate(row.tolist() + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            out.append((start, i - start))
            start = None
    return out


@pytest.mark.parametrize("p,span", [(0.02, 20), (0.01, 10), (0.05, 5), (0.065, 10)])
def test_masked_fraction_matches_overlapping_spans(p, span):
    lens = torch.full((64,), 3000)
    mask = span_mask(lens, 3000, p, span, gen(0))
    frac = mask.float().mean().item()
    expected = 1 - (1 - p) ** span  # spans overlap; ≈ p·span when small
    assert abs(frac - expected) < 0.02 + 0.05 * expected, (frac, expected)
    assert 0.5 * p * span < frac <= p * span


def test_never_past_lengths_spans_whole_and_at_least_one():
    lens = torch.tensor([1000, 500, 37, 20, 19, 5, 0, 250])
    t, span = 1000, 20
    for seed in range(20):
        mask = span_mask(lens, t, 0.02, span, gen(seed))
        assert mask.shape == (8, t) and mask.dtype == torch.bool
        assert not (mask & ~valid_mask(lens, t)).any(), "masked a padded frame"
        for i, n in enumerate(lens.tolist()):
            r = runs(mask[i])
            if n >= span:
                assert r, f"utterance of {n} frames got no span"
            else:
                assert not r, "an utterance shorter than a span must stay unmasked"
            # Every run is a union of whole spans.
            assert all(length >= span for _, length in r)
    # An utterance exactly one span long is masked entirely even with a tiny probability.
    mask = span_mask(torch.tensor([20, 20]), 20, 1e-9, 20, gen(0))
    assert mask.all()


def test_deterministic_given_generator_and_no_global_rng():
    lens = torch.tensor([800, 640, 123])
    state = torch.get_rng_state()
    a = span_mask(lens, 800, 0.03, 10, gen(7))
    b = span_mask(lens, 800, 0.03, 10, gen(7))
    c = span_mask(lens, 800, 0.03, 10, gen(8))
    assert torch.equal(torch.get_rng_state(), state), "span_mask touched the global RNG"
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # The generator advances by a fixed amount whatever the outcome (B·T + B uniforms).
    g1, g2 = gen(3), gen(3)
    span_mask(lens, 800, 0.9, 10, g1)
    span_mask(torch.tensor([5, 5, 5]), 800, 0.001, 10, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def _reference_subsample(mask: torch.Tensor, t_out: int) -> torch.Tensor:
    b, t = mask.shape
    out = torch.zeros((b, t_out), dtype=torch.bool)
    for i in range(b):
        for j in range(t_out):
            window = mask[i, STRIDE * j: STRIDE * j + RECEPTIVE_FIELD]
            out[i, j] = int(window.sum()) >= MAJORITY
    return out


def test_subsample_majority_rule_matches_reference():
    g = gen(0)
    for t in (7, 8, 9, 10, 11, 30, 101, 203):
        mask = torch.rand((3, t), generator=g) < 0.5
        t_out = int(subsampled_lengths(torch.tensor(t)))
        sub = subsample_mask(mask, t_out)
        assert torch.equal(sub, _reference_subsample(mask, t_out)), t
        assert torch.equal(subsample_mask(mask), sub)  # default: the front-end's length formula
    assert subsample_mask(torch.ones((2, 5), dtype=torch.bool)).shape == (2, 0)
    full = subsample_mask(torch.ones((1, 103), dtype=torch.bool))
    assert full.all() and full.shape == (1, 25)


@pytest.mark.parametrize("arch", ["conformer", "cnn_lstm"])
def test_subsample_consistent_with_encoder_output(arch):
    enc = tiny_encoder(arch).eval()
    lens = torch.tensor([411, 300, 97, 8])
    t = int(lens.max())
    feats = torch.randn((4, t, FEAT)) * valid_mask(lens, t)[..., None]
    with torch.no_grad():
        hidden, out_lens = enc(feats, lens)
    mask = span_mask(lens, t, 0.05, 10, gen(1))
    sub = subsample_mask(mask, enc.output_lengths, out_lens)
    assert sub.shape == hidden.shape[:2]
    assert torch.equal(out_lens, enc.output_lengths(lens))
    assert not (sub & ~valid_mask(out_lens, hidden.size(1))).any(), "masked a padded encoder frame"
    assert sub[:3].any(dim=1).all(), "every utterance with spans of 10 frames has a masked encoder frame"
    # Masked fraction carries over (spans of 10 frames: a little lower at the encoder's resolution).
    frac_in = mask[valid_mask(lens, t)].float().mean()
    frac_out = sub[valid_mask(out_lens, sub.size(1))].float().mean()
    assert abs(frac_in - frac_out) < 0.1
