import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bljust.checkpoint import (
    FAULT_IN_SAVE_ENV,
    CheckpointManager,
    UnsafeFileError,
    atomic_save,
    load,
    rng_state,
    set_rng_state,
)
from bljust.data.manifests import load_split


def test_atomic_save_leaves_no_temporary(tmp_path):
    atomic_save({"x": torch.arange(3)}, tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert torch.equal(load(tmp_path / "a.pt")["x"], torch.arange(3))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    atomic_save({"v": 1}, tmp_path / "a.pt")

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    try:
        atomic_save({"v": 2}, tmp_path / "a.pt")
    except OSError:
        pass
    monkeypatch.undo()
    assert load(tmp_path / "a.pt")["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_manager_prunes_and_skips_corrupt(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (10, 20, 30):
        m.save(step, {"step": step})
    assert [p.name for p in m.paths()] == ["step-0000020.pt", "step-0000030.pt"]
    m.paths()[-1].write_bytes(b"garbage")
    assert m.load_latest()["step"] == 20


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_rng_state_holds_only_tensors_and_plain_data(tmp_path):
    import numpy as np

    atomic_save({"rng": rng_state()}, tmp_path / "r.pt")
    state = load(tmp_path / "r.pt")["rng"]  # weights_only: would fail on numpy arrays
    a = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), np.random.randn(), torch.rand(2))
    assert a[:3] == b[:3] and torch.equal(a[3], b[3])


class _Payload:
    """Unpickling this creates a file: what a malicious model file could do instead."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def _malicious_model(tmp_path, good: Path) -> tuple[Path, Path]:
    state = torch.load(good, weights_only=True)
    target = tmp_path / "PWNED"
    state["tokenizer"]["extra"] = _Payload(str(target))
    evil = tmp_path / "evil" / "best.pt"
    evil.parent.mkdir()
    torch.save(state, evil)
    return evil, target


def test_a_model_file_that_would_run_code_is_refused(tmp_path, tiny_corpus):
    """transcribe and evaluate refuse a model file carrying a pickled payload, with a clear error, and the
    payload never runs (weights_only loading)."""
    from bljust.config import load_config
    from bljust.methods import supervised
    from tests.conftest import REPO, TINY

    supervised.train(load_config(TINY, ["train.max_steps=2", "train.valid_every=2"]), tiny_corpus, tmp_path / "run")
    evil, target = _malicious_model(tmp_path, tmp_path / "run" / "best.pt")
    # the payload is real: an unsafe load would create the file
    torch.load(evil, weights_only=False)
    assert target.exists()
    target.unlink()

    wav = next(iter(load_split(tiny_corpus, "test"))).recording.sources[0].source
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for args in (["transcribe", str(evil), wav], ["evaluate", str(evil), "--data", str(tiny_corpus), "--split", "test"],
                 ["evaluate", str(evil.parent), "--data", str(tiny_corpus), "--split", "test"]):
        r = subprocess.run([sys.executable, "-m", "bljust", *args], capture_output=True, text=True, env=env, cwd=REPO,
                           timeout=300)
        assert r.returncode == 1, (args, r.stderr[-2000:])
        assert f"refusing to load {evil}: it asks to import io.open" in r.stderr, r.stderr[-2000:]
        assert "Traceback" not in r.stderr
        assert not target.exists()
    with pytest.raises(UnsafeFileError):
        load(evil)
    with pytest.raises(UnsafeFileError):  # not mistaken for a damaged checkpoint and skipped over
        m = CheckpointManager(tmp_path / "evil")
        m.dir.mkdir()
        evil.rename(m.dir / "step-0000005.pt")
        m.load_latest()
    assert not target.exists()


def test_a_kill_inside_a_write_keeps_the_old_checkpoint_and_its_leftover_is_removed(tmp_path):
    """The FAULT_IN_SAVE hook dies half-way through the second write, as a SIGKILL there would."""
    code = ("from bljust.checkpoint import CheckpointManager\nimport torch\n"
            f"m = CheckpointManager({str(tmp_path)!r})\n"
            "m.save(2, {'w': torch.ones(1000)})\nm.save(4, {'w': torch.zeros(1000)})\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_IN_SAVE_ENV: "2"}, capture_output=True)
    assert r.returncode == 17, r.stderr
    leftovers = list((tmp_path / "checkpoints").glob(".step-0000004.pt.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    m = CheckpointManager(tmp_path)
    assert [p.name for p in m.paths()] == ["step-0000002.pt"]
    assert torch.equal(m.load_latest()["w"], torch.ones(1000))
    assert not list((tmp_path / "checkpoints").glob(".*tmp*"))


def test_resume_drops_a_truncated_metrics_line(tmp_path, caplog):
    from bljust.engine.run import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "kind": "train", "f": 3.0}\n{"step": 2, "kind": "train", "f": 2.5}\n'
                    '{"step": 3, "kind": "train", "f": 2.4}\n{"step": 4, "ki')
    with caplog.at_level(logging.WARNING, logger="bljust"):
        logger = MetricsLogger(tmp_path, True, resume_step=2)
    logger.close()
    assert [json.loads(ln)["step"] for ln in path.read_text().splitlines()] == [1, 2]
    assert "truncated" in caplog.text
