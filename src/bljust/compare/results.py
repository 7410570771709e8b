"""``results.json`` of ``bljust compare``: its schema and validator, and the numbers it is built from
(a run's costs, the corpus, the machine)."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable
from pathlib import Path

from bljust.compare.budget import ABLATIONS, BUDGET_RULES, TOPLINE, spent
from bljust.compare.jobs import EVAL_SPLITS, OPTIONAL_EVAL_SPLITS, RANDOM_INIT
from bljust.methods import METHOD_NAMES

SCHEMA = "bljust.compare/6"
"""/3 added the topline entry, the optional test_unseen scores and the linear probes; /4 BL-JUST's ablation
entries; /5 the optional dev_other and test_other scores; /6 the paired bootstrap intervals (``significance``,
see ``SIGNIFICANCE``)."""
SIGNIFICANCE = {"resamples": int, "level": float, "seed": int, "pooling": str, "scores": dict, "skipped": list}
"""results.json's ``significance`` (``bljust.compare.significance``): is each method's test error different from
PT+FT's and supervised training's? ``resamples`` draws of the test utterances (bootstrap seed ``seed``), intervals
at confidence ``level``, ``pooling`` the rule that pools seeds, in words.
``scores``: ``{score: {method: {reference: comparison}}}``, score ``test`` (decoded without the LM) or ``test_lm``
(with it), reference ``ptft`` or ``supervised`` (PT+FT itself only against supervised: no mirrored pair), present
when both ran and their hypotheses were read; a comparison is ``{"seeds": [...], "utterances": n, "wer": interval,
"cer": interval, "per_seed": [{"seed", "utterances", "wer", "cer"}, ...]}``, its top-level intervals those of the
seeds pooled; an interval ``{"diff", "low", "high"}``: method − reference in rates (fractions, as the runs' scores;
negative: the method made fewer errors), ``diff`` on every utterance and ``[low, high]`` the percentile interval.
``skipped``: ``[{"method", "seed", "score", "reason"}]``, runs left out for a hypothesis file missing, unreadable
or disagreeing with their record. Results of /5 and earlier lack it; the report then computes it from the runs'
hypothesis files.

Also optional at the top level: ``code``, the ``code_version()`` of the invocation that wrote the file."""

COST_KEYS = ("steps", "budget", "batch_passes", "labeled_batches", "unlabeled_batches", "train_seconds",
             "wall_seconds", "audio_hours", "labeled_hours", "unlabeled_hours", "labeled_passes", "unlabeled_passes",
             "parameters", "inference_parameters", "best_step")
"""A run record's training costs: kept when a run is only re-evaluated."""

TRAINED_ON_KEYS = ("processor", "precision")
"""Where a run trained, optional in a record (runs trained before they were recorded have none): kept when a run
is only re-evaluated. Train minutes compare only between runs with the same values."""

RUN_KEYS = {"method": str, "seed": int, "run_dir": str, "budget_rule": str, "settings": list, "steps": int,
            "budget": int, "batch_passes": int, "labeled_batches": int, "unlabeled_batches": int,
            "train_seconds": float, "wall_seconds": float, "audio_hours": float, "labeled_hours": float,
            "unlabeled_hours": float, "labeled_passes": float, "unlabeled_passes": float, "parameters": int,
            "inference_parameters": int, "best_step": int, "dev": dict, "test": dict}
"""Every run record's keys and types. ``train_seconds``: the training steps alone; ``wall_seconds``: the
training with its validation, checkpoints and PL's decoding, summed over the processes that trained the run (a
resumed run's parts up to their last checkpoints; records written before 2026-12-03 count only the process that
finished the run).
Optional: ``code`` (``code_version()`` of the code that trained the run: version, git commit, uncommitted changes;
a re-evaluation keeps it), ``test_unseen``, ``dev_other`` and ``test_other`` (``OPTIONAL_EVAL_SPLITS``; each a dict as ``test``,
its ``lm`` entry at dev's LM weight and word score) when the corpus has that split, ``probe`` (dict: the linear
probe's dev ``cer`` and ``wer`` and its head's final train loss) once the run's probe finished, and
``TRAINED_ON_KEYS``: ``processor`` (str: ``processor_name()`` of the device the run finished training on) and
``precision`` (str: what ``train.amp`` resolved to there, e.g. ``float32``, ``bfloat16``)."""


