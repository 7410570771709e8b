"""BL-JUST: the joint step's gradients, the γ schedules, the phase plan, and the loop end to end."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from lhotse import CutSet

from bljust.checkpoint import load
from bljust.config import BLJustConfig, OptimConfig, load_config
from bljust.engine.dist import Dist
from bljust.engine.objectives import Objectives, f_objective, penalised_gradients
from bljust.engine.optim import build_optimizer, clip_groups, lr_factor
from bljust.methods import bljust
from bljust.methods.bljust import UNITS, GradNorms, Plan, gamma_at, learning_rate, make_plan, penalty_weights, plan_cost
from bljust.models.asr import ASRModel
from tests.conftest import TINY

CPU = torch.device("cpu")


def _setup(loss: str = "bestrq"):
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.dropout=0.0", f"ssl.loss={loss}", "ssl.mask_prob=0.1", "ssl.mask_span=5"])
    model = ASRModel(cfg, 30, ssl=True)
    g = torch.Generator().manual_seed(1)
    lf, uf = torch.randn(2, 200, 80, generator=g), torch.randn(3, 240, 80, generator=g)
    data = {"l": (lf, torch.tensor([200, 150])), "u": (uf, torch.tensor([240, 200, 180])),
            "targets": [[3, 4, 5, 6], [7, 8, 9]]}
    return cfg, model, data


def _f(model, data):
    return f_objective(Objectives(model), *data["l"], data["targets"], Dist(), CPU, amp=False)


def _g(model, data):
    loss_sum, count, _ = model.ssl(model.encoder, *data["u"], torch.Generator().manual_seed(7))
    return loss_sum / count


def _groups(model):
    return [g["params"] for g in model.param_groups(1e-3)]


def _joint(model, data, gamma, eta_weight=1.0, scale=1.0, g_factor=1.0):
    """A joint step's gradients as the methods set them: f's backward first, then g's graph."""
    theta, phi, eta = _groups(model)
    (scale * _f(model, data)).backward()
    with penalised_gradients(theta, eta, theta_weight=scale * gamma, eta_weight=eta_weight, f_scale=scale) as health:
        (g_factor * _g(model, data)).backward()
    return health


@pytest.mark.parametrize("loss", ["bestrq", "cpc", "wav2vec2"])
@pytest.mark.parametrize("gamma", [0.0, 0.7])
def test_joint_step_gradients_match_hand_computed(loss, gamma):
    cfg, model, data = _setup(loss)
    theta, phi, eta = _groups(model)
    health = _joint(model, data, gamma)
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
    # the health metrics are ∇θf's norm, γ·‖∇θg‖ and their cosine
    model.zero_grad(set_to_none=True)
    gf = torch.autograd.grad(_f(model, data), theta, allow_unused=True)
    gg = torch.autograd.grad(_g(model, data), theta, allow_unused=True)
    gf = torch.cat([torch.zeros(p.numel()) if x is None else x.reshape(-1) for p, x in zip(theta, gf)])
    gg = torch.cat([torch.zeros(p.numel()) if x is None else x.reshape(-1) for p, x in zip(theta, gg)])
    assert health["grad_f_norm"] == pytest.approx(float(gf.norm()), rel=1e-4)
    assert health["weighted_grad_g_norm"] == pytest.approx(gamma * float(gg.norm()), rel=1e-4)
    assert health["grad_cos"] == pytest.approx(float(torch.nn.functional.cosine_similarity(gf, gg, dim=0)), abs=1e-4)


def test_joint_step_with_zero_gamma_is_a_supervised_step():
    cfg, model, data = _setup()
    theta, phi, eta = _groups(model)
    _joint(model, data, 0.0)
    got = [p.grad.clone() for p in theta + phi]
    model.zero_grad(set_to_none=True)
    _f(model, data).backward()
    for p, g in zip(theta + phi, got):
        torch.testing.assert_close(g, p.grad if p.grad is not None else torch.zeros_like(p), atol=1e-7, rtol=1e-6)


def _step(model, cfg, lrs: dict[str, float]) -> None:
    """The optimiser step of Run.step on one process: drop idle groups' gradients, clip each group, step."""
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    groups = {}
    for group in opt.param_groups:
        group["lr"] = lrs.get(group["name"], 0.0)
        groups[group["name"]] = group["params"]
    clip_groups({n: groups[n] for n in lrs}, cfg.optim.clip_grad_norm)
    opt.step()


