"""bljust's Dropout: nn.Dropout's contract with a cheaper CPU mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bljust.models.dropout import Dropout, dropout, keep_mask

torch.set_num_threads(1)


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.1])
def test_keep_mask_keeps_the_asked_share_and_its_elements_are_independent(keep):
    torch.manual_seed(0)
    n = 400_000
    m = keep_mask(torch.Size([n]), keep, torch.device("cpu")).double()
    sd = math.sqrt(keep * (1 - keep) / n)
    assert abs(m.mean().item() - keep) < 5 * sd
    # Neighbours share a 64-bit word (4 elements each): their masks must still be uncorrelated.
    for lag in (1, 2, 3, 4):
        both = (m[:-lag] * m[lag:]).mean().item()
        assert abs(both - keep * keep) < 6 * sd


def test_dropout_is_unbiased_and_zeroes_or_scales_each_element():
    torch.manual_seed(1)
    x = torch.full((1000, 500), 3.0)
    y = dropout(x, 0.2, training=True)
    assert set(torch.unique(y).tolist()) == {0.0, 3.0 / 0.8}
    assert abs(y.mean().item() - 3.0) < 0.02
    assert y.shape == x.shape and y.dtype == x.dtype


def test_bf16_keeps_its_dtype_and_the_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(8, 50, 64, dtype=torch.bfloat16, requires_grad=True)
    y = dropout(x, 0.3, training=True)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    kept = y != 0
    assert torch.equal(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.7))
    assert torch.all(x.grad[~kept & (x != 0)] == 0)


def test_same_seed_same_mask_and_the_generator_advances():
    x = torch.ones(10_000)
    torch.manual_seed(3)
    a, b = dropout(x, 0.5, True), dropout(x, 0.5, True)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5, True), a)
    assert not torch.equal(a, b)


def test_module_is_an_nn_dropout_and_identity_in_eval_or_at_p_0():
    d = Dropout(0.25)
    assert isinstance(d, nn.Dropout) and d.p == 0.25 and repr(d) == repr(nn.Dropout(0.25))
    x = torch.randn(4, 7)
    assert torch.equal(d.eval()(x), x)
    assert torch.equal(dropout(x, 0.0, True), x)
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))
