"""results.json's validation and what a run record says about the code that trained it."""

from __future__ import annotations

import json

import pytest

from bljust.compare.budget import ABLATIONS, spent
from bljust.compare.jobs import OPTIONAL_EVAL_SPLITS
from bljust.compare.results import RUN_KEYS, SCHEMA, validate_results
from tests.conftest import TINY


def _record(method: str, labeled_batches: int, steps: int) -> dict:
    """A run record of results.json, valid but for what the test sets."""
    rates = {"wer": 0.5, "cer": 0.3, "groups": {}}
    values = {int: 0, float: 0.0, str: "", list: [], dict: {}}
    return {**{key: values[tp] for key, tp in RUN_KEYS.items()}, "method": method, "budget_rule": "labeled",
            "budget": 40, "labeled_batches": labeled_batches, "steps": steps, "batch_passes": steps,
            "dev": rates, "test": rates}


def test_optional_splits_are_validated_like_test_when_present():
    run = _record("supervised", 40, 40)
    results = {"schema": SCHEMA, "data": "d", "corpus": {}, "methods": ["supervised"], "seeds": [0], "machine": {},
               "failed": [], "runs": [run],
               "budget": {"budget_rule": "labeled", "rule_text": "t", "unit": "labeled_updates", "value": 40}}
    validate_results(results)  # a record without them (an older one, or a corpus without them) is valid
    for split in OPTIONAL_EVAL_SPLITS:
        run[split] = {"wer": 0.5, "cer": 0.3, "groups": {}, "lm": {"wer": 0.4, "cer": 0.2, "lm_weight": 1.0,
                                                                    "word_score": 0.0}}
    validate_results(results)
    del run["test_other"]["lm"]["word_score"]
    with pytest.raises(ValueError, match=r"runs\[0\]\.test_other\.lm lacks 'word_score'"):
        validate_results(results)
    run["dev_other"]["cer"] = 12.0
    with pytest.raises(ValueError, match=r"runs\[0\]\.dev_other\.cer = 12.0 is not a rate"):
        validate_results(results)


def test_ablations_are_accounted_as_bljust_under_the_labeled_rule():
    """Supervised updates are the labeled batches, however many exploration steps came on top."""
    runs = [_record(m, 40, 70) for m in ("bljust", *ABLATIONS)]
    assert {spent(run, "labeled") for run in runs} == {40}
    results = {"schema": SCHEMA, "data": "d", "corpus": {}, "methods": ["bljust", *ABLATIONS], "seeds": [0],
               "machine": {}, "failed": [], "runs": runs,
               "budget": {"budget_rule": "labeled", "rule_text": "t", "unit": "labeled_updates", "value": 40}}
    validate_results(results)
    runs[-1]["labeled_batches"] = 39
    with pytest.raises(ValueError, match=r"runs\[3\] \(bljust-const-gamma\) made 39 supervised updates"):
        validate_results(results)


def test_a_run_record_names_the_code_it_started_training_with(tmp_path, monkeypatch):
    """The checkout can move on while a run trains (hours here): the record names the code of the process that
    trained, read before training, not the checkout's at the end."""
    import bljust.compare.results as results_module
    import bljust.evaluate as evaluate_module
    from bljust.compare.jobs import run_job
    from bljust.methods import METHODS

    state = {"trained": False}
    monkeypatch.setattr(results_module, "code_version",
                        lambda: {"version": "x", "commit": ("b" if state["trained"] else "a") * 40, "dirty": False})
    monkeypatch.setattr(results_module, "unlabeled_seconds", lambda data: 0.0)
    monkeypatch.setattr(results_module, "run_costs", lambda summary, budget, unlabeled: {"train_seconds": 1.0})
    monkeypatch.setattr(evaluate_module, "evaluate_run", lambda *a, **k: {"dev": {"cer": 0.5}})

    def train(cfg, data, run_dir, resume):
        state["trained"] = True  # a commit lands while the run trains
        run_dir.mkdir(parents=True)
        return {}

    monkeypatch.setitem(METHODS, "supervised", train)
    run_dir = tmp_path / "runs" / "supervised-seed0"
    spec = {"run_dir": str(run_dir), "data": str(tmp_path), "threads": 1, "config": str(TINY), "settings": [],
            "device": "cpu", "method": "supervised", "seed": 0, "key": "k", "budget": 10, "budget_rule": "passes"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert run_job(tmp_path / "spec.json") == 0
    record = json.loads((run_dir / "record.json").read_text())
    assert record["code"]["commit"] == "a" * 40