def probe_summary(record: dict) -> dict:
    """What results.json keeps of a probe's record: its dev rates and final train loss (no wall-clock times,
    so that results.json stays comparable between invocations)."""
    return {"cer": record["dev"]["cer"], "wer": record["dev"]["wer"], "train_loss": record["train"]["loss_end"],
            "model": record["model"]}


def unlabeled_seconds(data: Path) -> float:
    from bljust.data.manifests import load_split

    return max(sum(c.duration for c in load_split(data, "unlabeled")), 1e-9)


def run_costs(summary: dict, budget: int, unlabeled_total_seconds: float) -> dict:
    """A run record's costs (``COST_KEYS``) from the summary its method returned."""
    lab_h, unl_h = summary["labeled_hours_processed"], summary["unlabeled_hours_processed"]
    return {
        "steps": summary["steps"], "budget": budget,
        "batch_passes": summary["labeled_batches"] + summary["unlabeled_batches"],
        "labeled_batches": summary["labeled_batches"], "unlabeled_batches": summary["unlabeled_batches"],
        "train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"], "audio_hours": lab_h + unl_h,
        "labeled_hours": lab_h, "unlabeled_hours": unl_h, "labeled_passes": summary["labeled_passes"],
        "unlabeled_passes": unl_h * 3600 / unlabeled_total_seconds,
        "parameters": summary["parameters"], "inference_parameters": summary["inference_parameters"],
        "best_step": summary["best_step"],
        **({"precision": summary["precision"]} if "precision" in summary else {}),
    }


def corpus_stats(data: Path) -> dict:
    """Hours, utterances and speakers per split, the optional ones included when present."""
    from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, cut_speaker, has_split, load_split

    out = {}
    for split in (*SPLITS, *OPTIONAL_SPLITS):
        if not has_split(data, split):
            continue
        cuts = load_split(data, split)
        out[split] = {"hours": round(sum(c.duration for c in cuts) / 3600, 4), "utterances": len(cuts),
                      "speakers": len({cut_speaker(c) for c in cuts})}
    return out


def code_version() -> dict:
    """The bljust version and, when it runs from a git checkout, the commit and whether its sources differ from it:
    results name the code that produced them (run keys cannot: they would orphan every run at each commit)."""
    import subprocess

    import bljust

    root = Path(bljust.__file__).resolve().parents[2]
    info: dict = {"version": bljust.__version__, "commit": None, "dirty": None}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"],
                                    capture_output=True, text=True, timeout=10)
            info.update(commit=commit.stdout.strip(), dirty=bool(status.stdout.strip()))
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: the version alone
        pass
    return info


def code_text(code: dict | None) -> str:
    """``code_version()`` in words: ``0.1.0, commit 848f40b (+ uncommitted changes)``."""
    if not code:
        return "not recorded"
    text = f"{code.get('version')}"
    if code.get("commit"):
        text += f", commit {code['commit'][:7]}" + (" + uncommitted changes" if code.get("dirty") else "")
    return text


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; platform.processor() elsewhere, which on Linux says only
    x86_64), and whether it computes bf16 natively (AVX512-BF16 or AMX), which sets train.amp's default."""
    import torch

    from bljust.engine.precision import native_bf16

    name = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    name = name or platform.processor() or platform.machine()
    return f"{name} ({'native' if native_bf16(torch.device('cpu')) else 'no native'} bf16)"


