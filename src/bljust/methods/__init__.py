"""Training methods, one file each; every ``train(cfg, data_dir, run_dir, resume)`` returns its run summary."""

from __future__ import annotations

from typing import Callable


def _lazy(module: str) -> Callable:
    def train(*args, **kwargs):
        import importlib

        return importlib.import_module(f"bljust.methods.{module}").train(*args, **kwargs)

    return train


METHODS: dict[str, Callable] = {name: _lazy(name) for name in ("supervised", "ptft", "just", "pl", "bljust")}