def test_clipping_per_group_keeps_theta_and_phi_independent_of_eta():
    """Scaling η's loss by 1000 changes η's step only; with one global clip it would shrink θ's and φ's
    (SGD: the update is proportional to the clipped gradient, so the test can see it)."""
    after = {}
    for factor in (1.0, 1000.0):
        cfg, model, data = _setup()
        cfg = load_config(TINY, ["model.dropout=0.0", "optim.name=sgd", "optim.clip_grad_norm=0.5",
                                 "optim.weight_decay=0.0"])
        theta, phi, eta = _groups(model)
        _joint(model, data, gamma=0.5, eta_weight=factor)
        norms = clip_groups({"eta": eta}, 0.0)
        assert float(norms["eta"]) > 0.5  # η's gradient is clipped in both cases
        _step(model, cfg, {"theta": 0.1, "phi": 0.1, "eta": 0.1})
        after[factor] = [p.detach().clone() for p in theta + phi]
    for a, b in zip(after[1.0], after[1000.0]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and a global clip would not have kept them (the premise of the test)
    cfg, model, data = _setup()
    theta, phi, eta = _groups(model)
    _joint(model, data, gamma=0.5, eta_weight=1000.0)
    before = [p.grad.clone() for p in theta + phi]
    torch.nn.utils.clip_grad_norm_(theta + phi + eta, 0.5)
    assert any(not torch.allclose(a, p.grad) for a, p in zip(before, theta + phi))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_sgd_pbgd_joint_step_matches_a_hand_computed_update(gamma):
    """PBGD as published: plain (momentum) SGD along the penalised gradient scaled by min(1, 1/γ):
    θ -= α s (∇f + γ∇g), φ -= α s ∇f, η -= α s γ ∇g with s = min(1, 1/γ)."""
    alpha = 0.05
    cfg = load_config(TINY, ["model.dropout=0.0", "optim.name=sgd", "optim.clip_grad_norm=0", "optim.weight_decay=0"])
    _, model, data = _setup()
    theta, phi, eta = _groups(model)
    start = [p.detach().clone() for p in theta + phi + eta]
    # the hand computation: ∇f and ∇g by plain backward passes
    model.zero_grad(set_to_none=True)
    _f(model, data).backward()
    grad_f = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in theta + phi + eta]
    model.zero_grad(set_to_none=True)
    _g(model, data).backward()
    grad_g = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in theta + phi + eta]
    model.zero_grad(set_to_none=True)
    s = min(1.0, 1.0 / gamma)
    n_theta, n_phi = len(theta), len(phi)
    expected = []
    for idx, (p0, a, b) in enumerate(zip(start, grad_f, grad_g)):
        if idx < n_theta:
            expected.append(p0 - alpha * s * (a + gamma * b))
        elif idx < n_theta + n_phi:
            expected.append(p0 - alpha * s * a)
        else:
            expected.append(p0 - alpha * s * gamma * b)
    # what BL-JUST does
    scale, eta_weight = penalty_weights(gamma, pbgd=True)
    _joint(model, data, gamma, eta_weight=eta_weight, scale=scale)
    _step(model, cfg, {"theta": alpha, "phi": alpha, "eta": alpha})
    for p, e in zip(theta + phi + eta, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-6, rtol=1e-5)
    assert penalty_weights(gamma, pbgd=False) == (1.0, 1.0)


def test_gamma_schedules_keep_their_promises():
    J = 11  # joint steps in the run
    lin = BLJustConfig(gamma_schedule="linear", gamma_0=0.1, gamma_max=2.0, ramp_fraction=0.5)
    values = [gamma_at(lin, j, J) for j in range(J)]
    assert values[0] == pytest.approx(0.1)
    ramp = 0.5 * J  # γ_max from ramp_fraction of the joint steps on
    assert all(v == pytest.approx(2.0) for j, v in enumerate(values) if j >= ramp)
    assert all(a < b for a, b in zip(values[:6], values[1:6]))
    assert values[2] == pytest.approx(0.1 + 1.9 * 2 / ramp)

    cos = BLJustConfig(gamma_schedule="cosine", gamma_max=1.0, ramp_fraction=1.0)
    c = [gamma_at(cos, j, 10) for j in range(11)]
    assert c[0] == 0.0 and c[10] == pytest.approx(1.0) and c[5] == pytest.approx(0.5)

    step = BLJustConfig(gamma_schedule="step", gamma_max=1.0, ramp_fraction=1.0, gamma_stairs=2)
    s = [gamma_at(step, j, 10) for j in range(11)]
    assert set(s) == {0.0, 0.5, 1.0} and s[-1] == 1.0 and s[4] == 0.0 and s[5] == 0.5

    const = BLJustConfig(gamma_schedule="constant", gamma_max=0.3)
    assert {gamma_at(const, j, J) for j in range(J)} == {0.3}


