"""Atomic, pruned, resumable checkpoints, and safe loading of every model file.

A checkpoint is one dict: model, optimiser, data-stream positions, RNG states,
the resolved config, the tokenizer and the run's counters. It is written to a temporary
file in the same directory, flushed to disk, then renamed over the target, so a run killed
at any moment leaves either the old checkpoint or the new one, never half of one.

Every file is read with ``torch.load(weights_only=True)``: tensors and plain Python data only, so
a model file from elsewhere cannot run code when ``bljust transcribe`` or ``evaluate`` opens it.
What a checkpoint holds is kept to those types (the RNG states are stored as tensors and ints).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("bljust.checkpoint")

_STEP_RE = re.compile(r"step-(\d+)\.pt$")


# Test hook (benchmarks/kill_resume.py, tests): the N-th save of this process writes half of its
# bytes, then the process dies as a killed one would, inside the write.
FAULT_IN_SAVE_ENV = "BLJUST_FAULT_IN_SAVE"
_saves = 0


class UnsafeFileError(RuntimeError):
    """A model or checkpoint file holds objects other than tensors and plain data."""


def atomic_save(obj, path: str | Path) -> None:
    global _saves
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _saves += 1
    try:
        with open(tmp, "wb") as f:
            if _saves == int(os.environ.get(FAULT_IN_SAVE_ENV, "0")):
                _die_mid_write(obj, f)
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file (config, job spec, metrics) through a temporary name: a kill leaves the old or the new."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def _die_mid_write(obj, f) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    f.write(buf.getvalue()[:len(buf.getvalue()) // 2])
    f.flush()
    os._exit(17)


def load(path: str | Path, map_location="cpu") -> dict:
    """A checkpoint or model file, read without running code from it.

    Raises ``UnsafeFileError`` for a file that would need to import or call anything (a pickled
    object, e.g. a file crafted to run a command when loaded), ``RuntimeError`` for one that
    cannot be read at all.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the first global it refused; anything else is a damaged file.
        if (m := re.search(r"GLOBAL (\S+)", str(e))) is not None:
            raise UnsafeFileError(
                f"refusing to load {path}: it asks to import {m.group(1)}, and a model file holds only tensors and "
                f"plain data (a file that imports code can run it when loaded; only load files bljust wrote)") from e
        raise RuntimeError(f"cannot read checkpoint {path}: not a readable checkpoint ({str(e).splitlines()[-1]})") from e
    except Exception as e:  # noqa: BLE001 - report which file is bad and why
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e


def rng_state() -> dict:
    """Every RNG's state as tensors and ints, which ``weights_only`` loading accepts."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
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

    def remove_leftovers(self) -> None:
        """Remove the temporary files of writes that a kill interrupted (never a finished checkpoint)."""
        for tmp in [*self.dir.glob(".step-*.pt.tmp-*"), *self.dir.parent.glob(".best.pt.tmp-*")]:
            log.info("removing %s, left by a checkpoint write that was interrupted", tmp)
            tmp.unlink(missing_ok=True)

    def load_latest(self) -> dict | None:
        """The newest readable checkpoint; an unreadable one is reported and the previous tried."""
        self.remove_leftovers()
        for path in reversed(self.paths()):
            try:
                return load(path)
            except UnsafeFileError:
                raise
            except RuntimeError as e:
                log.error("%s; trying the previous checkpoint", e)
        return None
