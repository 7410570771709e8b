"""``bljust bench``: the cost of one training step of each kind, time and peak memory, side by side.

Steps are timed interleaved (supervised, SSL, joint, supervised, ...) on the same model and
fixed batches, so machine load affects every kind alike; the report gives medians and the
ratio that matters for BL-JUST's compute: joint step / (supervised step + SSL step).

Each step is a whole training step as the methods take it: the loss(es), their backward passes,
per-group clipping of the groups that step (as ``Run.step``) and the optimiser step. A joint step
follows BL-JUST's flow: ``f.backward()`` frees f's graph before g's is built, then
``penalised_backward`` (with the health metrics, as on a logging step). So its peak memory
should be that of the larger of a supervised and an SSL step, not their sum; the report gives
that ratio too.

Peak memory is measured in separate, untimed passes after the timed ones, so the profiler's
overhead never enters a timing. It is the peak of the allocator's live bytes during the step
above those live just before it (model, optimiser state and batches excluded):

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
- CPU: the CPU allocator has no peak counter, so the step runs under ``torch.profiler`` with
  ``profile_memory=True``, and the peak is the running maximum of the allocation and free sizes
  of its memory events taken in time order (every allocation through PyTorch's CPU allocator,
  activations, gradients and temporaries alike; memory that libraries allocate outside it, e.g.
  oneDNN scratch space, is not seen).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile

from bljust.config import Config, load_config
from bljust.engine.dist import Dist, pick_device
from bljust.engine.objectives import Objectives, f_objective, g_objective, penalised_backward
from bljust.engine.optim import build_optimizer, clip_groups
from bljust.models import count_parameters
from bljust.models.asr import ASRModel

KINDS = ("supervised", "ssl", "joint")
JOINT_GAMMA = 0.5
MIB = 2 ** 20


def _batch(seconds: float, utt_seconds: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, int(seconds // utt_seconds))
    frames = int(utt_seconds * 100)
    return torch.randn(n, frames, 80, generator=gen), torch.full((n,), frames)


@dataclass
class Bench:
    """A model, its optimiser and fixed batches; ``steps`` holds one whole training step of each kind."""

    cfg: Config
    device: torch.device
    model: ASRModel
    optimizer: torch.optim.Optimizer
    labeled: tuple[torch.Tensor, torch.Tensor]
    unlabeled: tuple[torch.Tensor, torch.Tensor]
    targets: list[list[int]]
    utt_seconds: float

    @property
    def groups(self) -> dict[str, list[torch.Tensor]]:
        return {g["name"]: g["params"] for g in self.optimizer.param_groups}

    @property
    def batch_seconds(self) -> float:
        return len(self.labeled[0]) * self.utt_seconds

    def f(self) -> torch.Tensor:
        return f_objective(Objectives(self.model), *self.labeled, self.targets, Dist(), self.device, amp=False)

    def g(self) -> torch.Tensor:
        # The same masks every step (a fresh generator), so every repeat does the same work.
        g, _ = g_objective(Objectives(self.model), *self.unlabeled, torch.Generator().manual_seed(1), Dist(),
                           self.device, amp=False, ids=[f"bench-{i}" for i in range(len(self.unlabeled[0]))])
        return g

    def update(self, names: tuple[str, ...]) -> None:
        """``Run.step`` on one process: drop the other groups' gradients, clip each stepping group on its
        own, apply the optimiser step, clear the gradients."""
        stepping = {}
        for name, params in self.groups.items():
            if name in names:
                stepping[name] = params
            else:
                for p in params:
                    p.grad = None
        clip_groups(stepping, self.cfg.optim.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def supervised(self) -> None:
        self.f().backward()
        self.update(("theta", "phi"))

    def ssl(self) -> None:
        self.g().backward()
        self.update(("theta", "eta"))

    def joint(self) -> None:
        groups = self.groups
        self.f().backward()  # ∇f into θ and φ; f's graph is freed before g's is built
        penalised_backward(self.g(), groups["theta"], groups["eta"], theta_weight=JOINT_GAMMA, eta_weight=1.0,
                           health=True)
        self.update(("theta", "phi", "eta"))

    @property
    def steps(self) -> dict[str, Callable[[], None]]:
        return {"supervised": self.supervised, "ssl": self.ssl, "joint": self.joint}


def make_bench(cfg: Config, batch_seconds: float = 60.0, utt_seconds: float = 5.0,
               device: str | torch.device | None = None) -> Bench:
    """The bench's model (with its SSL head), optimiser and batches on ``device`` (default: ``train.device``)."""
    torch.manual_seed(0)
    dev = torch.device(device) if device is not None else pick_device(cfg.train.device, Dist())
    gen = torch.Generator().manual_seed(0)
    lab, unl = _batch(batch_seconds, utt_seconds, gen), _batch(batch_seconds, utt_seconds, gen)
    model = ASRModel(cfg, 30, ssl=True, ssl_targets=_random_targets(cfg, unl[1], gen)).to(dev)
    optimizer = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    targets = [list(torch.randint(2, 29, (int(utt_seconds * 12),), generator=gen).tolist()) for _ in range(len(lab[0]))]
    return Bench(cfg, dev, model, optimizer, (lab[0].to(dev), lab[1].to(dev)), (unl[0].to(dev), unl[1].to(dev)),
                 targets, utt_seconds)