def test_auto_gamma_is_the_ramped_target_share_over_the_gradient_norm_ratio_capped_at_gamma_max():
    auto = BLJustConfig(gamma_schedule="auto", auto_ratio=0.5, ramp_fraction=0.5, gamma_max=3.0, gamma_0=0.0)
    norms = GradNorms(f=2.0, g=0.5)  # ‖∇θf‖ / ‖∇θg‖ = 4
    assert gamma_at(auto, 3, 10, GradNorms()) == 0.0  # nothing measured yet: γ_0
    assert gamma_at(auto, 0, 10, norms) == 0.0
    assert gamma_at(auto, 1, 10, norms) == pytest.approx(0.5 * 1 / 5 * 4)
    assert gamma_at(auto, 9, 10, norms) == 2.0  # ramped: ‖γ∇θg‖ = 0.5 ‖∇θf‖
    assert gamma_at(auto, 9, 10, GradNorms(f=2.0, g=0.1)) == 3.0  # γ_max caps it
    running = GradNorms()
    for f, g in ((1.0, 1.0), (3.0, 1.0), (float("nan"), 5.0)):
        running.update(f, g, decay=0.5)
    assert (running.f, running.g) == (2.0, 1.0)  # a non-finite step is left out


def test_an_auto_gamma_run_holds_the_penalty_share_near_its_target(tiny_corpus, tmp_path):
    summary, train = train_rows(tiny_corpus, tmp_path, [
        # logging every other step: the other steps measure the norms that set γ all the same
        "train.max_steps=28", "train.log_every=2", "bljust.outer_epochs=1", "bljust.explore_steps=2",
        "bljust.joint_steps=24", "bljust.finetune_steps=2", "bljust.gamma_schedule=auto", "bljust.auto_ratio=0.5",
        "bljust.ramp_fraction=0.25", "bljust.auto_decay=0.5", "bljust.gamma_max=1000"])
    joint = [r for r in train if r["phase"] == "joint"]
    assert len(joint) == 12 and len({r["gamma"] for r in joint}) == 12  # set anew every step
    shares = [r["weighted_grad_g_norm"] / r["grad_f_norm"] for r in joint[3:]]  # ramped from the 6th joint step on
    assert 0.25 < statistics.median(shares) < 1.0, shares
    plan = next(json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"plan"' in x)
    assert "γ: auto, ‖γ∇θg‖ / ‖∇θf‖ ramped 0 → 0.5 by 25% of the joint steps, γ ≤ 1000" in plan["text"]


@pytest.mark.parametrize("outer_epochs", [1, 2, 7])
def test_gamma_ramps_through_the_joint_steps_for_any_number_of_outer_epochs(outer_epochs):
    """γ follows the joint steps, not the outer epochs: with K = 1 it still rises to γ_max, reaching it
    at ramp_fraction of the run's joint steps."""
    b = BLJustConfig(gamma_schedule="linear", gamma_max=0.8, ramp_fraction=0.5, outer_epochs=outer_epochs,
                     explore_steps=2, joint_steps=12, finetune_steps=3)
    plan = make_plan(b, 10_000, 12, 40)
    assert plan.outer_epochs == outer_epochs
    gammas = [gamma_at(b, plan.joint_index(k, i), plan.joint_total)
              for s in range(plan.total) if (loc := plan.locate(s))[0] == "joint" for k, i in [loc[1:]]]
    assert len(gammas) == plan.joint_total == 12 * outer_epochs
    assert gammas[0] == 0.0 and gammas[-1] == pytest.approx(0.8)
    reach = next(j for j, g in enumerate(gammas) if g == pytest.approx(0.8))
    assert reach == math.ceil(0.5 * plan.joint_total)
    assert all(a < b for a, b in zip(gammas[:reach], gammas[1:reach + 1]))  # strictly rising until then


@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize("budget", [4, 7, 60, 1000, 20_000, 100_000])
@pytest.mark.parametrize("sizes", [(40, 145), (6000, 51000), (1, 3)])
def test_a_plan_spends_its_budget_exactly_and_never_more(unit, budget, sizes):
    for b in (BLJustConfig(), BLJustConfig(explore_steps=1, joint_steps=2), BLJustConfig(first_explore_steps=200),
              BLJustConfig(explore_steps=0, first_explore_steps=0, joint_steps=34, finetune_steps=500)):
        if UNITS[unit][1] > budget:
            continue
        plan = make_plan(b, budget, *sizes, unit=unit)
        assert plan.outer_epochs >= 1 and plan.joint >= 1 and plan.finetune >= 0
        assert plan_cost(plan, unit) == budget, (b, plan)
        if plan_cost(Plan(1, b.explore_steps or 0, 1, 0, plan.first_explore), unit) <= budget and not plan.note:
            assert plan.finetune >= (b.finetune_steps if b.finetune_steps is not None else 0)


def test_plan_resolves_defaults_and_locates_steps():
    plan = make_plan(BLJustConfig(explore_fraction=0.25, finetune_fraction=0.1), 100, labeled_batches=8,
                     unlabeled_batches=40)
    assert (plan.explore, plan.joint) == (10, 8)
    assert plan.outer_epochs == (100 - 10) // 18 and plan.total == 100 and plan.finetune == 100 - 5 * 18
    p = Plan(outer_epochs=2, explore=2, joint=3, finetune=2)
    phases = [p.locate(s)[0] for s in range(p.total)]
    assert phases == ["explore"] * 2 + ["joint"] * 3 + ["explore"] * 2 + ["joint"] * 3 + ["finetune"] * 2
    assert Plan(1, 0, 3, 0).locate(2) == ("joint", 0, 2)  # ablation: no exploration


def test_plans_at_librispeech_scale_ramp_and_fit():
    """The review's case: 100 h labeled, 860 h unlabeled at 60 s batches and the default config give K = 1
    below ~50 k steps; the plan still spends exactly the budget and γ still reaches γ_max."""
    b = BLJustConfig()
    for budget in (20_000, 100_000):
        plan = make_plan(b, budget, 6000, 51000)
        assert plan.total == budget
        gammas = [gamma_at(b, j, plan.joint_total) for j in range(plan.joint_total)]
        assert gammas[0] == 0.0 and gammas[-1] == b.gamma_max
    assert make_plan(b, 20_000, 6000, 51000).outer_epochs == 1


def test_a_plan_too_small_for_one_epoch_shrinks_it_and_a_pinned_one_is_refused():
    plan = make_plan(BLJustConfig(explore_steps=1, joint_steps=2), 4, 5, 4, unit="passes")  # tiny.yaml, budget 4
    assert (plan.outer_epochs, plan.explore, plan.joint, plan.finetune) == (1, 1, 1, 1) and plan.note
    assert plan_cost(plan, "passes") == 4
    with pytest.raises(ValueError, match="exceed the budget"):
        make_plan(BLJustConfig(outer_epochs=3, explore_steps=1, joint_steps=2), 8, 5, 4, unit="passes")


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
    assert [r["gamma"] for r in joint] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0])  # ramp: half of 6
    for key in ("f", "g", "grad_f_norm", "weighted_grad_g_norm", "grad_cos", "penalty_gap", "grad_norm_theta",
                "grad_norm_phi", "grad_norm_eta"):
        assert all(key in r for r in joint), key
    assert all("grad_norm_phi" not in r and "grad_norm_eta" in r for r in train if r["phase"] == "explore")
    assert all("grad_norm_eta" not in r and "grad_norm_phi" in r for r in train if r["phase"] == "finetune")
    assert summary["steps"] == 12 and summary["unlabeled_batches"] == 4 + 6


