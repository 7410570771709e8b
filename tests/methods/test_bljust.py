"""BL-JUST: the joint step's gradients, the γ schedules, the phase plan, and the loop end to end."""

from __future__ import annotations

import json

import pytest
import torch

from bljust.config import BLJustConfig, OptimConfig, load_config
from bljust.methods import bljust
from bljust.methods.bljust import Plan, gamma_at, learning_rate, make_plan
from bljust.methods.common import ctc_objective, joint_gradients
from bljust.models.asr import CTCModel
from bljust.training import Dist, lr_factor
from tests.conftest import TINY

CPU = torch.device("cpu")


def _setup(loss: str = "bestrq"):
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.dropout=0.0", f"ssl.loss={loss}", "ssl.mask_prob=0.1", "ssl.mask_span=5"])
    model = CTCModel(cfg, 30, ssl=True)
    g = torch.Generator().manual_seed(1)
    lf, uf = torch.randn(2, 200, 80, generator=g), torch.randn(3, 240, 80, generator=g)
    data = {"l": (lf, torch.tensor([200, 150])), "u": (uf, torch.tensor([240, 200, 180])),
            "targets": [[3, 4, 5, 6], [7, 8, 9]]}
    return cfg, model, data


def _f(model, data):
    return ctc_objective(model, *data["l"], data["targets"], Dist(), CPU, amp=False)


def _g(model, data):
    loss_sum, count, _ = model.ssl(model.encoder, *data["u"], torch.Generator().manual_seed(7))
    return loss_sum / count


def _groups(model):
    return [g["params"] for g in model.param_groups(1e-3)]


@pytest.mark.parametrize("loss", ["bestrq", "cpc", "wav2vec2"])
@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_joint_step_gradients_match_hand_computed(loss, gamma):
    cfg, model, data = _setup(loss)
    theta, phi, eta = _groups(model)
    joint_gradients(_f(model, data), _g(model, data), theta, phi, eta, weight=gamma, eta_weight=1.0)
    got = {id(p): p.grad.clone() for p in theta + phi + eta}

    # θ by the gradient of f + γ·g, φ by ∇f alone, η by ∇g alone (unscaled).
    model.zero_grad(set_to_none=True)
    (_f(model, data) + gamma * _g(model, data)).backward()
    for p in theta + phi:
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got[id(p)], ref, atol=1e-6, rtol=1e-5)
    model.zero_grad(set_to_none=True)
    _g(model, data).backward()
    for p in eta:
        ref = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got[id(p)], ref, atol=1e-6, rtol=1e-5)
    # φ never sees g, η never sees f.
    model.zero_grad(set_to_none=True)
    _g(model, data).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in phi)


def test_joint_step_with_zero_gamma_is_a_supervised_step():
    cfg, model, data = _setup()
    theta, phi, eta = _groups(model)
    joint_gradients(_f(model, data), _g(model, data), theta, phi, eta, weight=0.0, eta_weight=1.0)
    got = [p.grad.clone() for p in theta + phi]
    model.zero_grad(set_to_none=True)
    _f(model, data).backward()
    for p, g in zip(theta + phi, got):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(p), atol=1e-7, rtol=1e-6)


def test_gamma_schedules_keep_their_promises():
    K = 11
    lin = BLJustConfig(gamma_schedule="linear", gamma_0=0.1, gamma_max=2.0, ramp_fraction=0.5)
    values = [gamma_at(lin, k, K) for k in range(K)]
    assert values[0] == pytest.approx(0.1)
    assert values[5] == pytest.approx(2.0)  # reached at ramp_fraction of the epochs
    assert all(v == pytest.approx(2.0) for v in values[5:])
    assert all(a < b for a, b in zip(values[:5], values[1:6]))
    assert values[2] == pytest.approx(0.1 + 1.9 * 2 / 5)

    cos = BLJustConfig(gamma_schedule="cosine", gamma_max=1.0, ramp_fraction=1.0)
    c = [gamma_at(cos, k, K) for k in range(K)]
    assert c[0] == 0.0 and c[-1] == pytest.approx(1.0) and c[5] == pytest.approx(0.5)

    step = BLJustConfig(gamma_schedule="step", gamma_max=1.0, ramp_fraction=1.0, gamma_stairs=2)
    s = [gamma_at(step, k, K) for k in range(K)]
    assert set(s) == {0.0, 0.5, 1.0} and s[-1] == 1.0 and s[4] == 0.0 and s[5] == 0.5

    const = BLJustConfig(gamma_schedule="constant", gamma_max=0.3)
    assert {gamma_at(const, k, K) for k in range(K)} == {0.3}


def test_plan_resolves_defaults_and_locates_steps():
    plan = make_plan(BLJustConfig(explore_fraction=0.25, finetune_fraction=0.1), max_steps=100,
                     labeled_batches=8, unlabeled_batches=40)
    assert (plan.explore, plan.joint, plan.finetune) == (10, 8, 10)
    assert plan.outer_epochs == (100 - 10) // 18 and plan.total <= 100
    p = Plan(outer_epochs=2, explore=2, joint=3, finetune=2)
    phases = [p.locate(s)[0] for s in range(p.total)]
    assert phases == ["explore"] * 2 + ["joint"] * 3 + ["explore"] * 2 + ["joint"] * 3 + ["finetune"] * 2
    assert Plan(1, 0, 3, 0).locate(2) == ("joint", 0, 2)  # ablation: no exploration


