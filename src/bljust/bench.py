"""``bljust bench``: the cost of one training step of each kind, side by side: time, peak memory, FLOP
utilisation and, on a real data directory, the share of step time spent waiting for data.

Steps are timed interleaved (supervised, SSL, joint, supervised, ...) on the same model and
fixed batches, so machine load affects every kind alike; the report gives medians and the
ratio that matters for BL-JUST's compute: joint step / (supervised step + SSL step).

Each step is a whole training step as the methods take it (``train.accum_steps`` micro-batches per
stream, each its own backward), in the run's precision (``train.amp``,
``train.amp_dtype``, as ``Run``): the loss(es), their backward passes, per-group clipping of the
groups that step (as ``Run.step``) and the optimiser step. A joint step follows BL-JUST's flow:
``f.backward()`` frees f's graph before g's is built, then g's backward runs under
``penalised_gradients`` (with the health metrics, as on a logging step). So its peak memory should
be that of the larger of a supervised and an SSL step, not their sum; the report gives that ratio too.

Peak memory is measured in separate, untimed passes after the timed ones, so the profiler's
overhead never enters a timing. It is the peak of the allocator's live bytes during the step
above those live just before it (model, optimiser state and batches excluded):

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
- CPU: the CPU allocator has no peak counter, so the step runs under ``torch.profiler`` with
  ``profile_memory=True``, and the peak is the running maximum of the allocation and free sizes
  of its memory events taken in time order (every allocation through PyTorch's CPU allocator,
  activations, gradients and temporaries alike; memory that libraries allocate outside it, e.g.
  oneDNN scratch space, is not seen).

FLOP utilisation: the FLOPs of one step of each kind, counted once in another untimed pass by
``torch.utils.flop_counter.FlopCounterMode`` (forward and backward: matmuls, convolutions and
attention, PyTorch's CPU flash attention included; elementwise work, normalisation, the CTC loss and
recurrent layers have no formula and are not counted, so utilisation is a lower bound), divided by the
step's median time, divided by the peak FLOP/s of square matmuls in the step's precision that the
bench measures on the same device in the same run (``matmul_peak``).

Data wait (``bljust bench --data DIR``): a ``Run`` on ``DIR`` builds the training pipeline as every
method does (filters, speed perturbation, bucketing samplers, ``data.num_workers`` loader workers).
Steps of each kind, interleaved, fetch their batches with ``Run.next_batch`` first, as the methods do,
then compute features with ``Run.features`` and take the step above on them (``train.accum_steps``
batches per stream and step, as in training). Over N steps per kind, the time blocked in fetching is reported
as a share of the whole step time (fetching plus compute). On a small corpus an epoch is a few batches,
and the first batch of each epoch waits for its loading, so the share is higher than on a corpus with
long epochs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bljust.config import Config, load_config
from bljust.engine.dist import Dist, pick_device
from bljust.engine.objectives import Objectives, f_objective, g_objective, penalised_gradients
from bljust.engine.optim import build_optimizer, clip_groups
from bljust.engine.precision import amp_dtype, grad_scaler
from bljust.models import count_parameters
from bljust.models.asr import ASRModel

KINDS = ("supervised", "ssl", "joint")
JOINT_GAMMA = 0.5
MIB = 2 ** 20
JOINT_GOAL = 1.05
"""Issue 15's goal: a joint step costs at most this times a supervised plus an SSL step."""
DATA_WAIT_GOAL = 5.0
"""Issue 15's goal: at most this percentage of a step's time is spent waiting for data."""
STREAMS = {"supervised": ("labeled",), "ssl": ("unlabeled",), "joint": ("labeled", "unlabeled")}
"""The data streams each step kind reads, in the order the methods fetch them."""


@dataclass
class Labeled:
    """A supervised step's inputs: features, their lengths and the target units."""

    feats: torch.Tensor
    lens: torch.Tensor
    targets: list[list[int]]


@dataclass
class Unlabeled:
    """An SSL step's inputs: features, their lengths and the cut ids (HuBERT looks its targets up by them)."""

    feats: torch.Tensor
    lens: torch.Tensor
    ids: list[str]


