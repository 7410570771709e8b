import random

import torch

from bljust.checkpoint import CheckpointManager, atomic_save, load, rng_state, set_rng_state


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
