"""The budget rules without training: each method's share, BL-JUST's plan and its ablations, and the
batches a pass holds."""

from __future__ import annotations

import pytest

from bljust.compare.budget import ABLATIONS, BUDGET_RULES, method_settings, stream_batches, train_method
from bljust.config import load_config
from bljust.methods import METHOD_NAMES
from bljust.methods.bljust import make_plan, plan_cost
from tests.compare.conftest import DEMO
from tests.conftest import TINY


@pytest.mark.parametrize("budget", [1000, 4])
@pytest.mark.parametrize("rule", BUDGET_RULES)
def test_every_method_gets_its_share_of_the_budget(rule, budget):
    """On the demo config with its realistic stream sizes (40 labeled, 145 unlabeled batches a pass)."""
    cfg = load_config(DEMO)
    shares = {m: method_settings(m, cfg, budget, 40, 145, rule) for m in METHOD_NAMES}
    for method, (settings, steps) in shares.items():
        assert load_config(DEMO, settings).train.max_steps == steps
    assert shares["supervised"] == shares["pl"] == ([f"train.max_steps={budget}"], budget)
    if rule == "passes":
        assert shares["ptft"] == ([f"train.max_steps={budget}"], budget)
        assert shares["just"] == ([f"train.max_steps={budget // 2}"], budget // 2)
    else:  # PT+FT fine-tunes for the budget after pre-training at its configured ratio (0.2 : 0.8)
        n_pt = round(0.2 / 0.8 * budget)
        assert shares["ptft"] == ([f"ptft.pretrain_steps={n_pt}", f"train.max_steps={budget + n_pt}"], budget + n_pt)
        assert shares["just"] == ([f"train.max_steps={budget}"], budget)
        pinned = load_config(DEMO, ["ptft.pretrain_steps=7"])
        assert method_settings("ptft", pinned, budget, 40, 145, rule)[0][0] == "ptft.pretrain_steps=7"


@pytest.mark.parametrize("budget", [1000, 4])
@pytest.mark.parametrize("rule", BUDGET_RULES)
@pytest.mark.parametrize("first", [None, 200])
def test_bljust_plan_spends_the_budget_exactly_and_the_job_reproduces_it(rule, budget, first):
    unit = rule  # BL-JUST plans in the rule's unit (bljust.methods.bljust.UNITS)
    cfg = load_config(DEMO, [f"bljust.first_explore_steps={first if first is not None else 'null'}",
                             f"bljust.explore_steps={0 if first is None else 10}"])
    planned = make_plan(cfg.bljust, budget, 40, 145, unit=unit)
    assert plan_cost(planned, unit) == budget and planned.finetune >= 0  # never over, nothing left unspent
    settings, steps = method_settings("bljust", cfg, budget, 40, 145, rule)
    job_cfg = load_config(DEMO, settings)
    assert steps == job_cfg.train.max_steps == planned.total
    for lab, unl in ((40, 145), (7, 9)):  # the job's own streams do not matter: the plan is pinned
        job_plan = make_plan(job_cfg.bljust, job_cfg.train.max_steps, lab, unl)
        assert (job_plan.outer_epochs, job_plan.explore, job_plan.explore_0, job_plan.joint, job_plan.finetune,
                job_plan.total) == (planned.outer_epochs, planned.explore, planned.explore_0, planned.joint,
                                    planned.finetune, planned.total)
        assert plan_cost(job_plan, unit) == budget


def test_a_bljust_plan_that_cannot_fit_is_an_error():
    cfg = load_config(DEMO, ["bljust.outer_epochs=20"])
    for rule in BUDGET_RULES:
        with pytest.raises(ValueError, match="exceed the budget"):
            method_settings("bljust", cfg, 50, 40, 145, rule)
    with pytest.raises(ValueError, match="no joint step"):
        method_settings("just", cfg, 1, 40, 145, "passes")
    with pytest.raises(ValueError, match="unknown budget rule"):
        method_settings("supervised", cfg, 50, 40, 145, "epochs")


# ------------------------------------------------------------------ BL-JUST's ablations, without training


@pytest.mark.parametrize("budget", [1000, 1001])
@pytest.mark.parametrize("rule", BUDGET_RULES)
def test_an_ablation_is_bljust_with_its_settings_after_the_comparisons_and_bljusts_share(rule, budget):
    """On the demo config with the comparison's own --set, which each ablation's settings override."""
    overrides = ["bljust.explore_steps=3", "bljust.first_explore_steps=5", "bljust.finetune_steps=100",
                 "bljust.gamma_schedule=cosine"]
    cfg = load_config(DEMO, overrides)
    bljust, _ = method_settings("bljust", cfg, budget, 40, 145, rule)
    plans = {}
    for ablation, own in ABLATIONS.items():
        assert train_method(ablation) == "bljust"
        settings, steps = method_settings(ablation, cfg, budget, 40, 145, rule)
        assert settings[-len(own):] == list(own)  # last: they win over the pinned plan and the comparison's --set
        job = load_config(DEMO, [*overrides, *settings])  # the job reads config.yaml, then its settings
        plan = plans[ablation] = make_plan(job.bljust, job.train.max_steps, 7, 9)  # its own plan, in steps
        assert steps == job.train.max_steps == plan.total
        odd = 1 if rule == "passes" and ablation == "bljust-no-finetune" else 0  # a pass no joint step fits
        assert budget - odd <= plan_cost(plan, rule) <= budget
    assert plans["bljust-no-explore"].explore_total == 0 and plans["bljust-no-explore"].finetune >= 100
    no_ft = plans["bljust-no-finetune"]
    assert no_ft.finetune == 0 and no_ft.explore == 3 and no_ft.explore_0 == 5 and no_ft.joint_last > no_ft.joint
    assert plan_cost(no_ft, rule) == budget - (budget % 2 if rule == "passes" else 0)
    # constant γ changes no step count: BL-JUST's own plan, then the schedule
    assert method_settings("bljust-const-gamma", cfg, budget, 40, 145, rule)[0] == [
        *bljust, "bljust.gamma_schedule=constant"]


def test_an_ablation_the_config_already_has_is_flagged(caplog):
    with caplog.at_level("WARNING", logger="bljust.compare"):
        method_settings("bljust-no-explore", load_config(DEMO), 1000, 40, 145)  # the demo's BL-JUST has N1 = 0
    assert "trains the same run as bljust" in caplog.text


def test_stream_batches_counts_what_the_training_run_batches(tiny_corpus, tmp_path):
    """With speed perturbation, the held-out unlabeled utterances and the job's seed, as ``Run`` does."""
    from bljust.engine.run import Run

    cfg = load_config(TINY, ["data.speed_perturb=[0.9,1.1]", "data.heldout_unlabeled_fraction=0.3"])
    plain = stream_batches(load_config(TINY, ["data.heldout_unlabeled_fraction=0"]), tiny_corpus)
    for seed in (0, 1):
        seeded = load_config(TINY, ["data.speed_perturb=[0.9,1.1]", "data.heldout_unlabeled_fraction=0.3",
                                    f"train.seed={seed}"])
        run = Run(seeded, tiny_corpus, tmp_path / f"seed{seed}", method="bljust", ssl=True)
        try:
            expected = (run.add_stream("labeled", run.labeled).batches_per_epoch(),
                        run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1).batches_per_epoch())
        finally:
            run.close()
        assert stream_batches(cfg, tiny_corpus, seed) == expected
    counted = stream_batches(cfg, tiny_corpus, 0)
    assert counted[0] > plain[0] and counted[1] <= plain[1]
