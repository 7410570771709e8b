"""Atomic, pruned, resumable checkpoints.

A checkpoint is one dict: model, optimiser, data-stream positions, RNG states,
the resolved config, the tokenizer and the run's counters. It is written to a temporary
file in the same directory, flushed to disk, then renamed over the target, so a run killed
at any moment leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bljust.checkpoint")

_STEP_RE = re.compile(r"step-(\d+)\.pt$")


def atomic_save(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load(path: str | Path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - report which file is bad and why
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """``run_dir/checkpoints/step-NNNNNNN.pt``, the last ``keep_last`` kept."""

    def __init__(self, run_dir: str | Path, keep_last: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def paths(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_RE.search(p.name))]
        return [p for _, p in sorted(found)]

    def save(self, step: int, state: dict) -> Path:
        path = self.dir / f"step-{step:07d}.pt"
        atomic_save(state, path)
        for old in self.paths()[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path

    def load_latest(self) -> dict | None:
        """The newest readable checkpoint; an unreadable one is reported and the previous tried."""
        for path in reversed(self.paths()):
            try:
                return load(path)
            except RuntimeError as e:
                log.error("%s; trying the previous checkpoint", e)
        return None
