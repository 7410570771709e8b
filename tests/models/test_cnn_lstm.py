"""CnnLstmEncoder."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bljust.config import ModelConfig
from bljust.models.cnn_lstm import CnnLstmEncoder
from bljust.models import count_parameters

torch.set_num_threads(1)

FEAT = 20


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(arch="cnn_lstm", d_model=64, num_layers=2, lstm_hidden=48, subsampling_channels=16, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def make_encoder(seed: int = 0, **kw) -> CnnLstmEncoder:
    torch.manual_seed(seed)
    return CnnLstmEncoder(tiny_cfg(**kw), FEAT)


def test_shapes_and_lengths():
    enc = make_encoder().eval()
    lengths = torch.tensor([37, 100, 7, 81])  # longest not first: enforce_sorted=False
    y, yl = enc(torch.randn(4, 100, FEAT), lengths)
    assert enc.output_dim == 64
    assert y.shape == (4, 24, 64)
    assert yl.dtype == torch.int64
    assert yl.tolist() == enc.output_lengths(lengths).tolist() == [8, 24, 1, 19]
    for i, n in enumerate(yl.tolist()):
        assert torch.all(y[i, n:] == 0), "padded output frames are zero"
        assert y[i, :n].abs().sum() > 0


def test_output_length_when_longest_is_padded_too():
    # max(lengths) < T: the output still has T' = output_lengths(T) frames
    enc = make_encoder().eval()
    y, yl = enc(torch.randn(2, 90, FEAT), torch.tensor([50, 61]))
    assert y.shape[1] == enc.output_lengths(torch.tensor(90)).item() == 21
    assert yl.tolist() == [11, 14]


def test_padding_invariance():
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


def test_too_short_sequence_in_batch_stays_finite():
    enc = make_encoder().eval()
    y, yl = enc(torch.randn(2, 40, FEAT), torch.tensor([40, 5]))
    assert yl.tolist() == [9, 0]
    assert torch.isfinite(y).all() and torch.all(y[1] == 0)


def test_gradient_reaches_every_parameter():
    enc = make_encoder(dropout=0.1).train()
    torch.manual_seed(2)
    y, _ = enc(torch.randn(3, 80, FEAT), torch.tensor([50, 80, 33]))
    (y * torch.randn_like(y)).sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_deterministic_given_seed():
    x, lengths = torch.randn(2, 60, FEAT), torch.tensor([44, 60])
    outs = []
    for _ in range(2):
        enc = make_encoder(seed=123, dropout=0.1).train()
        torch.manual_seed(7)
        outs.append(enc(x, lengths)[0])
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)


def test_ctc_training_reduces_loss():
    torch.manual_seed(0)
    enc = CnnLstmEncoder(tiny_cfg(), FEAT)
    vocab = 10
    head = torch.nn.Linear(enc.output_dim, vocab)
    x = torch.randn(2, 80, FEAT)
    lengths = torch.tensor([80, 60])
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


def test_parameter_count_matches_architecture():
    cfg = ModelConfig(arch="cnn_lstm", d_model=256, num_layers=3, lstm_hidden=320, subsampling_channels=64)
    with torch.device("meta"):
        enc = CnnLstmEncoder(cfg, 80)
    f = ((80 - 1) // 2 - 1) // 2
    front = (9 * 64 + 64) + (64 * 64 * 9 + 64) + (f * 64 * 256 + 256)
    h = cfg.lstm_hidden
    lstm = sum(2 * (4 * h * (i_dim + h) + 8 * h) for i_dim in (256, 2 * h, 2 * h))
    assert count_parameters(enc) == front + lstm + (2 * h * 256 + 256)


def test_bf16_autocast_forward_cpu():
    enc = make_encoder().eval()
    x, lengths = torch.randn(2, 70, FEAT), torch.tensor([41, 70])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, yl = enc(x, lengths)
    ref, _ = enc(x, lengths)
    assert y.shape == ref.shape and yl.tolist() == [9, 16]
    assert torch.isfinite(y).all()
    assert (y.float() - ref).abs().max() < 0.25  # bf16 rounding, not garbage