def processor_name(device: str) -> str:
    """The processor a job trains on: ``cpu_model()``, or the GPU's name on CUDA (a job sees its one GPU as
    cuda:0)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_model()


def machine_info(parallel: int, devices: list[str], cores: int) -> dict:
    import torch

    return {"platform": platform.platform(), "processor": cpu_model(),
            "cpus": cores, "torch": torch.__version__, "device": devices[0].split(":")[0],
            "gpus": len(devices) if devices[0] != "cpu" else 0, "parallel_jobs": parallel,
            "threads_per_job": 1 if devices[0] != "cpu" else max(1, cores // parallel),
            "python": platform.python_version()}


def validate_results(results: dict) -> None:
    """Raise ValueError naming the first key of a results.json that is missing or malformed, or the
    first run that broke its budget rule (over the budget in batch passes under ``passes``; not
    exactly the budget in supervised updates under ``labeled``)."""
    def need(obj: dict, key: str, tp: type, where: str) -> None:
        if key not in obj:
            raise ValueError(f"results.json: {where} lacks '{key}'")
        ok = isinstance(obj[key], (int, float)) if tp is float else isinstance(obj[key], tp)
        if not ok or (tp is int and isinstance(obj[key], bool)):
            raise ValueError(f"results.json: {where}.{key} should be {tp.__name__}, not {obj[key]!r}")

    if results.get("schema") != SCHEMA:
        raise ValueError(f"results.json: schema is {results.get('schema')!r}, expected {SCHEMA!r}")
    for key, tp in (("data", str), ("corpus", dict), ("budget", dict), ("methods", list), ("seeds", list),
                    ("machine", dict), ("runs", list), ("failed", list)):
        need(results, key, tp, "top level")
    budget = results["budget"]
    for key, tp in (("budget_rule", str), ("rule_text", str), ("unit", str), ("value", int)):
        need(budget, key, tp, "budget")
    rule = budget["budget_rule"]
    if rule not in BUDGET_RULES:
        raise ValueError(f"results.json: budget.budget_rule '{rule}' is not one of {', '.join(BUDGET_RULES)}")
    for i, run in enumerate(results["runs"]):
        where = f"runs[{i}]"
        for key, tp in RUN_KEYS.items():
            need(run, key, tp, where)
        if run["method"] not in (*METHOD_NAMES, TOPLINE, *ABLATIONS):
            raise ValueError(f"results.json: {where}.method '{run['method']}' is not a known method")
        if run["budget_rule"] != rule or run["budget"] != budget["value"]:
            raise ValueError(f"results.json: {where} ran under the rule '{run['budget_rule']}' with a budget of "
                             f"{run['budget']}, not '{rule}' with {budget['value']}")
        used = spent(run, rule)
        if (used > run["budget"]) if rule == "passes" else (used != run["budget"]):
            unit = "batch passes" if rule == "passes" else "supervised updates"
            raise ValueError(f"results.json: {where} ({run['method']}) made {used} {unit} on a budget of "
                             f"{run['budget']}")
        for split in (*EVAL_SPLITS, *(s for s in OPTIONAL_EVAL_SPLITS if s in run)):
            need(run, split, dict, where)
            for key in ("wer", "cer"):
                need(run[split], key, float, f"{where}.{split}")
                if not 0 <= run[split][key] < 10:
                    raise ValueError(f"results.json: {where}.{split}.{key} = {run[split][key]} is not a rate")
            need(run[split], "groups", dict, f"{where}.{split}")
            if "lm" in run[split]:
                for key in ("wer", "cer", "lm_weight", "word_score"):
                    need(run[split]["lm"], key, float, f"{where}.{split}.lm")
        if "probe" in run:
            need(run, "probe", dict, where)
            need(run["probe"], "cer", float, f"{where}.probe")
    if "significance" in results:
        need(results, "significance", dict, "top level")
        for key, tp in SIGNIFICANCE.items():
            need(results["significance"], key, tp, "significance")
        _validate_intervals(results["significance"]["scores"], need)
    if (probe := results.get("probe")) is not None:
        need(results, "probe", dict, "top level")
        if probe.get(RANDOM_INIT) is not None:
            need(probe[RANDOM_INIT], "cer", float, f"probe.{RANDOM_INIT}")


def _validate_intervals(scores: dict, need: Callable[[dict, str, type, str], None]) -> None:
    """Every comparison of ``significance.scores`` has its intervals, pooled and per seed, each low ≤ high."""
    for score, by_method in scores.items():
        for method, against in by_method.items():
            for ref, comparison in against.items():
                where = f"significance.scores.{score}.{method}.{ref}"
                need(comparison, "per_seed", list, where)
                for i, node in enumerate([comparison, *comparison["per_seed"]]):
                    at = where if i == 0 else f"{where}.per_seed[{i - 1}]"
                    need(node, "utterances", int, at)
                    for rate in ("wer", "cer"):
                        need(node, rate, dict, at)
                        for key in ("diff", "low", "high"):
                            need(node[rate], key, float, f"{at}.{rate}")
                        if not node[rate]["low"] <= node[rate]["high"]:
                            raise ValueError(f"results.json: {at}.{rate} has low > high")
