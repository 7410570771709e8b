"""The budget rules of ``bljust compare``: what "the same budget" means, and each method's share of it.

Two rules, chosen with ``--budget-rule``:

- ``passes``: every method makes the same number of forward/backward passes over batches of at
  most ``data.max_duration`` seconds of audio. A supervised, SSL, exploration or fine-tuning step is
  one pass; a joint step (JUST, BL-JUST) takes a labeled and an unlabeled batch and is two.
- ``labeled``: every method makes the same number of supervised updates on labeled batches (the
  papers' "equal supervised epochs"); each method's unlabeled work is what its design adds on top:
  PT+FT pre-trains, BL-JUST explores and takes an unlabeled batch per joint step, JUST one per step,
  PL decodes the unlabeled split.

Under both, inference (validation, PL's re-labeling) is not counted; its wall-clock is in the cost table.
The topline (``TOPLINE``: supervised training with the unlabeled utterances' transcripts too) gets
supervised's share, and BL-JUST's ablations (``ABLATIONS``) BL-JUST's.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from bljust.config import Config, apply_overrides, config_from_dict, to_dict
from bljust.methods import METHOD_NAMES

BUDGET_RULES = ("passes", "labeled")
"""The rule names, ``--budget-rule``'s choices; the first is the default."""

log = logging.getLogger("bljust.compare")

TOPLINE = "topline"
"""Compare's topline: supervised training on the labeled split plus the unlabeled split's utterances with their
transcripts (the corpus's ``unlabeled_text`` split), under the same budget: what transcribing everything buys."""
TOPLINE_SPLIT = "unlabeled_text"
"""The split of the unlabeled utterances with transcripts that the topline adds to ``data.labeled_splits``."""
ABLATIONS: dict[str, tuple[str, ...]] = {
    "bljust-no-explore": ("bljust.explore_steps=0", "bljust.first_explore_steps=0"),
    # the budget whole outer epochs leave would otherwise become N3 again: it goes to joint steps instead
    "bljust-no-finetune": ("bljust.finetune_steps=0", "bljust.leftover=joint"),
    "bljust-const-gamma": ("bljust.gamma_schedule=constant",),
}
"""Compare's entries for BL-JUST's ablations (method.md §4): BL-JUST trained with these settings after the
comparison's own (so they win), under BL-JUST's share of the budget: N1 = 0, N3 = 0, and γ = γ_max from the
first joint step. Run only when named in ``--methods``."""

RULE_TITLES = {"passes": "equal batch passes", "labeled": "equal labeled updates"}
RULE_UNITS = {"passes": "batch_passes", "labeled": "labeled_updates"}
"""What the budget counts under each rule (results.json's ``budget.unit``)."""

RULE_TEXTS = {
    "passes": ("equal batch passes: every method makes the same number of forward/backward passes over batches "
               "of at most {max_duration:g} s of audio; a supervised, SSL, exploration or fine-tuning step is one "
               "pass, a joint step (JUST, BL-JUST) is two (one labeled + one unlabeled batch). Inference "
               "(validation, PL's re-labeling) is not counted."),
    "labeled": ("equal labeled updates: every method makes the same number of supervised updates on labeled "
                "batches of at most {max_duration:g} s of audio (PL's pseudo-labeled batches included); the "
                "unlabeled work each design adds comes on top: PT+FT's pre-training steps (at its configured "
                "pre-training : fine-tuning ratio), BL-JUST's exploration steps and one unlabeled batch per "
                "joint step, JUST's one unlabeled batch per step, PL's decoding. Inference (validation, PL's "
                "re-labeling) is not counted."),
}


def check_rule(rule: str) -> str:
    if rule not in BUDGET_RULES:
        raise ValueError(f"unknown budget rule '{rule}'; choose from {', '.join(BUDGET_RULES)}")
    return rule


def rule_text(rule: str, max_duration: float) -> str:
    return RULE_TEXTS[check_rule(rule)].format(max_duration=max_duration)


