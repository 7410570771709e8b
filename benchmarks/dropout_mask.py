#!/usr/bin/env python
"""Side by side in one process: a whole training step of each kind with ``nn.Dropout``'s mask (PyTorch's CPU
``bernoulli_``) against bljust's (``bljust.models.dropout``), on ``bljust bench``'s model and fixed batches.

Steps alternate between the two masks (supervised native, supervised bljust, SSL native, ...), so machine load
falls on both alike; the first ``--warmup`` rounds are dropped, and the medians and their ratio are printed.

    python benchmarks/dropout_mask.py recipes/benchmark.yaml [--rounds 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import bljust.models.dropout as dropout_module
from bljust.bench import KINDS, make_bench
from bljust.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    masks = {"nn.Dropout": lambda x, p, training: F.dropout(x, p, training), "bljust": dropout_module.dropout}
    cfg = load_config(args.config, [])
    bench = make_bench(cfg)
    times: dict[tuple[str, str], list[float]] = {(k, m): [] for k in KINDS for m in masks}
    try:
        for r in range(args.rounds):
            for kind, step in bench.steps.items():
                for name, impl in masks.items():
                    dropout_module.dropout = impl  # Dropout.forward looks the function up at call time
                    t = time.perf_counter()
                    step()
                    if r >= args.warmup:
                        times[(kind, name)].append(time.perf_counter() - t)
    finally:
        dropout_module.dropout = masks["bljust"]
    print(f"{args.config}: {cfg.model.arch}, dropout {cfg.model.dropout}, amp {cfg.train.amp} "
          f"({cfg.train.amp_dtype}), {args.threads} thread(s), {args.rounds - args.warmup} rounds")
    print("| step | nn.Dropout s | bljust s | ratio |\n|---|---:|---:|---:|")
    for kind in KINDS:
        a, b = (statistics.median(times[(kind, m)]) for m in masks)
        print(f"| {kind} | {a:.3f} | {b:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
