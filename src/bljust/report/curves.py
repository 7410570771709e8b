"""The report's figures over training: f, g and dev CER against steps and minutes, BL-JUST's γ and penalty gap,
and the convergence of g on held-out unlabeled audio."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from bljust.report.numbers import DASH, Inputs, field, g_reach, g_threshold, heldout, label, series
from bljust.report.render import save_figure


def _curves_figure(inp: Inputs, key: str, kind: str, ylabel: str, path: Path, scale: float = 1.0) -> Path | None:
    """``key`` against steps (left) and wall-clock minutes (right), one line per method; None if no one logged it."""
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    drawn = False
    for m in inp.methods:
        steps, minutes, values = series(inp.curves(m), key, kind)
        if not values:
            continue
        style = {"color": inp.color(m), "label": label(m), "lw": 1.2, "ms": 3, "marker": "o" if kind == "dev" else ""}
        by_step.plot(steps, [scale * v for v in values], **style)
        by_time.plot(minutes, [scale * v for v in values], **style)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    by_step.set(xlabel="step", ylabel=ylabel)
    by_time.set(xlabel="wall-clock minutes since the run started")
    by_step.legend()
    for ax in (by_step, by_time):
        ax.grid(alpha=.3)
    return save_figure(fig, path)


def learning_curves(inp: Inputs) -> list[tuple]:
    seeds = ", ".join(f"{label(m)} seed {inp.curve_runs[m].get('seed', '?')}" for m in inp.methods)
    f_loss = "RNN-T" if "transducer" in str(inp.results.get("decoding", "")) else "CTC"  # model.loss
    blocks = [("h", 2, "Learning curves"),
              ("p", (f"One run per method ({seeds}). f: {f_loss} loss per token on the labeled batch of the "
                     "logged step; g: self-supervised loss on the unlabeled batch; wall-clock counts from "
                     "the run's first logged row."))]
    missing = [label(m) for m in inp.methods if not inp.curves(m)]
    if missing:
        blocks.append(("p", "No readable metrics.jsonl for: " + ", ".join(missing) + "."))
    for key, kind, ylabel, name, caption, scale in (
            ("f", "train", f"f ({f_loss} loss per token)", "curves_f", "Supervised loss f", 1.0),
            ("g", "train", "g (SSL loss)", "curves_g", "Self-supervised loss g", 1.0),
            ("cer", "dev", "dev CER %", "dev_cer", "Dev CER at the validation points", 100.0)):
        path = _curves_figure(inp, key, kind, ylabel, inp.plots / f"{name}.png", scale)
        blocks.append(("figure", path, caption) if path else ("p", f"{caption}: no method logged it."))
    return blocks


def gamma(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "BL-JUST: γ schedule and penalty gap")]
    rows = inp.curves("bljust") if "bljust" in inp.curve_runs else []
    gamma, gap = series(rows, "gamma"), series(rows, "penalty_gap")
    gap_heldout = series(rows, "penalty_gap_heldout", kind="dev")
    if not gamma[0] and not gap[0]:
        return blocks + [("p", "No BL-JUST run with logged γ or penalty gap in these results.")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    top.plot(gamma[0], gamma[2], color=inp.color("bljust"), marker=".", lw=1)
    top.set(ylabel="γ (weight of ∇g in joint steps)")
    bottom.plot(gap[0], gap[2], color="C3", marker=".", lw=1, label="training batches (EMA)")
    if gap_heldout[0]:
        bottom.plot(gap_heldout[0], gap_heldout[2], color="k", marker="o", ms=3, lw=1, label="held-out (eval mode)")
        bottom.legend(fontsize=8)
    bottom.set(xlabel="step", ylabel="penalty gap g − v*")
    for ax in (top, bottom):
        ax.grid(alpha=.3)
    seed = inp.curve_runs["bljust"].get("seed", "?")
    return blocks + [("figure", save_figure(fig, inp.plots / "bljust_gamma.png"), f"BL-JUST seed {seed}: γ and penalty gap")]


def ssl_convergence(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "Convergence of the unsupervised loss g"),
              ("p", ("g_heldout: the self-supervised loss g on held-out unlabeled utterances (a fixed share of the "
                     "unlabeled split that no method trains on), in eval mode with the same masks at every "
                     "validation, so it is free of training-batch noise. x = unlabeled batches consumed so far, and "
                     "training minutes (validation excluded)."))]
    methods = [m for m in inp.methods if heldout(inp.curves(m))]
    if not methods:
        return blocks + [("p", "No run logged g_heldout (g on held-out unlabeled utterances: logged at each "
                               "validation by the methods with an SSL loss when data.heldout_unlabeled_fraction > 0), "
                               "so there is no convergence of g to show.")]
    fig, (by_batch, by_time) = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    for m in methods:
        rows = heldout(inp.curves(m))
        g = [r["g_heldout"] for r in rows]
        by_batch.plot([r["unlabeled_batches"] for r in rows], g, color=inp.color(m), lw=1.2, marker="o", ms=3,
                      label=label(m))
        by_time.plot([r["train_seconds"] / 60 for r in rows], g, color=inp.color(m), lw=1.2, marker="o", ms=3)
    threshold, source = g_threshold(inp, methods)
    for ax in (by_batch, by_time):
        ax.axhline(threshold, color="k", ls=":", lw=1, label="threshold")
        ax.grid(alpha=.3)
    by_batch.set(xlabel="unlabeled batches consumed", ylabel="g_heldout (SSL loss, held-out)")
    by_time.set(xlabel="training minutes")
    by_batch.legend()
    seeds = ", ".join(f"{label(m)} seed {inp.curve_runs[m].get('seed', '?')}" for m in methods)
    blocks.append(("figure", save_figure(fig, inp.plots / "ssl_convergence.png"),
                   f"g on held-out unlabeled utterances against unlabeled batches and training minutes ({seeds})"))
    rows = []
    for m in methods:
        for run in inp.runs[m]:  # every seed: one crossing point is too noisy to stand alone
            points = heldout(inp.rows[id(run)])
            hit = g_reach(points, threshold)
            reached = ([str(hit["unlabeled_batches"]), f"{hit['train_seconds'] / 60:.1f}"] if hit is not None
                       else ["not reached"] * 2)
            total = run.get("unlabeled_batches", points[-1]["unlabeled_batches"] if points else None)
            rows.append([label(m), field(run, "seed"), *reached, DASH if total is None else str(total)])
    blocks += [("p", f"First validation at which g_heldout was at or below {threshold:.3f} ({source}):"),
               ("table", ["method", "seed", "unlabeled batches", "train min", "unlabeled batches in total"], rows)]
    return blocks
