"""Conv2dSubsampling4 front-end and ConformerEncoder."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bljust.config import ModelConfig
from bljust.models import count_parameters
from bljust.models.conformer import ConformerEncoder, apply_rotary, rotary_tables
from bljust.models.subsampling import MIN_INPUT_FRAMES, Conv2dSubsampling4, subsampled_lengths

torch.set_num_threads(1)

FEAT = 20


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(d_model=64, num_layers=2, num_heads=4, ff_mult=2, conv_kernel=7, subsampling_channels=16,
                dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def make_encoder(seed: int = 0, **kw) -> ConformerEncoder:
    torch.manual_seed(seed)
    return ConformerEncoder(tiny_cfg(**kw), FEAT)


# ---------------------------------------------------------------- subsampling


def test_subsampled_lengths_formula():
    lengths = torch.tensor([0, 1, 5, 6, 7, 8, 9, 10, 11, 15, 100, 350, 3000])
    expected = [max(0, ((n - 1) // 2 - 1) // 2) for n in lengths.tolist()]
    assert subsampled_lengths(lengths).tolist() == expected
    assert subsampled_lengths(torch.tensor([MIN_INPUT_FRAMES])).item() == 1
    assert subsampled_lengths(torch.tensor([MIN_INPUT_FRAMES - 1])).item() == 0


def test_subsampling_output_lengths_match_actual_shapes():
    torch.manual_seed(0)
    sub = Conv2dSubsampling4(FEAT, 8, 32).eval()
    for n in list(range(MIN_INPUT_FRAMES, 64)) + [99, 100, 101, 102, 103, 350, 1001]:
        y, yl = sub(torch.randn(1, n, FEAT), torch.tensor([n]))
        assert y.shape == (1, yl.item(), 32), n
        assert yl.item() == sub.output_lengths(torch.tensor([n])).item() >= 1
    lengths = torch.tensor([7, 30, 57, 64])
    y, yl = sub(torch.randn(4, 64, FEAT), lengths)
    assert y.shape[1] == yl.max().item() == sub.output_lengths(torch.tensor(64)).item()
    assert yl.dtype == torch.int64 and yl.tolist() == subsampled_lengths(lengths).tolist()


def test_subsampling_equals_plain_conv2d_stack():
    torch.manual_seed(0)
    sub = Conv2dSubsampling4(FEAT, 8, 32).eval()
    x = torch.randn(3, 50, FEAT)
    y, _ = sub(x, torch.tensor([50, 50, 50]))
    h = F.relu(sub.conv2(F.relu(sub.conv1(x.unsqueeze(1)))))  # (B, C, T', F')
    ref = sub.out(h.permute(0, 2, 3, 1).flatten(2))  # flattened (F', C)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


def test_subsampling_padding_does_not_leak():
    torch.manual_seed(0)
    sub = Conv2dSubsampling4(FEAT, 8, 32).eval()
    x = torch.randn(1, 45, FEAT)
    alone, n_alone = sub(x, torch.tensor([45]))
    padded = torch.cat([x, torch.full((1, 30, FEAT), 1e4)], dim=1)
    padded[0, -1, 0] = float("nan")
    y, n = sub(padded, torch.tensor([45]))
    assert n.item() == n_alone.item()
    torch.testing.assert_close(y[:, : n.item()], alone, atol=1e-6, rtol=0)


def test_subsampling_rejects_bad_input():
    sub = Conv2dSubsampling4(FEAT, 8, 32)
    with pytest.raises(ValueError):
        sub(torch.randn(1, MIN_INPUT_FRAMES - 1, FEAT), torch.tensor([MIN_INPUT_FRAMES - 1]))
    with pytest.raises(ValueError):
        sub(torch.randn(1, 20, FEAT + 1), torch.tensor([20]))
    with pytest.raises(ValueError):
        Conv2dSubsampling4(6, 8, 32)


# ---------------------------------------------------------------- rotary positions


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    dh, t = 16, 40
    cos, sin = rotary_tables(t, dh, torch.device("cpu"), torch.float32)
    q, k = torch.randn(dh), torch.randn(dh)
    qs = apply_rotary(q.expand(t, dh), cos, sin)
    ks = apply_rotary(k.expand(t, dh), cos, sin)
    scores = qs @ ks.t()  # scores[i, j] = <R_i q, R_j k>
    for offset in (-5, 0, 3, 17):
        diag = torch.diagonal(scores, offset)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-4, rtol=0)
    # and rotation keeps norms
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(t), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- encoder


def test_encoder_shapes_and_lengths():
    enc = make_encoder().eval()
    lengths = torch.tensor([100, 37, 7, 81])
    x = torch.randn(4, 100, FEAT)
    y, yl = enc(x, lengths)
    assert enc.output_dim == 64
    assert y.shape == (4, enc.output_lengths(torch.tensor(100)).item(), 64)
    assert yl.dtype == torch.int64
    assert yl.tolist() == enc.output_lengths(lengths).tolist() == [24, 8, 1, 19]
    for i, n in enumerate(yl.tolist()):
        assert torch.all(y[i, n:] == 0), "padded output frames are zero"
        assert y[i, :n].abs().sum() > 0


def test_encoder_padding_invariance():
    enc = make_encoder().eval()
    torch.manual_seed(1)
    short, long = torch.randn(1, 61, FEAT), torch.randn(1, 173, FEAT)
    with torch.no_grad():
        alone, n_alone = enc(short, torch.tensor([61]))
        batch = torch.full((2, 173, FEAT), 50.0)  # garbage in the padding
        batch[0, :61] = short[0]
        batch[1] = long[0]
        y, n = enc(batch, torch.tensor([61, 173]))
        long_alone, _ = enc(long, torch.tensor([173]))
    assert n[0].item() == n_alone.item() == alone.shape[1]
    torch.testing.assert_close(y[0, : n[0]], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(y[1], long_alone[0], atol=1e-5, rtol=0)


def test_encoder_too_short_sequence_in_batch_stays_finite():
    enc = make_encoder().eval()
    y, yl = enc(torch.randn(2, 40, FEAT), torch.tensor([40, 5]))
    assert yl.tolist() == [9, 0]
    assert torch.isfinite(y).all() and torch.all(y[1] == 0)


def test_gradient_reaches_every_parameter():
    enc = make_encoder(dropout=0.1).train()
    torch.manual_seed(2)
    y, yl = enc(torch.randn(3, 80, FEAT), torch.tensor([80, 50, 33]))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_deterministic_given_seed():
    x, lengths = torch.randn(2, 60, FEAT), torch.tensor([60, 44])
    outs = []
    for _ in range(2):
        enc = make_encoder(seed=123, dropout=0.1).train()
        torch.manual_seed(7)
        outs.append(enc(x, lengths)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_ctc_training_reduces_loss():
    torch.manual_seed(0)
    enc = ConformerEncoder(tiny_cfg(), FEAT)
    vocab = 10
    head = torch.nn.Linear(enc.output_dim, vocab)
    x = torch.randn(2, 120, FEAT)
    lengths = torch.tensor([120, 90])
    targets = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
    target_lengths = torch.tensor([5, 3])
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=3e-3)

    def loss_fn() -> torch.Tensor:
        y, yl = enc(x, lengths)
        logp = head(y).log_softmax(-1).transpose(0, 1)
        return F.ctc_loss(logp, targets, yl, target_lengths, blank=0)

    start = loss_fn().item()
    for _ in range(100):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = loss_fn().item()
    assert math.isfinite(start) and end < 0.3 * start, (start, end)


def test_100m_config_parameter_count():
    cfg = ModelConfig(d_model=512, num_layers=18, num_heads=8, ff_mult=4, conv_kernel=31, subsampling_channels=512)
    with torch.device("meta"):
        enc = ConformerEncoder(cfg, 80)
    n = count_parameters(enc)
    assert 80e6 <= n <= 130e6, n
    # and the default demo size is small
    with torch.device("meta"):
        assert count_parameters(ConformerEncoder(ModelConfig(), 80)) < 5e6


def test_bf16_autocast_forward_cpu():
    enc = make_encoder().eval()
    x, lengths = torch.randn(2, 70, FEAT), torch.tensor([70, 41])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, yl = enc(x, lengths)
    ref, _ = enc(x, lengths)
    assert y.shape == ref.shape and yl.tolist() == [16, 9]
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.25  # bf16 rounding, not garbage


def test_conv_module_matches_plain_depthwise_conv1d_and_zeroes_padding():
    from bljust.models.conformer import ConvModule

    torch.manual_seed(0)
    m = ConvModule(32, 7, 0.0).eval()
    x = torch.randn(3, 20, 32)
    pad = torch.zeros(3, 20, 1, dtype=torch.bool)
    pad[1, 12:] = True
    y = m(x, pad)
    h = F.glu(m.pointwise1(m.norm(x)), dim=-1).masked_fill(pad, 0.0)
    ref = m.pointwise2(F.silu(m.conv_norm(m.depthwise(h.transpose(1, 2)).transpose(1, 2))))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)
