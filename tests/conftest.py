"""Shared fixtures. Tests use one torch thread (CI runs on 2 cores) and data made here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "recipes" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A generated corpus of about three minutes of speech, shared by the training, loss and CLI tests."""
    if os.environ.get("BLJUST_TEST_CORPUS"):  # a corpus made earlier, for quick local iterations
        return Path(os.environ["BLJUST_TEST_CORPUS"])
    from bljust.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("tiny_corpus")
    synthesize_corpus(out, labeled_minutes=1.0, unlabeled_minutes=1.0, dev_minutes=0.3, test_minutes=0.3,
                      seed=0, jobs=2, progress=False)
    return out