def stream_batches(cfg: Config, data: Path, seed: int | None = None) -> tuple[int, int]:
    """Batches in one pass of the labeled and of the unlabeled stream of a run with ``seed`` (default
    ``train.seed``), as the training ``Run`` builds them: the labeled split with its speed-perturbed
    copies (the union of ``data.labeled_splits``), the unlabeled split less the held-out utterances, both
    through the duration filter.

    The label-length filter (which needs the tokenizer) is not applied, so this can over-count by
    the few labeled cuts it drops. Under ``data.lazy`` the splits stream through the filter into a
    temporary file, as the run's do (``write_lazy_split``), so no split is held.
    """
    from bljust.data.loader import BatchStream, UtteranceFilter, hold_out, speed_perturbed, write_lazy_split
    from bljust.data.manifests import load_split
    from bljust.engine.run import load_labeled

    d = cfg.data
    seed = cfg.train.seed if seed is None else seed
    limits = {"min_seconds": d.min_utterance_seconds, "max_seconds": min(d.max_utterance_seconds, d.max_duration)}

    def usable(cuts):
        return cuts.filter(lambda c: limits["min_seconds"] <= c.duration <= limits["max_seconds"]).to_eager()

    def count(cuts, offset: int) -> int:  # the runs' seed offsets: labeled 0, unlabeled 1
        return BatchStream(cuts, "labeled" if offset == 0 else "unlabeled", max_duration=d.max_duration,
                           num_buckets=d.num_buckets, seed=seed + offset, buffer_size=d.buffer_size).batches_per_epoch()

    labeled = load_labeled(data, d.labeled_splits, lazy=d.lazy)
    if d.speed_perturb:  # before the filter, as in training: a slowed copy can outgrow the limit
        labeled = speed_perturbed(labeled, d.speed_perturb)
    if d.lazy:
        with tempfile.TemporaryDirectory(prefix="bljust-budget-") as tmp:
            labeled = write_lazy_split(labeled, Path(tmp) / "labeled.jsonl.gz", UtteranceFilter("labeled", **limits))
            unlabeled = write_lazy_split(load_split(data, "unlabeled", lazy=True), Path(tmp) / "unlabeled.jsonl.gz",
                                         UtteranceFilter("unlabeled", **limits),
                                         heldout_fraction=d.heldout_unlabeled_fraction,
                                         heldout_max_seconds=d.heldout_unlabeled_max_seconds)
            return count(labeled.cuts, 0), count(unlabeled.cuts, 1)
    unlabeled, _ = hold_out(usable(load_split(data, "unlabeled")), d.heldout_unlabeled_fraction,
                            d.heldout_unlabeled_max_seconds)
    return count(usable(labeled), 0), count(unlabeled, 1)


def train_method(method: str) -> str:
    """The training method a comparison entry runs: the topline is supervised training on more labels, an
    ablation is BL-JUST."""
    return "supervised" if method == TOPLINE else "bljust" if method in ABLATIONS else method


def ptft_pretrain_steps(cfg: Config, budget: int) -> int:
    """PT+FT's pre-training steps beside ``budget`` fine-tuning steps under the labeled rule:
    ``ptft.pretrain_steps`` when set, else the pre-training : fine-tuning ratio of ``pretrain_fraction``."""
    p = cfg.ptft
    if p.pretrain_steps is not None:
        return p.pretrain_steps
    return round(p.pretrain_fraction / (1 - p.pretrain_fraction) * budget)