def train_rows(tiny_corpus, tmp_path, settings: list[str]) -> tuple[dict, list[dict]]:
    """Train BL-JUST on the tiny corpus (no validation); its summary and the training rows of metrics.jsonl."""
    summary = bljust.train(load_config(TINY, [*settings, "train.valid_every=100"]), tiny_corpus, tmp_path / "run")
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if r["kind"] == "train"]


def test_phase_counts_in_the_metrics_log(tiny_corpus, tmp_path):
    summary, train = train_rows(tiny_corpus, tmp_path, ["train.max_steps=12", "bljust.explore_steps=2",
                                                        "bljust.joint_steps=3", "bljust.finetune_steps=2",
                                                        "bljust.outer_epochs=2"])
    phases = [r["phase"] for r in train]
    assert phases.count("explore") == 4 and phases.count("joint") == 6 and phases.count("finetune") == 2
    joint = [r for r in train if r["phase"] == "joint"]
    assert [r["gamma"] for r in joint] == [0.0] * 3 + [1.0] * 3
    for key in ("f", "g", "grad_f_norm", "weighted_grad_g_norm", "grad_cos", "penalty_gap"):
        assert all(key in r for r in joint), key
    assert summary["steps"] == 12 and summary["unlabeled_batches"] == 4 + 6


def test_warm_start_run_logs_its_phases_in_order(tiny_corpus, tmp_path):
    """The demo's shape: a warm start on g, then joint steps only (N1 = 0), then fine-tuning."""
    summary, train = train_rows(tiny_corpus, tmp_path, ["bljust.first_explore_steps=3", "bljust.explore_steps=0",
                                                        "bljust.joint_steps=2", "bljust.finetune_steps=2",
                                                        "bljust.outer_epochs=2"])
    assert [r["phase"] for r in train] == ["explore"] * 3 + ["joint"] * 4 + ["finetune"] * 2
    assert [r["outer_epoch"] for r in train if r["phase"] != "finetune"] == [0] * 5 + [1] * 2
    assert summary["steps"] == 9 and summary["unlabeled_batches"] == 3 + 4 and summary["labeled_batches"] == 4 + 2


def test_learning_rate_per_phase_and_global():
    o = OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.0)
    plan = Plan(outer_epochs=2, explore=2, joint=5, finetune=4)
    phase = BLJustConfig(rho=3.0, alpha=2.0, tau=1.0)
    lrs = [learning_rate(phase, o, plan, s) for s in range(plan.total)]
    # 'phase': exploration and joint steps warm up over their own step counters across the outer epochs.
    assert lrs[0] == pytest.approx(3.0 * 1 / 4) and lrs[7] == pytest.approx(3.0 * 3 / 4)
    assert lrs[2] == pytest.approx(2.0 * 1 / 4) and lrs[5] == pytest.approx(2.0 * 1.0)
    assert lrs[plan.total - 4] == pytest.approx(1.0)  # fine-tuning restarts (warm-up ≤ N3 // 10 = 0)
    glob = BLJustConfig(rho=3.0, alpha=2.0, tau=1.0, lr_schedule="global")
    lrs = [learning_rate(glob, o, plan, s) for s in range(plan.total)]
    factors = [lr_factor(s, plan.total, 4, "cosine", 0.0) for s in range(plan.total)]
    peaks = [{"explore": 3.0, "joint": 2.0, "finetune": 1.0}[plan.locate(s)[0]] for s in range(plan.total)]
    assert lrs == pytest.approx([p * f for p, f in zip(peaks, factors)])
    assert lrs[2] == pytest.approx(2.0 * 3 / 4)  # one warm-up for the run, whatever the phase
    assert lrs[-1] < 0.1 and all(a >= b for a, b in zip(factors[4:], factors[5:]))



def test_first_epoch_exploration_plan_and_lr_indexing():
    p = Plan(outer_epochs=3, explore=1, joint=2, finetune=2, first_explore=4)
    assert p.total == 4 + 2 + 2 * 3 + 2 and p.explore_total == 6
    phases = [p.locate(s) for s in range(p.total)]
    assert [x[0] for x in phases] == ["explore"] * 4 + ["joint"] * 2 + ["explore"] + ["joint"] * 2 + ["explore"] + \
        ["joint"] * 2 + ["finetune"] * 2
    assert phases[6] == ("explore", 1, 0) and phases[10] == ("joint", 2, 0) and phases[12] == ("finetune", 3, 0)
    assert [p.explore_index(k, i) for ph, k, i in phases if ph == "explore"] == list(range(6))
    # N1 = 0 after the first epoch; K resolved from the budget.
    plan = make_plan(BLJustConfig(explore_steps=0, first_explore_steps=30, joint_steps=10, finetune_steps=5),
                     max_steps=100, labeled_batches=8, unlabeled_batches=40)
    assert (plan.outer_epochs, plan.explore_0, plan.total) == (6, 30, 95)
    assert Plan(2, 2, 3, 2) == Plan(2, 2, 3, 2, None) and Plan(2, 2, 3, 2).total == 12  # old plans unchanged
    o = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    lrs = [learning_rate(BLJustConfig(rho=1.0), o, p, s) for s in (0, 6, 10)]
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(lr_factor(4, 6, 0, "cosine", 0.0))