@dataclass
class Steps:
    """One whole training step of each kind on given inputs, with a model, its optimiser and, in fp16, the
    gradient scaler."""

    cfg: Config
    device: torch.device
    model: ASRModel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None

    @property
    def groups(self) -> dict[str, list[torch.Tensor]]:
        return {g["name"]: g["params"] for g in self.optimizer.param_groups}

    def f(self, x: Labeled) -> torch.Tensor:
        t = self.cfg.train
        return f_objective(Objectives(self.model), x.feats, x.lens, x.targets, Dist(), self.device, t.amp,
                           t.amp_dtype)

    def g(self, x: Unlabeled) -> torch.Tensor:
        # The same masks every step (a fresh generator), so every repeat does the same work.
        t = self.cfg.train
        g, _ = g_objective(Objectives(self.model), x.feats, x.lens, torch.Generator().manual_seed(1), Dist(),
                           self.device, t.amp, ids=x.ids, amp_dtype=t.amp_dtype)
        return g

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

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
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip_groups(stepping, self.cfg.optim.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    # Each step takes a list of micro-batches (``train.accum_steps`` of them): one backward each, one update.

    def supervised(self, xs: list[Labeled]) -> None:
        for x in xs:
            self.backward(self.f(x) / len(xs))
        self.update(("theta", "phi"))

    def ssl(self, us: list[Unlabeled]) -> None:
        for u in us:
            self.backward(self.g(u) / len(us))
        self.update(("theta", "eta"))

    def joint(self, xs: list[Labeled], us: list[Unlabeled]) -> None:
        groups = self.groups
        for x in xs:  # ∇f into θ and φ; f's graph is freed before g's is built
            self.backward(self.f(x) / len(xs))
        with penalised_gradients(groups["theta"], groups["eta"], theta_weight=JOINT_GAMMA, eta_weight=1.0,
                                 health=True, scaler=self.scaler):
            for u in us:
                self.backward(self.g(u) / len(us))
        self.update(("theta", "phi", "eta"))


def _batch(seconds: float, utt_seconds: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, int(seconds // utt_seconds))
    frames = int(utt_seconds * 100)
    return torch.randn(n, frames, 80, generator=gen), torch.full((n,), frames)


@dataclass
class Bench(Steps):
    """``Steps`` with fixed batches; ``steps`` holds one whole training step of each kind on them."""

    labeled: Labeled
    unlabeled: Unlabeled
    utt_seconds: float

    @property
    def batch_seconds(self) -> float:
        """Audio per step and stream: ``train.accum_steps`` micro-batches (repeats of the fixed one)."""
        return len(self.labeled.feats) * self.utt_seconds * self.cfg.train.accum_steps

    @property
    def steps(self) -> dict[str, Callable[[], None]]:
        k = self.cfg.train.accum_steps
        return {"supervised": lambda: self.supervised([self.labeled] * k), "ssl": lambda: self.ssl([self.unlabeled] * k),
                "joint": lambda: self.joint([self.labeled] * k, [self.unlabeled] * k)}


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
    return Bench(cfg, dev, model, optimizer, grad_scaler(dev, cfg.train.amp, cfg.train.amp_dtype),
                 Labeled(lab[0].to(dev), lab[1].to(dev), targets),
                 Unlabeled(unl[0].to(dev), unl[1].to(dev), [f"bench-{i}" for i in range(len(unl[0]))]), utt_seconds)


def _random_targets(cfg: Config, lens: torch.Tensor, gen: torch.Generator):
    """HuBERT's per-utterance cluster ids for the bench's unlabeled batch (ids ``bench-<i>``): random, which costs
    the loss what real ones do."""
    if cfg.ssl.loss != "hubert":
        return None
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


def peak_memory(fn: Callable[[], object], device: torch.device) -> int:
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


def _cpu_flash_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode counts the CUDA attention kernels but not the CPU's; the CPU kernel does the same work.
CPU_ATTENTION_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention,
                       torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
                           _cpu_flash_attention_backward}


def count_flops(fn: Callable[[], object]) -> int:
    """The FLOPs ``FlopCounterMode`` counts in one call of ``fn`` (its forward and backward passes alike)."""
    counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, trials: int = 10,
                min_seconds: float = 0.05) -> float:
    """FLOP/s: the best of ``trials`` timed runs of n×n by n×n matmuls in ``dtype`` on ``device``, each run
    repeating the product for at least ``min_seconds`` (n: 8192 on CUDA, 2048 elsewhere)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(device, dtype) for _ in range(2))
    out = torch.empty_like(a)

    def timed(reps: int) -> float:
        _sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        _sync(device)
        return time.perf_counter() - start

    timed(1)  # the first call pays for kernel selection and library set-up
    reps = max(1, math.ceil(min_seconds / timed(1)))
    return 2 * n ** 3 * reps / min(timed(reps) for _ in range(trials))


def step_costs(cfg: Config, repeats: int = 10, batch_seconds: float = 60.0, utt_seconds: float = 5.0,
               device: str | torch.device | None = None) -> dict:
    """Median seconds of each step kind over ``repeats`` interleaved rounds (after one warm-up round), then
    each kind's peak memory and FLOPs in untimed passes, and the matmul peak of the step's precision."""
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
    flops = {name: count_flops(fn) for name, fn in steps.items()}
    dtype = amp_dtype(b.device, cfg.train.amp, cfg.train.amp_dtype) or torch.float32
    matmul = matmul_peak(b.device, dtype)
    med = {k: statistics.median(v) for k, v in times.items()}
    audio = b.batch_seconds
    return {"parameters": count_parameters(b.model), "batch_seconds": audio, "device": str(b.device),
            "threads": torch.get_num_threads(), "repeats": repeats, "dtype": str(dtype).removeprefix("torch."),
            "median_seconds": med, "audio_s_per_s": {k: audio / v for k, v in med.items()},
            "joint_over_sum": med["joint"] / (med["supervised"] + med["ssl"]),
            "peak_bytes": peak, "joint_peak_over_max": peak["joint"] / max(peak["supervised"], peak["ssl"], 1),
            "flops": flops, "flop_per_s": {k: flops[k] / med[k] for k in KINDS}, "matmul_flop_per_s": matmul,
            "utilisation": {k: 100 * flops[k] / med[k] / matmul for k in KINDS}, "ssl_loss": cfg.ssl.loss}


def data_wait(cfg: Config, data_dir: str | Path, steps: int = 20) -> dict:
    """The share of step time spent fetching batches from the real pipeline on ``data_dir``, per step kind,
    over ``steps`` interleaved steps of each kind after one warm-up round (which starts the loader workers)."""
    from bljust.engine.run import Run

    # Run sets torch's threads from the config; the bench's own setting (--threads) holds for both parts.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_threads=torch.get_num_threads()))
    with tempfile.TemporaryDirectory(prefix="bljust-bench-") as run_dir:
        run = Run(cfg, data_dir, run_dir, method="bench", ssl=True)
        try:
            run.add_stream("labeled", run.labeled)
            run.add_stream("unlabeled", run.load_unlabeled(), seed_offset=1)
            s = Steps(cfg, run.device, run.model, run.optimizer, run.scaler)

            def fetch(name: str) -> dict:
                while (batch := run.next_batch(name)) is None:  # a batch none of whose audio loaded
                    pass
                return batch

            def labeled(batch: dict) -> Labeled:
                feats, lens = run.features(batch, stream=0)
                return Labeled(feats, lens, [run.tokenizer.encode(t) for t in batch["texts"]])

            def unlabeled(batch: dict) -> Unlabeled:
                # no SpecAugment, as in the methods' g: the SSL loss masks its own input
                feats, lens = run.features(batch, stream=1, augment=False)
                return Unlabeled(feats, lens, batch["ids"])

            take = {"supervised": lambda lab: s.supervised([labeled(b) for b in lab]),
                    "ssl": lambda unl: s.ssl([unlabeled(b) for b in unl]),
                    "joint": lambda lab, unl: s.joint([labeled(b) for b in lab], [unlabeled(b) for b in unl])}
            wait = {k: 0.0 for k in KINDS}
            total = {k: 0.0 for k in KINDS}
            audio = {k: 0.0 for k in KINDS}
            for r in range(steps + 1):
                for kind in KINDS:
                    _sync(run.device)
                    start = time.perf_counter()
                    batches = [[fetch(name) for _ in range(cfg.train.accum_steps)] for name in STREAMS[kind]]
                    fetched = time.perf_counter()
                    take[kind](*batches)
                    _sync(run.device)
                    if r:  # the first round starts the loader workers
                        wait[kind] += fetched - start
                        total[kind] += time.perf_counter() - start
                        audio[kind] += sum(batch["seconds"] for stream in batches for batch in stream)
        finally:
            run.close()
    return {"data_dir": str(data_dir), "steps": steps, "num_workers": cfg.data.num_workers,
            "wait_seconds": wait, "step_seconds": {k: total[k] / steps for k in KINDS},
            "audio_seconds": {k: audio[k] / steps for k in KINDS},
            "wait_percent": {k: 100 * wait[k] / total[k] for k in KINDS}}


def _goal(met: bool) -> str:
    return "met" if met else "not met"


def main(config: str | None, overrides: list[str], repeats: int, data: str | None = None,
         data_steps: int = 20) -> str:
    """The report; the device is ``train.device`` (``--set train.device=cpu|cuda``; auto picks CUDA when present).
    With ``data``, the data wait of ``data_steps`` steps per kind on that data directory."""
    cfg = load_config(config, overrides)
    r = step_costs(cfg, repeats=repeats)
    d = data_wait(cfg, data, data_steps) if data is not None else None
    scale, unit = (1e12, "TFLOP/s") if r["device"].startswith("cuda") else (1e9, "GFLOP/s")
    lines = [f"model: {cfg.model.arch} d{cfg.model.d_model}×{cfg.model.num_layers}, {r['parameters'] / 1e6:.2f} M "
             f"parameters (incl. the {r['ssl_loss']} head); batch {r['batch_seconds']:.0f} s of audio; "
             f"{r['device']}, {r['threads']} thread(s), {r['dtype']}; median of {r['repeats']} interleaved repeats; "
             f"peak memory above the live model, optimiser state and batches, FLOPs (FlopCounterMode: matmuls, "
             f"convolutions, attention) each in a separate untimed pass",
             f"| step | seconds | audio-s per s | peak MiB | GFLOP per step | {unit} | utilisation % | data wait % |",
             "|---|---|---|---|---|---|---|---|"]
    for k in KINDS:
        wait = f"{d['wait_percent'][k]:.1f}" if d is not None else "–"
        lines.append(f"| {k} | {r['median_seconds'][k]:.3f} | {r['audio_s_per_s'][k]:.0f} | "
                     f"{r['peak_bytes'][k] / MIB:.1f} | {r['flops'][k] / 1e9:.2f} | {r['flop_per_s'][k] / scale:.2f} | "
                     f"{r['utilisation'][k]:.1f} | {wait} |")
    lines.append(f"utilisation: achieved FLOP/s over the best {r['dtype']} square-matmul rate measured here, "
                 f"{r['matmul_flop_per_s'] / scale:.1f} {unit}")
    lines.append(f"joint step / (supervised step + SSL step) = {r['joint_over_sum']:.3f} "
                 f"(goal ≤ {JOINT_GOAL}: {_goal(r['joint_over_sum'] <= JOINT_GOAL)})")
    lines.append(f"joint peak / max(supervised peak, SSL peak) = {r['joint_peak_over_max']:.3f}")
    if d is None:
        lines.append("data wait: not measured (pass --data)")
    else:
        worst = max(KINDS, key=lambda k: d["wait_percent"][k])
        lines.append(f"data wait: time blocked fetching batches as a share of step time (fetch + compute), over "
                     f"{d['steps']} interleaved steps per kind on {d['data_dir']} (data.num_workers="
                     f"{d['num_workers']}); mean step there: " + ", ".join(
                         f"{k} {d['step_seconds'][k]:.3f} s for {d['audio_seconds'][k]:.0f} s of audio"
                         for k in KINDS))
        share = d["wait_percent"][worst]
        lines.append(f"data wait goal ≤ {DATA_WAIT_GOAL:g} % of step time: {_goal(share <= DATA_WAIT_GOAL)} "
                     f"(worst: {worst}, {share:.1f} %)")
    return "\n".join(lines)
