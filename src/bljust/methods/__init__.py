"""Training methods, one file each; every ``train(cfg, data_dir, run_dir, resume)`` returns its run summary.

This module is the one registry of methods: the command line, ``compare`` and the report take
the names, labels and config sections from here.
"""

from __future__ import annotations

from typing import Callable

METHOD_NAMES: tuple[str, ...] = ("supervised", "ptft", "just", "pl", "bljust")
"""Every training method, in the order the command line and the report list them."""

METHOD_LABELS: dict[str, str] = {"supervised": "supervised", "ptft": "PT+FT", "just": "JUST", "pl": "PL",
                                 "bljust": "BL-JUST"}
"""How reports and tables name each method."""

METHOD_SECTIONS: dict[str, tuple[str, ...]] = {"supervised": (), "ptft": ("ssl", "ptft"), "just": ("ssl", "just"),
                                               "pl": ("pl",), "bljust": ("ssl", "bljust")}
"""The config sections only some methods read (besides the shared data, model, optim, train ones)."""


def _lazy(module: str) -> Callable:
    def train(*args, **kwargs):
        import importlib

        return importlib.import_module(f"bljust.methods.{module}").train(*args, **kwargs)

    return train


METHODS: dict[str, Callable] = {name: _lazy(name) for name in METHOD_NAMES}
"""``train(cfg, data_dir, run_dir, resume=False) -> summary`` of each method, imported on first call."""
