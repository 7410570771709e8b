"""Per-method means and seed spreads of one or more comparisons' results.json (issue 14's benchmark).

    python benchmarks/issue14/summarize.py runs/regime/bench-passes [more comparison directories...]

Prints, per comparison and method, mean ± sample std over all finished seeds and, beside it, over
seeds 1 and 2 alone: seed 0 of the tuned methods is their tuning run, chosen on dev, so its dev numbers
carry the choice's optimism. Numbers in %; train minutes as recorded (they depend on what else ran).

A second table gives dev CER at the same number of labeled batches (step for labeled step), read from each
run's validation points in metrics.jsonl and linearly interpolated between the two around it; blank where a
run's validation points do not reach that far. A third gives, per run with joint steps, the cosine of θ's
gradients of f and g and g's weighted push against f's (γ‖∇θg‖ / ‖∇θf‖), averaged over each quarter of the
joint steps' logged rows.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

COLUMNS = (  # (heading, path into a run record)
    ("dev CER", ("dev", "cer")),
    ("dev WER LM", ("dev", "lm", "wer")),
    ("test CER", ("test", "cer")),
    ("test WER LM", ("test", "lm", "wer")),
    ("unseen CER", ("test_unseen", "cer")),
    ("unseen WER LM", ("test_unseen", "lm", "wer")),
    ("probe CER", ("probe", "cer")),
)


def value(run: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(run, dict) or key not in run:
            return None
        run = run[key]
    return 100 * run if isinstance(run, (int, float)) else None


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def by_method(results: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for run in sorted(results["runs"], key=lambda r: r["seed"]):
        out.setdefault(run["method"], []).append(run)
    return out


def table(runs_by_method: dict[str, list[dict]]) -> list[str]:
    head = ["method", "seeds", *(h for h, _ in COLUMNS), "dev CER s1-2", "test CER s1-2", "train min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in runs_by_method.items():
        later = [r for r in runs if r["seed"] > 0]
        cells = [method, ",".join(str(r["seed"]) for r in runs)]
        cells += [spread([v for r in runs if (v := value(r, path)) is not None]) for _, path in COLUMNS]
        cells += [spread([v for r in later if (v := value(r, path)) is not None])
                  for path in (("dev", "cer"), ("test", "cer"))]
        cells.append(spread([r["train_seconds"] / 60 for r in runs]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


LABELED_BATCHES = (500, 1000, 1500, 2000, 2250, 3000, 3600, 4500)


def metric_rows(run_dir: Path) -> list[dict]:
    rows = []
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a killed run's torn last line
            continue
    return rows


def dev_cer_at(rows: list[dict], labeled: int) -> float | None:
    """Dev CER (%) after ``labeled`` labeled batches, interpolated between the run's validation points."""
    points = sorted((r["labeled_batches"], 100 * r["cer"]) for r in rows
                    if r.get("kind") == "dev" and isinstance(r.get("cer"), float) and r.get("labeled_batches"))
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= labeled <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (labeled - x0) / (x1 - x0)
    return points[-1][1] if points and points[-1][0] == labeled else None


def gradient_quarters(rows: list[dict]) -> list[tuple[float, float]] | None:
    """Per quarter of the joint steps: mean cosine of θ's ∇f and ∇g, and mean γ‖∇θg‖ / ‖∇θf‖."""
    joint = [r for r in rows if r.get("kind") == "train" and "grad_cos" in r and r.get("phase", "joint") == "joint"]
    q = len(joint) // 4
    if not q:
        return None
    return [(statistics.fmean(r["grad_cos"] for r in part),
             statistics.fmean(r["weighted_grad_g_norm"] / max(r["grad_f_norm"], 1e-12) for r in part))
            for part in (joint[:q], joint[q:2 * q], joint[2 * q:3 * q], joint[3 * q:])]


def matched(runs_by_method: dict[str, list[dict]], rows: dict[str, list[dict]]) -> list[str]:
    head = ["method \\ labeled batches", *(f"{n:,}".replace(",", " ") for n in LABELED_BATCHES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, runs in runs_by_method.items():
        cells = [method]
        for n in LABELED_BATCHES:
            values = [v for r in runs if (v := dev_cer_at(rows[r["run_dir"]], n)) is not None]
            cells.append(spread(values) if len(values) == len(runs) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gradients(runs_by_method: dict[str, list[dict]], rows: dict[str, list[dict]]) -> list[str]:
    lines = ["| method | seed | cos(∇f, ∇g) by quarter | γ‖∇g‖ / ‖∇f‖ by quarter |", "|---|---|---|---|"]
    for method, runs in runs_by_method.items():
        for run in runs:
            if (quarters := gradient_quarters(rows[run["run_dir"]])) is not None:
                lines.append(f"| {method} | {run['seed']} | " + " / ".join(f"{c:.3f}" for c, _ in quarters)
                             + " | " + " / ".join(f"{w:.2f}" for _, w in quarters) + " |")
    return lines


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for directory in argv:
        path = Path(directory) / "results.json"
        if not path.is_file():
            print(f"{path}: no results.json (the comparison has not finished an invocation)", file=sys.stderr)
            return 1
        results = json.loads(path.read_text())
        print(f"## {directory} ({results['runs'][0]['budget_rule'] if results['runs'] else '?'} rule)\n")
        runs = by_method(results)
        rows = {r["run_dir"]: metric_rows(Path(directory) / r["run_dir"]) for rs in runs.values() for r in rs}
        print("\n".join(table(runs)), end="\n\n")
        print("Dev CER % at the same number of labeled batches (mean ± std over seeds):\n")
        print("\n".join(matched(runs, rows)), end="\n\n")
        print("Joint steps' gradients (logged steps, averaged per quarter of the joint steps):\n")
        print("\n".join(gradients(runs, rows)), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