def _random_targets(cfg: Config, lens: torch.Tensor, gen: torch.Generator):
    """HuBERT's per-utterance cluster ids for the bench's unlabeled batch (ids ``bench-<i>``): random, which costs
    the loss what real ones do."""
    if cfg.ssl.loss != "hubert":
        return None
    from pathlib import Path

    from bljust.models.subsampling import subsampled_lengths
    from bljust.ssl_targets import Targets

    frames = subsampled_lengths(lens)
    return Targets(path=Path("bench"), rows={f"bench-{i}": i for i in range(len(lens))},
                   offsets=torch.cat((torch.zeros(1, dtype=torch.long), frames.cumsum(0))),
                   labels=torch.randint(0, cfg.ssl.clusters, (int(frames.sum()),), generator=gen),
                   clusters=cfg.ssl.clusters, meta={"key": "bench"})


def cpu_peak_bytes(prof: profile) -> int:
    """The peak of live CPU-allocator bytes during a profiled region, above those live when it began:
    the running sum of the memory events' sizes (allocations positive, frees negative) in time order."""
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:
        raise RuntimeError("torch.profiler kept no kineto results; cannot measure CPU memory on this torch")
    events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], None], device: torch.device) -> int:
    """Bytes: the peak of memory allocated during ``fn()`` above what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        raise ValueError(f"peak memory on {device.type} is not supported (cpu or cuda)")
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints a line to fd 2 when it starts and stops
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    return cpu_peak_bytes(prof)


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (C++ logging included) for the duration."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_costs(cfg: Config, repeats: int = 10, batch_seconds: float = 60.0, utt_seconds: float = 5.0,
               device: str | torch.device | None = None) -> dict:
    """Median seconds of each step kind over ``repeats`` interleaved rounds (after one warm-up round),
    then each kind's peak memory in an untimed pass."""
    b = make_bench(cfg, batch_seconds, utt_seconds, device)
    steps = b.steps
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(repeats + 1):
        for name, fn in steps.items():
            _sync(b.device)
            start = time.perf_counter()
            fn()
            _sync(b.device)
            if r:  # the first round warms up allocators and kernels and creates the optimiser state
                times[name].append(time.perf_counter() - start)
    peak = {name: peak_memory(fn, b.device) for name, fn in steps.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    audio = b.batch_seconds
    return {"parameters": count_parameters(b.model), "batch_seconds": audio, "device": str(b.device),
            "threads": torch.get_num_threads(), "repeats": repeats,
            "median_seconds": med, "audio_s_per_s": {k: audio / v for k, v in med.items()},
            "joint_over_sum": med["joint"] / (med["supervised"] + med["ssl"]),
            "peak_bytes": peak, "joint_peak_over_max": peak["joint"] / max(peak["supervised"], peak["ssl"], 1),
            "ssl_loss": cfg.ssl.loss}


def main(config: str | None, overrides: list[str], repeats: int) -> str:
    """The report; the device is ``train.device`` (``--set train.device=cpu|cuda``; auto picks CUDA when present)."""
    cfg = load_config(config, overrides)
    r = step_costs(cfg, repeats=repeats)
    lines = [f"model: {cfg.model.arch} d{cfg.model.d_model}×{cfg.model.num_layers}, {r['parameters'] / 1e6:.2f} M "
             f"parameters (incl. the {r['ssl_loss']} head); batch {r['batch_seconds']:.0f} s of audio; "
             f"{r['device']}, {r['threads']} thread(s); median of {r['repeats']} interleaved repeats; "
             f"peak memory above the live model, optimiser state and batches, in a separate untimed pass",
             "| step | seconds | audio-s per s | peak MiB |", "|---|---|---|---|"]
    for k in KINDS:
        lines.append(f"| {k} | {r['median_seconds'][k]:.3f} | {r['audio_s_per_s'][k]:.0f} | "
                     f"{r['peak_bytes'][k] / MIB:.1f} |")
    lines.append(f"joint step / (supervised step + SSL step) = {r['joint_over_sum']:.3f}")
    lines.append(f"joint peak / max(supervised peak, SSL peak) = {r['joint_peak_over_max']:.3f}")
    return "\n".join(lines)
