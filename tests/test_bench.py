"""``bljust bench``: peak memory per step kind, and a joint step that never holds both graphs."""

from __future__ import annotations

import torch

from bljust import bench
from bljust.config import load_config
from bljust.engine.objectives import penalised_backward
from tests.conftest import TINY

CPU = torch.device("cpu")
# 4 utterances of 2 s per batch: activations dominate a step's memory, even for the tiny model.
SMALL = {"batch_seconds": 8.0, "utt_seconds": 2.0}


def _cfg():
    return load_config(TINY, ["model.dropout=0.0", "train.device=cpu"])


def test_cpu_peak_memory_sees_the_allocator_peak_above_live_memory():
    kept = torch.ones(1 << 20)  # live before: not counted

    def fn():
        a = torch.ones(1 << 20)  # 4 MiB
        b = torch.ones(1 << 19)  # 2 MiB, both alive: the peak
        del a, b
        c = torch.ones(1 << 18)  # 1 MiB after the peak
        return c.sum()

    peak = bench.peak_memory(fn, CPU)
    assert 6 * bench.MIB <= peak < 6.1 * bench.MIB, peak / bench.MIB
    assert kept.numel()


def test_joint_step_peak_memory_is_that_of_the_larger_single_step():
    r = bench.step_costs(_cfg(), repeats=1, device="cpu", **SMALL)
    peak = r["peak_bytes"]
    larger = max(peak["supervised"], peak["ssl"])
    assert min(peak.values()) > 1 * bench.MIB, peak
    assert peak["joint"] <= 1.1 * larger, {k: v / bench.MIB for k, v in peak.items()}
    assert r["joint_peak_over_max"] == peak["joint"] / larger


def test_a_joint_step_holding_both_graphs_would_fail_the_memory_bound():
    """The bound above can fail: building f and g before any backward pass (the old joint step)
    peaks at about the sum of a supervised and an SSL step."""
    b = bench.make_bench(_cfg(), device="cpu", **SMALL)
    for step in b.steps.values():  # warm up: optimiser state, as step_costs does before measuring
        step()

    def both_graphs():
        groups = b.groups
        f, g = b.f(), b.g()
        f.backward()
        penalised_backward(g, groups["theta"], groups["eta"], theta_weight=bench.JOINT_GAMMA, eta_weight=1.0)
        b.update(("theta", "phi", "eta"))

    larger = max(bench.peak_memory(b.supervised, CPU), bench.peak_memory(b.ssl, CPU))
    assert bench.peak_memory(b.joint, CPU) <= 1.1 * larger
    assert bench.peak_memory(both_graphs, CPU) >= 1.4 * larger


def test_bench_report_has_every_step_kind_with_its_peak_memory():
    out = bench.main(str(TINY), ["train.device=cpu"], repeats=1)
    assert "| step | seconds | audio-s per s | peak MiB |" in out
    for kind in bench.KINDS:
        row = next(line for line in out.splitlines() if line.startswith(f"| {kind} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 4 and float(cells[3]) > 0, row
    assert "joint step / (supervised step + SSL step) =" in out
    assert "joint peak / max(supervised peak, SSL peak) =" in out