def method_settings(method: str, cfg: Config, budget: int, labeled_batches: int, unlabeled_batches: int,
                    rule: str = "passes") -> tuple[list[str], int]:
    """The ``--set`` overrides that give ``method`` its share of ``budget`` under ``rule``, and the run's
    number of optimiser steps. ``labeled_batches`` and ``unlabeled_batches`` (one pass of each stream,
    see ``stream_batches``) are read by BL-JUST's plan only.

    BL-JUST's plan is resolved here (``make_plan`` in the rule's unit) and pinned in full, so the
    job's own ``make_plan`` (in steps, over ``train.max_steps``) reproduces it whatever its streams.
    """
    check_rule(rule)
    if budget < 1:
        raise ValueError(f"the budget must be at least 1, not {budget}")
    if method == TOPLINE:
        splits = list(dict.fromkeys([*cfg.data.labeled_splits, TOPLINE_SPLIT]))
        settings, steps = method_settings("supervised", cfg, budget, labeled_batches, unlabeled_batches, rule)
        return [*settings, f"data.labeled_splits={json.dumps(splits)}"], steps
    if method in ABLATIONS:  # BL-JUST planned with the ablation's settings, which come last in the job's too
        ablated = config_from_dict(apply_overrides(to_dict(cfg), list(ABLATIONS[method])))
        if to_dict(ablated) == to_dict(cfg):  # e.g. recipes/demo.yaml's BL-JUST has N1 = 0 already
            log.warning("%s: the config's BL-JUST has %s already; this entry trains the same run as bljust", method,
                        " and ".join(ABLATIONS[method]))
        settings, steps = bljust_settings(ablated, budget, labeled_batches, unlabeled_batches, rule)
        return [*settings, *ABLATIONS[method]], steps
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(METHOD_NAMES)}")
    if method in ("supervised", "pl"):  # one labeled (or pseudo-labeled) batch and one pass per step
        return [f"train.max_steps={budget}"], budget
    if method == "just":  # one labeled and one unlabeled batch per step
        steps = budget // 2 if rule == "passes" else budget
        if steps < 1:
            raise ValueError(f"just: a budget of {budget} batch passes holds no joint step (two passes)")
        return [f"train.max_steps={steps}"], steps
    if method == "ptft":
        if rule == "passes":  # pre-training and fine-tuning share the budget (ptft.pretrain_*)
            return [f"train.max_steps={budget}"], budget
        n_pt = ptft_pretrain_steps(cfg, budget)
        return [f"ptft.pretrain_steps={n_pt}", f"train.max_steps={budget + n_pt}"], budget + n_pt
    return bljust_settings(cfg, budget, labeled_batches, unlabeled_batches, rule)


def bljust_settings(cfg: Config, budget: int, labeled_batches: int, unlabeled_batches: int,
                    rule: str) -> tuple[list[str], int]:
    from bljust.methods.bljust import UNITS, make_plan, plan_cost

    unit = "passes" if rule == "passes" else "labeled"
    plan = make_plan(cfg.bljust, budget, labeled_batches, unlabeled_batches, unit=unit)
    # exact, but for the odd pass that no joint step fits when the leftover goes to joint steps (make_plan)
    spare = UNITS[unit][1] if cfg.bljust.leftover == "joint" else 1
    if plan.finetune < 0 or not 0 <= budget - plan_cost(plan, unit) < spare:
        raise ValueError(f"bljust: the plan {plan} spends {plan_cost(plan, unit)} {unit}, not the budget of "
                         f"{budget}")
    if plan.note:
        log.warning("bljust: %s", plan.note)
    return ([f"bljust.outer_epochs={plan.outer_epochs}", f"bljust.explore_steps={plan.explore}",
             f"bljust.first_explore_steps={plan.explore_0}", f"bljust.joint_steps={plan.joint}",
             f"bljust.finetune_steps={plan.finetune}", f"train.max_steps={plan.total}"], plan.total)


def supervised_updates(run: dict) -> int:
    """A finished run's updates on labeled batches (results.json's run record): PL's pseudo-labeled
    batches count, as every one of its steps is a supervised update."""
    return run["steps"] if run["method"] == "pl" else run["labeled_batches"]


def spent(run: dict, rule: str) -> int:
    """What a finished run spent in the unit of ``rule``."""
    return run["batch_passes"] if check_rule(rule) == "passes" else supervised_updates(run)
