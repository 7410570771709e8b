"""Fixtures of the SSL loss tests: a minute of synthesised unlabeled speech, as log-mel batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from bljust.config import FeatureConfig, ModelConfig, SSLConfig
from bljust.models import build_encoder

torch.set_num_threads(1)

FEAT = 80


def tiny_encoder(arch: str = "conformer", seed: int = 0, **kw) -> torch.nn.Module:
    """The test encoder θ: d_model 64, 2 layers, 32 subsampling channels, no dropout."""
    base = dict(arch=arch, d_model=64, num_layers=2, num_heads=4, subsampling_channels=32, lstm_hidden=32,
                conv_kernel=7, dropout=0.0)
    base.update(kw)
    torch.manual_seed(seed)
    return build_encoder(ModelConfig(**base), FEAT)


def random_batch(seed: int = 0, lens: tuple[int, ...] = (400, 173, 311)) -> tuple[Tensor, Tensor]:
    """Padded random 'features' (zeros beyond lens) for the quick shape and gradient tests."""
    g = torch.Generator().manual_seed(seed)
    t = max(lens)
    feats = torch.randn((len(lens), t, FEAT), generator=g)
    lens_t = torch.tensor(lens)
    feats = feats * (torch.arange(t)[None, :] < lens_t[:, None])[..., None]
    return feats, lens_t


@dataclass
class SpeechBatches:
    train: list[tuple[Tensor, Tensor]]
    """Two batches of about 30 s each, alternated by the optimisation tests."""
    eval: tuple[Tensor, Tensor]
    """All utterances in one batch, scored before and after optimising."""
    train_ids: list[list[str]]
    """The cut ids of each training batch."""
    eval_ids: list[str]
    """The cut ids of the evaluation batch."""


def _pad(feats: list[Tensor]) -> tuple[Tensor, Tensor]:
    lens = torch.tensor([f.size(0) for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lens


@pytest.fixture(scope="session")
def unlabeled_corpus(tiny_corpus) -> Path:
    """The shared generated corpus: its unlabeled split holds about one minute of speech."""
    return tiny_corpus


@pytest.fixture(scope="session")
def speech(unlabeled_corpus) -> SpeechBatches:
    from bljust.data.features import LogMel
    from bljust.data.manifests import load_split

    cuts = load_split(unlabeled_corpus, "unlabeled")
    frontend = LogMel(FeatureConfig(normalize="utterance"))
    feats, ids = [], []
    for cut in cuts:
        ids.append(cut.id)
        wav = torch.from_numpy(cut.load_audio()[0]).float()[None]
        f, n = frontend(wav, torch.tensor([wav.size(1)]))
        feats.append(f[0, : int(n[0])])
    assert sum(f.size(0) for f in feats) > 45 * 100, "expected about a minute of audio"
    order = sorted(range(len(feats)), key=lambda i: -feats[i].size(0))
    halves = [[feats[i] for i in order[0::2]], [feats[i] for i in order[1::2]]]
    return SpeechBatches(train=[_pad(h) for h in halves], eval=_pad([feats[i] for i in order]),
                         train_ids=[[ids[i] for i in order[0::2]], [ids[i] for i in order[1::2]]],
                         eval_ids=[ids[i] for i in order])


def optimise(loss_fn, encoder, batches: SpeechBatches, steps: int, lr: float = 2e-3,
             warmup: int = 10, ids: list[list[str]] | None = None) -> tuple[dict, dict, list[dict]]:
    """AdamW on encoder + head for ``steps`` steps (linear warm-up, clip 1.0); eval-batch stats before and after.

    Each step's generator is seeded by the step (as the trainer does); the evaluation uses a fixed
    generator and eval mode, so before/after differ only by the parameters.
    """
    params = list(encoder.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    def evaluate() -> dict:
        encoder.eval(), loss_fn.eval()
        with torch.no_grad():
            _, _, stats = loss_fn(encoder, *batches.eval, torch.Generator().manual_seed(12345), ids=batches.eval_ids)
        encoder.train(), loss_fn.train()
        return stats

    before = evaluate()
    history = []
    for step in range(steps):
        feats, lens = batches.train[step % len(batches.train)]
        loss_sum, count, stats = loss_fn(encoder, feats, lens, torch.Generator().manual_seed(step),
                                         ids=batches.train_ids[step % len(batches.train)])
        opt.zero_grad(set_to_none=True)
        (loss_sum / count.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_fn.set_progress(step + 1, steps)
        history.append(stats)
    return before, evaluate(), history


def ssl_cfg(loss: str, **kw) -> SSLConfig:
    return SSLConfig(loss=loss, **kw)


def run_loss(loss_fn, encoder, feats: Tensor, lens: Tensor, seed: int = 0):
    return loss_fn(encoder, feats, lens, torch.Generator().manual_seed(seed))


def check_contract(loss_fn, encoder, feats: Tensor, lens: Tensor, stat_keys: set[str]) -> tuple[Tensor, Tensor, dict]:
    """Output types and shapes shared by every SSL loss; returns the outputs."""
    loss_sum, count, stats = run_loss(loss_fn, encoder, feats, lens)
    assert loss_sum.shape == () and count.shape == ()
    assert loss_sum.dtype == torch.float32 and count.dtype == torch.float32
    assert loss_sum.requires_grad and not count.requires_grad
    assert torch.isfinite(loss_sum) and count.item() > 0 and float(count) == int(count)
    assert stat_keys <= set(stats), stat_keys - set(stats)
    assert all(type(v) is float for v in stats.values()), stats
    assert abs(stats["loss"] - loss_sum.item() / count.item()) < 1e-4 * max(1.0, abs(stats["loss"]))
    return loss_sum, count, stats


def check_gradients_and_buffers(loss_fn, encoder, feats: Tensor, lens: Tensor, frozen: list[str],
                                head_params: list[str]) -> None:
    """θ and η get gradients; the frozen buffers are not parameters and an optimiser step leaves them be."""
    param_names = {n for n, _ in loss_fn.named_parameters()}
    buffers = dict(loss_fn.named_buffers())
    for name in frozen:
        assert name in buffers and name not in param_names, name
        assert not buffers[name].requires_grad
    frozen_before = {n: buffers[n].clone() for n in frozen}
    params = list(encoder.parameters()) + list(loss_fn.parameters())
    opt = torch.optim.AdamW(params, lr=1e-2)
    for step in range(2):
        loss_sum, count, _ = run_loss(loss_fn, encoder, feats, lens, seed=step)
        opt.zero_grad()
        (loss_sum / count).backward()
        if step == 0:
            # θ: the front-end and the last encoder layer; η: the heads.
            enc_grads = {n: p.grad for n, p in encoder.named_parameters()}
            assert enc_grads["subsampling.conv1.weight"] is not None
            assert enc_grads["subsampling.conv1.weight"].abs().sum() > 0
            last = [n for n in enc_grads if n.startswith(("layers.1.", "lstm.", "out."))]
            assert last and all(enc_grads[n] is not None for n in last)
            assert sum(float(enc_grads[n].abs().sum()) for n in last) > 0
            for n, p in loss_fn.named_parameters():
                assert p.grad is not None, f"η parameter {n} got no gradient"
            for n in head_params:
                assert dict(loss_fn.named_parameters())[n].grad.abs().sum() > 0, n
        opt.step()
    for n in frozen:
        assert torch.equal(buffers[n], frozen_before[n]), f"frozen buffer {n} changed"
        assert torch.equal(dict(loss_fn.named_buffers())[n], frozen_before[n])


def check_determinism(loss_fn, encoder, feats: Tensor, lens: Tensor) -> None:
    """Same generator seed: identical loss and gradients; another seed: another loss; global RNG untouched."""
    def once(seed):
        encoder.zero_grad(), loss_fn.zero_grad()
        state = torch.get_rng_state()
        loss_sum, count, stats = run_loss(loss_fn, encoder, feats, lens, seed)
        (loss_sum / count).backward()
        assert torch.equal(torch.get_rng_state(), state), "the loss drew from the global RNG"
        grads = [p.grad.clone() for p in list(encoder.parameters()) + list(loss_fn.parameters())]
        return loss_sum.item(), count.item(), stats, grads

    a, b, c = once(5), once(5), once(6)
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    assert all(torch.equal(x, y) for x, y in zip(a[3], b[3]))
    assert a[0] != c[0]


def check_autocast(loss_fn, encoder, feats: Tensor, lens: Tensor) -> None:
    """bf16 autocast (CPU here; CUDA in training) changes nothing in the contract."""
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss_sum, count, stats = run_loss(loss_fn, encoder, feats, lens)
    assert loss_sum.dtype == torch.float32 and torch.isfinite(loss_sum)
    (loss_sum / count).backward()
    ref, ref_count, _ = run_loss(loss_fn, encoder, feats, lens)
    assert count.item() == ref_count.item()
    assert abs(loss_sum.item() - ref.item()) < 0.1 * abs(ref.item()) + 1.0