def test_warm_start_run_logs_its_phases_in_order(tiny_corpus, tmp_path):
    """The demo's shape: a warm start on g, then joint steps only (N1 = 0), then fine-tuning."""
    summary, train = train_rows(tiny_corpus, tmp_path, ["train.max_steps=9", "bljust.first_explore_steps=3",
                                                        "bljust.explore_steps=0",
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
                     100, labeled_batches=8, unlabeled_batches=40)
    assert (plan.outer_epochs, plan.explore_0, plan.total, plan.finetune) == (6, 30, 100, 10)  # N3 5 + remainder 5
    assert Plan(2, 2, 3, 2) == Plan(2, 2, 3, 2, None) and Plan(2, 2, 3, 2).total == 12  # old plans unchanged
    o = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    lrs = [learning_rate(BLJustConfig(rho=1.0), o, p, s) for s in (0, 6, 10)]
    assert lrs[0] == pytest.approx(1.0) and lrs[1] == pytest.approx(lr_factor(4, 6, 0, "cosine", 0.0))


@pytest.mark.parametrize("unit", sorted(UNITS))
@pytest.mark.parametrize("budget", [20, 61, 1001])
def test_leftover_to_joint_steps_keeps_n3_and_fills_the_budget_with_the_last_epoch(unit, budget):
    """The N3 = 0 ablation: what the whole outer epochs leave goes to the last epoch's joint steps, not to N3
    (which would bring the final fine-tuning back); in batch passes an odd pass may stay unspent."""
    for first, n3 in ((None, 0), (4, 0), (None, 3)):
        b = BLJustConfig(explore_steps=2, first_explore_steps=first, joint_steps=5, finetune_steps=n3,
                         leftover="joint")
        plan = make_plan(b, budget, 40, 145, unit=unit)
        assert plan.finetune == n3 and plan.joint_last >= plan.joint
        assert 0 <= budget - plan_cost(plan, unit) < UNITS[unit][1], plan
        default = make_plan(BLJustConfig(explore_steps=2, first_explore_steps=first, joint_steps=5,
                                         finetune_steps=n3), budget, 40, 145, unit=unit)
        assert plan.outer_epochs == default.outer_epochs and default.finetune >= n3  # the leftover went to N3 there
        phases = [plan.locate(s) for s in range(plan.total)]
        assert sum(ph == "finetune" for ph, _, _ in phases) == n3
        joint = [plan.joint_index(k, i) for ph, k, i in phases if ph == "joint"]
        assert joint == list(range(plan.joint_total))  # γ's and the lr's counter run through the longer epoch
        assert [k for ph, k, _ in phases if ph != "finetune"][-1] == plan.outer_epochs - 1


def test_a_longer_last_epoch_is_located_step_by_step():
    p = Plan(outer_epochs=2, explore=2, joint=3, finetune=0, last_joint=5)
    assert p.total == 12 and p.joint_total == 8 and p.explore_total == 4
    assert [p.locate(s) for s in range(p.total)] == [
        ("explore", 0, 0), ("explore", 0, 1), ("joint", 0, 0), ("joint", 0, 1), ("joint", 0, 2),
        ("explore", 1, 0), ("explore", 1, 1), *[("joint", 1, i) for i in range(5)]]
    one = Plan(outer_epochs=1, explore=1, joint=2, finetune=1, last_joint=4)  # K = 1: the first epoch is the last
    assert [one.locate(s)[0] for s in range(one.total)] == ["explore"] + ["joint"] * 4 + ["finetune"]
    assert make_plan(BLJustConfig(explore_steps=2, joint_steps=3, finetune_steps=0), 12, 8, 40) == Plan(2, 2, 3, 2)


def test_a_run_without_final_fine_tuning_logs_no_finetune_step(tiny_corpus, tmp_path):
    summary, train = train_rows(tiny_corpus, tmp_path, ["train.max_steps=9", "bljust.outer_epochs=2",
                                                        "bljust.explore_steps=1", "bljust.joint_steps=2",
                                                        "bljust.finetune_steps=0", "bljust.leftover=joint"])
    assert [r["phase"] for r in train] == ["explore", "joint", "joint", "explore"] + ["joint"] * 5
    assert (summary["last_joint_steps"], summary["finetune_steps"], summary["labeled_batches"]) == (5, 0, 7)
    # γ ramps over all 7 joint steps, the last epoch's longer phase included: γ_max from step 3.5 on
    assert [r["gamma"] for r in train if r["phase"] == "joint"] == pytest.approx([0, 2 / 7, 4 / 7, 6 / 7, 1, 1, 1])


@pytest.mark.parametrize("reset", [False, True])
def test_reset_optimizer_at_finetune(tiny_corpus, tmp_path, reset):
    """With the reset, fine-tuning starts from fresh Adam moments (step counts restart), as PT+FT's does."""
    settings = ["train.max_steps=9", "bljust.outer_epochs=2", "bljust.explore_steps=1", "bljust.joint_steps=2",
                "bljust.finetune_steps=3", f"bljust.reset_optimizer_at_finetune={str(reset).lower()}",
                "train.checkpoint_every=9"]
    train_rows(tiny_corpus, tmp_path, settings)
    state = load(tmp_path / "run" / "checkpoints" / "step-0000009.pt")["optimizer"]
    theta_ids = state["param_groups"][0]["params"]
    assert state["param_groups"][0]["name"] == "theta"
    steps = {int(state["state"][i]["step"]) for i in theta_ids if i in state["state"]}
    assert steps == ({3} if reset else {9})  # θ steps in every phase: 2 explore + 4 joint + 3 fine-tuning


def test_g_is_measured_on_held_out_unlabeled_audio_at_every_validation(tiny_corpus, tmp_path):
    from bljust.methods import supervised

    settings = ["train.max_steps=6", "bljust.outer_epochs=1", "bljust.explore_steps=1", "bljust.joint_steps=2",
                "train.valid_every=2"]
    bljust.train(load_config(TINY, settings), tiny_corpus, tmp_path / "bl")
    rows = [json.loads(x) for x in (tmp_path / "bl" / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r["kind"] == "dev"]
    assert [r["step"] for r in dev] == [2, 4, 6]
    assert all(math.isfinite(r["g_heldout"]) and r["penalty_gap_heldout"] >= 0 for r in dev)
    assert min(r["penalty_gap_heldout"] for r in dev) == 0.0
    supervised.train(load_config(TINY, ["train.max_steps=2", "train.valid_every=2"]), tiny_corpus, tmp_path / "sup")
    rows = [json.loads(x) for x in (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()]
    assert all("g_heldout" not in r for r in rows)


def test_held_out_unlabeled_utterances_are_fixed_and_never_trained_on(tiny_corpus):
    from bljust.data.loader import hold_out
    from bljust.data.manifests import load_split

    cuts = load_split(tiny_corpus, "unlabeled").to_eager()
    kept, held = hold_out(cuts, 0.2, 1e9)
    kept2, held2 = hold_out(CutSet.from_cuts(reversed(list(cuts))), 0.2, 1e9)  # order does not matter
    assert sorted(held.ids) == sorted(held2.ids) and len(held) >= 1
    assert not set(kept.ids) & set(held.ids) and len(kept) + len(held) == len(cuts)
    total = sum(c.duration for c in cuts)
    assert 0.2 * total <= sum(c.duration for c in held) < 0.2 * total + max(c.duration for c in cuts)
    assert len(hold_out(cuts, 0.2, 0.0)[1]) == 0 and len(hold_out(cuts, 0.0, 1e9)[1]) == 0


def test_broken_unlabeled_and_labeled_audio_never_reaches_a_joint_step(tiny_corpus, tmp_path):
    """Bad files in labeled, unlabeled (exploration, joint steps, held-out g) and dev: each skipped and counted
    once, no step lost to a non-finite loss."""
    from tests.broken import AUDIO_REASONS, make_broken_corpus

    make_broken_corpus(tiny_corpus, tmp_path / "data")
    cfg = load_config(TINY, ["train.max_steps=16", "train.valid_every=8"])
    summary = bljust.train(cfg, tmp_path / "data", tmp_path / "run")
    assert summary["bad_steps"] == 0 and summary["steps"] == 16 and summary["unlabeled_batches"] >= 10
    assert summary["skipped_audio"] == {reason: 3 for reason in AUDIO_REASONS.values()}


def test_health_of_a_step_accumulated_over_two_g_passes_is_that_of_one_pass():
    """With train.accum_steps g is back-propagated once per micro-batch: the health metrics read ∇f and sum
    θ's ∇g over the passes, so two passes of g/2 give the metrics of one pass of g."""
    health = {}
    for passes in (1, 2):
        cfg, model, data = _setup()
        theta, phi, eta = _groups(model)
        (0.5 * _f(model, data)).backward()
        with penalised_gradients(theta, eta, theta_weight=0.5 * 0.7, eta_weight=1.0, f_scale=0.5) as h:
            for _ in range(passes):
                (_g(model, data) / passes).backward()
        health[passes] = h
    for k in ("grad_f_norm", "weighted_grad_g_norm", "grad_cos"):
        assert health[2][k] == pytest.approx(health[1][k], rel=1e-4, abs=1e-6), k
