"""``Run``: what every training method sets up the same way.

A method's file builds a ``Run`` with its typed state (a dataclass, checkpointed), adds its data
streams, then writes its own loop with the run's helpers: ``next_batches``, ``f_backward``,
``g_backward``, ``no_sync``, ``step``, ``after_step``. The run owns processes and devices, data, tokenizer, model,
optimiser, counters, metrics, validation and checkpoints, so a method differs from the supervised
baseline only where the method differs.

Distributed training runs on DistributedDataParallel (``engine.dist``): gradients are summed over the
processes during the backward pass. A joint step back-propagates f under ``no_sync`` and g after it,
so one all-reduce carries ∇f + γ∇g (``engine.objectives.penalised_gradients``). Validation, held-out g
and pseudo-label decoding are sharded over the processes and gathered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bljust.checkpoint import CheckpointManager, atomic_save, atomic_write_text, rng_state, set_rng_state
from bljust.config import Config, dump_config, to_dict
from bljust.data.audio import SkippedAudio
from bljust.data.loader import (BatchStream, FilterReport, LazySplit, UtteranceFilter, eval_batches, hold_out,
                                open_lazy_split, speed_perturbed, write_lazy_split)
from bljust.data.manifests import cut_text, load_split
from bljust.data.tokenizer import Tokenizer, tokenizer_from_state, train_tokenizer
from bljust.engine import TrainingFailed
from bljust.engine.dist import (Dist, all_reduce_sum, any_rank, barrier, broadcast, cleanup_distributed, gather,
                                pick_device, setup_distributed, shard, wrap_ddp)
from bljust.engine.objectives import Objectives, f_objective, g_objective, make_features, step_generator
from bljust.engine.optim import build_optimizer, clip_groups
from bljust.engine.precision import amp_dtype, autocast, grad_scaler
from bljust.evaluate import decode_cuts, merge_decoded, score
from bljust.models import count_parameters
from bljust.models.asr import ASRModel
from bljust.ssl_targets import targets_for_run

log = logging.getLogger("bljust.train")

# Test hook: exit abruptly right after this step, as a killed process would.
FAULT_ENV = "BLJUST_FAULT_AFTER_STEP"


@dataclass
class NoState:
    """The state of a method that keeps none beyond the run's counters (supervised)."""


def restore_state(state: object, saved: dict) -> object:
    """``state`` (a method's state dataclass) with the values of its checkpointed ``asdict`` form;
    fields that are dataclasses themselves are rebuilt from their dicts."""
    for f in fields(state):
        if f.name not in saved:
            continue
        current = getattr(state, f.name)
        value = saved[f.name]
        setattr(state, f.name, type(current)(**value) if dataclasses.is_dataclass(current) else value)
    return state


def load_labeled(data_dir: Path, splits: list[str], lazy: bool = False, precomputed_bins: int | None = None) -> CutSet:
    """The union of ``splits`` (``data.labeled_splits``), in their order; an utterance in two of them is an error
    (found as a lazy union streams: ``LabeledUnion``). ``precomputed_bins``: as ``load_split``'s."""
    if lazy:
        return CutSet(LabeledUnion(data_dir, splits, precomputed_bins))
    cuts = [load_split(data_dir, split, precomputed_bins=precomputed_bins) for split in splits]
    seen: dict[str, str] = {}
    for split, split_cuts in zip(splits, cuts):
        for cut in split_cuts:
            if cut.id in seen:
                raise _twice(data_dir, cut.id, seen[cut.id], split)
            seen[cut.id] = split
    return cuts[0] if len(cuts) == 1 else CutSet.from_cuts(c for split_cuts in cuts for c in split_cuts)


def _twice(data_dir: Path, cut_id: str, first: str, second: str) -> ValueError:
    return ValueError(f"{data_dir}: utterance {cut_id} is in both the '{first}' and the '{second}' split of "
                      f"data.labeled_splits; each utterance may train once")


class LabeledUnion:
    """The lazy union of ``splits`` (a re-iterable source of a lazy CutSet); each pass holds the ids it has
    read (not the cuts), to refuse an utterance met twice."""

    def __init__(self, data_dir: Path, splits: list[str], precomputed_bins: int | None = None):
        self.data_dir, self.splits, self.precomputed_bins = data_dir, list(splits), precomputed_bins
        for split in self.splits:  # a missing split is an error now, not at the first pass
            load_split(data_dir, split, lazy=True, precomputed_bins=precomputed_bins)

    def __iter__(self):
        seen: dict[str, str] = {}
        for split in self.splits:
            for cut in load_split(self.data_dir, split, lazy=True, precomputed_bins=self.precomputed_bins):
                if cut.id in seen:
                    raise _twice(self.data_dir, cut.id, seen[cut.id], split)
                seen[cut.id] = split
                yield cut


@dataclass
class Counters:
    """The run's progress; checkpointed, and the basis of every budget and cost figure."""

    step: int = 0
    best: float = math.inf
    best_step: int = 0
    bad_steps: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    """Wall clock of the processes that trained the run, from each one's start (or resume) to its last checkpoint
    (or the end), validation and PL decoding included; brought up to date only where it is read (checkpoint, finish),
    so the training step does no extra work."""
    labeled_seconds: float = 0.0
    unlabeled_seconds: float = 0.0
    labeled_batches: int = 0
    unlabeled_batches: int = 0
    overflow_steps: int = 0
    """fp16 steps the gradient scaler skipped for an overflow (not bad steps: the scaler lowers its factor)."""
    g_heldout_min: float = math.inf
    """The least held-out g seen at validation (the penalty gap's reference)."""


class Run:
    def __init__(self, cfg: Config, data_dir: str | Path, run_dir: str | Path, *, method: str, resume: bool = False,
                 ssl: bool = False, state: type = NoState):
        """``state``: the method's state dataclass (its fields are checkpointed and restored on resume), as
        ``run.method_state``."""
        self._wall_mark = time.time()  # counters.wall_seconds counts from here in this process
        self.cfg, self.method = cfg, method
        self.data_dir, self.run_dir = Path(data_dir), Path(run_dir)
        self.dist = setup_distributed(cfg.train.device, cfg.train.dist_timeout)
        self.device = pick_device(cfg.train.device, self.dist)
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.ckpts = CheckpointManager(self.run_dir, cfg.train.keep_last)
        if self.dist.is_main and not resume:
            self.ckpts.remove_leftovers()  # load_latest does it when resuming
        self.ckpt = self.ckpts.load_latest() if resume else None
        if resume and self.ckpt is None:
            log.warning("--resume: no checkpoint in %s, starting from scratch", self.run_dir)
        if self.ckpt is not None and self.ckpt.get("method") != method:
            raise ValueError(f"{self.run_dir} holds a '{self.ckpt.get('method')}' run, not '{method}'")
        self._log_handler = setup_run_dir(self.run_dir, cfg, self.dist, resume=self.ckpt is not None)
        seed_everything(cfg.train.seed)

        # Units come from the checkpoint on resume: retraining SentencePiece could renumber them.
        self.skipped = SkippedAudio()  # every bad audio file the run met, logged once each
        if self.ckpt is not None:
            self.skipped.load_state_dict(self.ckpt["skipped_audio"])
        self.dropped: dict[str, int] = {}  # utterances the filters dropped, by reason (all splits)
        self.bad_batches: list[dict] = [] if self.ckpt is None else list(self.ckpt["bad_batches"])
        self._step_ids: list[str] = []  # the cut ids of the step being taken
        self.total_steps = 0
        # data.features=precomputed: every split the run reads carries the features `bljust features` stored
        self.precomputed_bins = cfg.features.num_mel_bins if cfg.data.features == "precomputed" else None
        self.labeled = load_labeled(self.data_dir, cfg.data.labeled_splits, lazy=cfg.data.lazy,
                                    precomputed_bins=self.precomputed_bins)
        dev = load_split(self.data_dir, "dev", precomputed_bins=self.precomputed_bins)
        if self.ckpt is not None:
            self.tokenizer: Tokenizer = tokenizer_from_state(self.ckpt["tokenizer"])
        else:
            self.tokenizer = train_tokenizer(cfg.tokenizer, [t for c in self.labeled if (t := cut_text(c))])
        self.ssl_targets = None
        if ssl and cfg.ssl.loss == "hubert":
            self.ssl_targets = targets_for_run(cfg.ssl, self.data_dir)
            saved = self.ckpt.get("ssl_targets") if self.ckpt is not None else None
            if saved is not None and saved != self.ssl_targets.key:
                raise ValueError(f"{self.run_dir}: the checkpoint trained on HuBERT targets {saved}, but "
                                 f"{self.ssl_targets.path} holds {self.ssl_targets.key}; resume with the same targets")
            log.info("HuBERT targets %s: %d clusters, %s", self.ssl_targets.path, self.ssl_targets.clusters,
                     ", ".join(f"{k} {v:.3g}" for k, v in self.ssl_targets.meta.get("health", {}).items()))
        self.model = ASRModel(cfg, self.tokenizer.vocab_size, ssl=ssl, ssl_targets=self.ssl_targets).to(self.device)
        if cfg.data.speed_perturb:  # before filtering: a slowed copy can outgrow the duration limit
            self.labeled = speed_perturbed(self.labeled, cfg.data.speed_perturb)
        self.labeled = self.filter(self.labeled, "labeled", labeled=True)
        self.dev = dev.filter(lambda c: bool(cut_text(c))).to_eager()
        if cfg.features.normalize == "global" and self.ckpt is None:
            sample = self.labeled.subset(first=500)  # the first 500 cuts, or all when fewer; lazy or not
            self.model.frontend.set_global_stats(eval_batches(sample, 120.0, skipped=self.skipped))

        self.streams: dict[str, BatchStream] = {}
        self.heldout = CutSet.from_cuts([])  # unlabeled utterances no method trains on (load_unlabeled)
        self.optimizer = build_optimizer(self.model.param_groups(cfg.optim.lr), cfg.optim)
        self.counters = Counters()
        self.method_state = state()
        self.scaler = grad_scaler(self.device, cfg.train.amp, cfg.train.amp_dtype)
        # train.amp's default resolves per machine (bf16 where the CPU or GPU computes it natively): a run resumed
        # on another machine type changes precision midway, which its numbers should not hide.
        dtype = amp_dtype(self.device, cfg.train.amp, cfg.train.amp_dtype) or torch.float32
        self.precision = str(dtype).removeprefix("torch.")
        if self.ckpt is not None and self.ckpt.get("precision", self.precision) != self.precision:
            log.warning("%s trained in %s up to step %d; it goes on in %s on this %s (train.amp=%s, "
                        "train.amp_dtype=%s). Set train.amp and train.amp_dtype to pin the precision across machines",
                        self.run_dir, self.ckpt["precision"], self.ckpt["counters"]["step"], self.precision,
                        self.device.type, cfg.train.amp, cfg.train.amp_dtype)
        if self.ckpt is not None:
            self.model.load_state_dict(self.ckpt["model"])
            self.optimizer.load_state_dict(self.ckpt["optimizer"])
            known = {f.name for f in fields(Counters)}
            self.counters = Counters(**{k: v for k, v in self.ckpt["counters"].items() if k in known})
            restore_state(self.method_state, self.ckpt.get("method_state", {}))
            if self.scaler is not None and self.ckpt.get("grad_scaler"):
                self.scaler.load_state_dict(self.ckpt["grad_scaler"])
        # The evaluated model: an exponential moving average of the weights (train.ema_decay), or the model itself.
        self.ema = None
        if cfg.train.ema_decay > 0:
            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
            if self.ckpt is not None:
                self.ema.load_state_dict(self.ckpt["ema"])
        self.eval_model = self.ema.module if self.ema is not None else self.model
        # f and g go through one forward, the call DDP wraps (engine.objectives); self.model stays the bare model
        self.net = wrap_ddp(Objectives(self.model), self.dist, self.device)
        if cfg.train.compile:
            compile_encoder(self.model.encoder, cfg.train.compile)
        self.metrics = MetricsLogger(self.run_dir, self.dist.is_main, resume_step=self.counters.step)
        self._window = (0.0, time.time())
        self._fault_step = int(os.environ.get(FAULT_ENV, "0"))
        self.bar = None

    # ------------------------------------------------------------ data

    def _utterance_filter(self, split: str, labeled: bool) -> UtteranceFilter:
        d = self.cfg.data
        # CTC needs an encoder frame per unit (and per repeat); a transducer emits any number of units per
        # frame, so its loss is finite for every transcript (a greedy pseudo-label can have more units than frames).
        return UtteranceFilter(split, min_seconds=d.min_utterance_seconds,
                               max_seconds=min(d.max_utterance_seconds, d.max_duration),
                               tokenizer=self.tokenizer if labeled else None,
                               output_frames=self.model.output_frames if self.model.transducer is None else None,
                               skipped=self.skipped)

    def _count_dropped(self, report: FilterReport) -> None:
        for _, reason in report.dropped:
            key = reason.split(":")[0]
            self.dropped[key] = self.dropped.get(key, 0) + 1

    def filter(self, cuts: CutSet, split: str, labeled: bool) -> CutSet:
        """The cuts of ``split`` that can train (``filter_cuts``), lazy under ``data.lazy``."""
        if self.cfg.data.lazy:
            return self._write_lazy(cuts, split, labeled).cuts
        keep = self._utterance_filter(split, labeled)
        kept = CutSet.from_cuts([cut for cut in cuts if keep(cut)])
        self._count_dropped(keep.finish())
        return kept

    def _write_lazy(self, cuts: CutSet, split: str, labeled: bool, heldout_fraction: float = 0.0,
                    heldout_max_seconds: float = 0.0) -> LazySplit:
        """``write_lazy_split`` of ``cuts`` to ``RUN/lazy/{split}_cuts.jsonl.gz``, by the first process (the
        others wait and read it); rewritten at every start, a resumed one too, from the same data and units."""
        path = self.run_dir / "lazy" / f"{split}_cuts.jsonl.gz"
        written, shared = None, None
        if self.dist.is_main:
            written = write_lazy_split(cuts, path, self._utterance_filter(split, labeled),
                                       heldout_fraction=heldout_fraction, heldout_max_seconds=heldout_max_seconds)
            shared = (written.report, [c.to_dict() for c in written.heldout])
        report, heldout = broadcast(shared, self.dist)
        if written is None:
            held = CutSet.from_dicts(heldout)
            written = LazySplit(open_lazy_split(path, held), report, held)
        self._count_dropped(report)
        return written

    def load_unlabeled(self) -> CutSet:
        """The unlabeled split to train on: filtered, less the held-out utterances (kept in ``self.heldout``),
        which every method leaves out alike. Under ``data.lazy`` both are chosen in one streaming pass, and
        only the held-out ones are held."""
        d = self.cfg.data
        if d.lazy:
            split = self._write_lazy(load_split(self.data_dir, "unlabeled", lazy=True,
                                                precomputed_bins=self.precomputed_bins), "unlabeled", labeled=False,
                                     heldout_fraction=d.heldout_unlabeled_fraction,
                                     heldout_max_seconds=d.heldout_unlabeled_max_seconds)
            cuts, self.heldout, remaining = split.cuts, split.heldout, split.num_cuts
        else:
            cuts = self.filter(load_split(self.data_dir, "unlabeled", precomputed_bins=self.precomputed_bins),
                               "unlabeled", labeled=False)
            cuts, self.heldout = hold_out(cuts, d.heldout_unlabeled_fraction, d.heldout_unlabeled_max_seconds)
            remaining = len(cuts)
        if self.ssl_targets is not None:
            missing = self.ssl_targets.missing(c.id for c in cuts + self.heldout)
            if missing:
                raise ValueError(f"{self.ssl_targets.path} has no targets for {len(missing)} unlabeled utterance(s) of "
                                 f"{self.data_dir} (e.g. {', '.join(missing[:3])}); it was made for another split")
        if remaining == 0:
            raise ValueError(f"{self.data_dir}: no unlabeled utterance left after holding out "
                             f"{len(self.heldout)} for g_heldout; lower data.heldout_unlabeled_fraction")
        return cuts

    def add_stream(self, name: str, cuts: CutSet, seed_offset: int = 0) -> BatchStream:
        """An endless batch stream, restored to its checkpointed position on resume."""
        d = self.cfg.data
        stream = BatchStream(cuts, name, max_duration=d.max_duration, num_buckets=d.num_buckets,
                             seed=self.cfg.train.seed + seed_offset, world_size=self.dist.world_size,
                             rank=self.dist.rank, num_workers=d.num_workers, buffer_size=d.buffer_size,
                             skipped=self.skipped)
        if self.ckpt is not None and name in self.ckpt["streams"]:
            stream.load_state_dict(self.ckpt["streams"][name])
        self.streams[name] = stream
        return stream

    def group_params(self, *names: str) -> list[list[torch.Tensor]]:
        groups = {g["name"]: g["params"] for g in self.optimizer.param_groups}
        return [groups[n] for n in names]

    def log_plan(self, text: str) -> None:
        if self.dist.is_main:
            log.info("%s plan: %s", self.method, text)
            self.metrics.log(self.counters.step, "plan", {"text": text})

    def start(self, total_steps: int, g_steps: int | None = None) -> None:
        """Restore the RNG (last, after everything that draws from it was built) and print the plan.

        ``g_steps``: the steps of the run that take g (default: all), over which g's own schedules
        (the Gumbel temperature) run."""
        self.total_steps = total_steps
        self.g_steps = total_steps if g_steps is None else g_steps
        if self.ckpt is not None:
            set_rng_state(self.ckpt["rng"][self.dist.rank])
            log.info("resumed from step %d", self.counters.step)
            # The loaded checkpoint duplicates model and optimiser tensors; streams added
            # later (pseudo-labeling rounds) are new, so nothing needs it past this point.
            self.ckpt = None
        if self.dist.is_main:
            # An epoch of a stream is one pass of its sampler over its split; every stream
            # cycles, so a shorter stream simply starts its next epoch.
            streams = "; ".join(f"{n}: {s.seconds / 3600:.2f} h, one epoch = {s.batches_per_epoch()} batches"
                                for n, s in self.streams.items())
            log.info("%s: %s, %.2f M parameters, %d process(es), up to %.0f s of audio per batch and process; "
                     "streams (each cycles when exhausted): %s; dev: %d utterances", self.method,
                     self.cfg.model.arch, count_parameters(self.model) / 1e6, self.dist.world_size,
                     self.cfg.data.max_duration, streams, len(self.dev))
        self.bar = progress_bar(total_steps, self.counters.step, self.dist.is_main and sys.stderr.isatty(), self.method)

    # ------------------------------------------------------------ one step

    def next_batch(self, name: str) -> dict | None:
        """The next batch of a stream, or None on every rank when any rank's batch failed to load entirely."""
        batch = next(self.streams[name])
        if any_rank(not batch["ids"], self.dist, self.device):
            self._step_ids = []
            return None
        self._step_ids += batch["ids"]
        seconds = batch["seconds"]
        if name.startswith("unlabeled"):
            self.counters.unlabeled_seconds += seconds
            self.counters.unlabeled_batches += 1
        else:
            self.counters.labeled_seconds += seconds
            self.counters.labeled_batches += 1
        self._window = (self._window[0] + seconds, self._window[1])
        return batch

    def next_batches(self, name: str) -> list[dict] | None:
        """One optimiser step's batches of a stream (``train.accum_steps`` of them), or None on every rank when
        any rank's batch failed to load entirely (the step is then not taken)."""
        batches = [self.next_batch(name) for _ in range(self.cfg.train.accum_steps)]
        return None if any(b is None for b in batches) else batches

    def features(self, batch: dict, stream: int = 0, augment: bool = True,
                 micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        gen = step_generator(self.cfg.train.seed, self.counters.step, self.dist.rank, stream + 8 * micro)
        return make_features(self.model, batch, self.device, train=augment, cfg=self.cfg, generator=gen)

    def _micro(self, i: int, n: int):
        """Micro-batches before a step's last keep their gradients on this process; the last one's backward
        all-reduces the sum."""
        return self.no_sync() if i < n - 1 else contextlib.nullcontext()

    def f_backward(self, batches: list[dict], scale: float = 1.0) -> float:
        """Forward and backward passes of ``scale``·f over one step's labeled batches, one at a time, and f's
        global value. f is per target token of all the step's batches on all processes, so accumulating
        micro-batches gives the step of one batch holding them all."""
        t = self.cfg.train
        targets = [[self.tokenizer.encode(x) for x in b["texts"]] for b in batches]
        tokens = all_reduce_sum(float(sum(len(x) for tg in targets for x in tg)), self.dist, self.device)
        total = 0.0
        for i, (batch, tg) in enumerate(zip(batches, targets)):
            feats, lens = self.features(batch, stream=0, micro=i)
            with self._micro(i, len(batches)):
                f = f_objective(self.net, feats, lens, tg, self.dist, self.device, t.amp, t.amp_dtype, tokens=tokens)
                self.backward(f if scale == 1.0 else scale * f)
            total += f.item()
        return all_reduce_sum(total, self.dist, self.device)

    def g_backward(self, batches: list[dict]) -> tuple[float, dict]:
        """Forward and backward passes of g over one step's unlabeled batches, one at a time; g's global value
        and its health statistics on this process (means over the batches). Each batch's g is per predicted
        position of that batch on all processes (the positions are drawn in the forward pass), and the step's
        g is the mean over its batches."""
        n = len(batches)
        total, stats = 0.0, {}
        for i, batch in enumerate(batches):
            with self._micro(i, n):
                g, batch_stats = self._g_loss(batch, micro=i, step_batches=n)
                self.backward(g / n if n > 1 else g)
            total += g.item() / n
            for k, v in batch_stats.items():
                stats[k] = stats.get(k, 0.0) + float(v) / n
        return all_reduce_sum(total, self.dist, self.device), stats

    def _g_loss(self, batch: dict, micro: int = 0, step_batches: int = 1) -> tuple[torch.Tensor, dict]:
        """g on an unlabeled batch (micro-batch ``micro`` of a step of ``step_batches``): the self-supervised
        loss per predicted position of the global batch."""
        # No SpecAugment here: the SSL loss masks its own input, and its targets (BEST-RQ labels,
        # CPC/wav2vec 2.0 targets) must come from clean features.
        feats, lens = self.features(batch, stream=1, augment=False, micro=micro)
        # Schedules inside g (the Gumbel temperature) follow the run's own g steps: next_batches counted the
        # step's batches, so this is g step unlabeled_batches / step_batches - 1, from a checkpointed counter.
        self.model.ssl.set_progress(self.counters.unlabeled_batches // step_batches - 1, self.g_steps)
        gen = step_generator(self.cfg.train.seed, self.counters.step, self.dist.rank, stream=2 + 8 * micro)
        t = self.cfg.train
        return g_objective(self.net, feats, lens, gen, self.dist, self.device, t.amp, ids=batch["ids"],
                           amp_dtype=t.amp_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate ``loss`` (scaled by the gradient scaler in fp16); with several processes DDP sums the
        gradients during this pass, unless it runs under ``no_sync``."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def no_sync(self):
        """Keep the gradients of the backward passes inside on this process, to be summed with the next
        synced pass's (a joint step's f before its g)."""
        return self.net.no_sync() if self.dist.enabled else contextlib.nullcontext()

    @property
    def logging(self) -> bool:
        """Whether the step being taken writes its metrics (health metrics are computed only then)."""
        return (self.counters.step + 1) % self.cfg.train.log_every == 0

    def mean_norms(self, *norms: float) -> list[float]:
        """Norms measured on this process's batches → their quadratic mean over the processes, equal on every
        process (one all-reduce): a quantity that steers training must not differ between ranks."""
        if not self.dist.enabled:
            return list(norms)
        squares = torch.tensor([n * n for n in norms], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(squares)
        return (squares / self.dist.world_size).sqrt().tolist()

    def step(self, losses_ok: bool, lrs: dict[str, float]) -> tuple[bool, dict[str, float]]:
        """Clip each group's (summed) gradient on its own and apply an optimiser step with per-group learning rates.

        Groups missing from ``lrs`` are not updated (their gradients are dropped). A step with a non-finite
        loss or gradient on any rank is skipped everywhere, logged and counted; in fp16, a finite loss with
        a non-finite gradient is the scaler's overflow, counted apart, and the scaler lowers its factor.
        Returns whether it stepped and the pre-clip gradient norm of each group that stepped
        (``grad_norm_theta``, ``grad_norm_phi``, ``grad_norm_eta``).
        """
        stepping = {}
        for group in self.optimizer.param_groups:
            if group["name"] in lrs:
                group["lr"] = lrs[group["name"]]
                stepping[group["name"]] = group["params"]
            else:
                for p in group["params"]:
                    p.grad = None
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norms = clip_groups(stepping, self.cfg.optim.clip_grad_norm)
        values = dict(zip(norms, torch.stack(list(norms.values())).tolist())) if norms else {}
        losses_ok = not any_rank(not losses_ok, self.dist, self.device)
        ok = losses_ok and all(math.isfinite(v) for v in values.values())  # grads are summed: equal on every rank
        if ok:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not ok and self.scaler is not None and losses_ok:
            self.counters.overflow_steps += 1
            log.debug("step %d: fp16 gradient overflow, scale now %g", self.counters.step + 1, self.scaler.get_scale())
        elif not ok:
            self.skip_step()
        return ok, {f"grad_norm_{name}": v for name, v in values.items()}

    def skip_step(self) -> None:
        """Count and log a step skipped for a non-finite loss or gradient, naming its batch's utterances; stop
        the run once more than ``train.max_bad_step_fraction`` of its steps are lost."""
        c, limit = self.counters, self.cfg.train.max_bad_step_fraction * max(self.total_steps, 1)
        c.bad_steps += 1
        ids = list(self._step_ids)
        # every rank skips together (see step), so every rank joins this gather
        ids = [i for rank_ids in gather(ids, self.dist) for i in rank_ids]
        log.warning("step %d skipped: non-finite loss or gradient; its batch: %s", c.step + 1, " ".join(ids))
        if len(self.bad_batches) < 20:
            self.bad_batches.append({"step": c.step + 1, "ids": ids})
        if c.bad_steps > limit:
            shown = "; ".join(f"step {b['step']}: {' '.join(b['ids'])}" for b in self.bad_batches)
            raise TrainingFailed(
                f"{c.bad_steps} of {c.step + 1} steps so far skipped for a non-finite loss or gradient, more than "
                f"train.max_bad_step_fraction={self.cfg.train.max_bad_step_fraction} of the run's {self.total_steps} "
                f"steps: the data or the learning rate is broken ('bljust corpus check' reads every file). Skipped "
                f"batches (cut ids): {shown}")

    def after_step(self, train_values: dict, phase: str = "", started: float | None = None,
                   decode: bool = True) -> None:
        """Count the step, log, validate (without decoding dev when ``decode`` is off, e.g. while the
        CTC head is untrained), checkpoint, as configured."""
        c, t = self.counters, self.cfg.train
        c.step += 1
        self._step_ids = []
        if started is not None:
            c.train_seconds += time.time() - started
        self.bar.update(1)
        if c.step % t.log_every == 0:
            audio = all_reduce_sum(self._window[0], self.dist, self.device)
            speed = audio / max(time.time() - self._window[1], 1e-9)
            self._window = (0.0, time.time())
            values = {**train_values, "audio_s_per_s": speed, **self._position()}
            if phase:
                values["phase"] = phase
            self.metrics.log(c.step, "train", values)
            shown = {k: f"{v:.3f}" for k, v in train_values.items() if k in ("f", "g", "loss", "gamma")}
            self.bar.set_postfix(**({"phase": phase} if phase else {}), **shown, audio_s_per_s=f"{speed:.0f}")
        validated = c.step % t.valid_every == 0
        if validated:
            self.validate(decode)
        if validated or c.step % t.checkpoint_every == 0:
            self.checkpoint()
        if self._fault_step and c.step == self._fault_step:
            os._exit(17)

    def _position(self) -> dict:
        """Cumulative batches and training seconds: the x-axes of compute-matched curves."""
        c = self.counters
        return {"labeled_batches": c.labeled_batches, "unlabeled_batches": c.unlabeled_batches,
                "train_seconds": c.train_seconds}

    # ------------------------------------------------------------ validation and checkpoints

    def validate(self, decode: bool = True) -> None:
        """g on the held-out unlabeled audio (methods with an SSL head) and, with ``decode``, dev loss and greedy
        WER/CER, each sharded over the processes; rank 0 logs them and keeps best.pt by the configured metric."""
        c = self.counters
        values = self.heldout_g() if self.model.ssl is not None and len(self.heldout) else {}
        if decode:
            result = score(self.decode(self.dev))  # every rank scores the gathered hypotheses alike
            values.update({k: result[k] for k in ("loss", "wer", "cer")})
            value = result[self.cfg.train.best_metric]
            if value < c.best:
                c.best, c.best_step = value, c.step
                if self.dist.is_main:
                    self.save_model(self.run_dir / "best.pt", result)
            if self.dist.is_main:
                log.info("step %d dev: loss %.3f WER %.2f%% CER %.2f%%", c.step, result["loss"],
                         100 * result["wer"], 100 * result["cer"])
        if values:
            self.metrics.log(c.step, "dev", {**values, **self._position()})

    def decode(self, cuts: CutSet, local: bool = False, **kwargs) -> dict:
        """``evaluate.decode_cuts`` of ``cuts`` by the evaluated model (the weights' average with
        ``train.ema_decay``), sharded over the processes: every rank gets the gathered result, or with ``local``
        only its own share's."""
        mine = decode_cuts(self.eval_model, self.tokenizer, CutSet.from_cuts(shard(list(cuts), self.dist)), self.device,
                           max_duration=self.cfg.data.max_duration * 2, amp=self.cfg.train.amp, skipped=self.skipped,
                           **kwargs)
        return mine if local or not self.dist.enabled else merge_decoded(gather(mine, self.dist))

    @torch.no_grad()
    def heldout_g(self) -> dict:
        """g on the held-out unlabeled utterances, in eval mode, each batch with the same masks at every
        validation (seeded by its index in this process's share): the lower level's value free of training
        noise, and its gap to the least value seen."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0.0
        mine = CutSet.from_cuts(shard(list(self.heldout), self.dist))
        for i, batch in enumerate(eval_batches(mine, self.cfg.data.max_duration, skipped=self.skipped)):
            if not batch["ids"]:
                continue
            feats, lens = make_features(self.model, batch, self.device, train=False, cfg=self.cfg)
            with autocast(self.device, self.cfg.train.amp, self.cfg.train.amp_dtype):
                loss_sum, n, _ = self.model.ssl(self.model.encoder, feats, lens,
                                                torch.Generator().manual_seed(i * self.dist.world_size + self.dist.rank),
                                                ids=batch["ids"])
            total, count = total + float(loss_sum), count + float(n)
        self.model.train(was_training)
        total, count = all_reduce_sum(total, self.dist, self.device), all_reduce_sum(count, self.dist, self.device)
        g = total / max(count, 1.0)
        self.counters.g_heldout_min = min(self.counters.g_heldout_min, g)
        return {"g_heldout": g, "penalty_gap_heldout": g - self.counters.g_heldout_min}

    def _tick_wall(self) -> None:
        now = time.time()
        self.counters.wall_seconds += now - self._wall_mark
        self._wall_mark = now

    def checkpoint(self) -> None:
        self._tick_wall()  # a resumed run then counts the validation that preceded this checkpoint
        rngs = gather(rng_state(), self.dist)
        if self.dist.is_main:
            self.ckpts.save(self.counters.step, {
                "method": self.method, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "streams": {n: s.state_dict() for n, s in self.streams.items()}, "rng": rngs,
                "counters": vars(self.counters).copy(), "method_state": dataclasses.asdict(self.method_state),
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "skipped_audio": self.skipped.state_dict(), "bad_batches": self.bad_batches,
                "config": to_dict(self.cfg), "tokenizer": self.tokenizer.state_dict(),
                "ssl_targets": self.ssl_targets.key if self.ssl_targets is not None else None,
                "precision": self.precision})
        barrier(self.dist)

    def save_model(self, path: Path, dev: dict) -> None:
        """A self-contained model for evaluation and transcription: no optimiser, no SSL head."""
        atomic_save({"model": self.eval_model.inference_state_dict(), "config": to_dict(self.cfg),
                     "tokenizer": self.tokenizer.state_dict(), "method": self.method, "step": self.counters.step,
                     "dev": {k: dev[k] for k in ("loss", "wer", "cer")}}, path)

    def finish(self, extra: dict | None = None) -> dict:
        """Validate and checkpoint at the end (unless the last step just did), write summary.json."""
        c = self.counters
        if c.step % self.cfg.train.valid_every != 0:
            self.validate()
            self.checkpoint()
        if self.bar is not None:
            self.bar.close()
        self._tick_wall()
        w = self.dist.world_size
        labeled_total = sum(cut.duration for cut in self.labeled)
        summary = {
            "method": self.method, "steps": c.step, "best_step": c.best_step,
            f"best_dev_{self.cfg.train.best_metric}": c.best, "bad_steps": c.bad_steps,
            **({"fp16_overflow_steps": c.overflow_steps} if self.scaler is not None else {}),
            "skipped_audio": self.skipped.counts(), "skipped_audio_loads": self.skipped.hits,
            "dropped_utterances": dict(sorted(self.dropped.items())), "parameters": count_parameters(self.model),
            "inference_parameters": sum(p.numel() for n, p in self.model.named_parameters() if not n.startswith("ssl.")),
            "train_seconds": c.train_seconds, "wall_seconds": c.wall_seconds, "precision": self.precision,
            "labeled_hours_processed": c.labeled_seconds * w / 3600,
            "unlabeled_hours_processed": c.unlabeled_seconds * w / 3600,
            "labeled_passes": c.labeled_seconds * w / labeled_total,
            "labeled_batches": c.labeled_batches, "unlabeled_batches": c.unlabeled_batches,
            **({"ssl_targets": {"path": str(self.ssl_targets.path), **self.ssl_targets.meta}}
               if self.ssl_targets is not None else {}),
            **(extra or {}),
        }
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            log.info("done: %s", summary)
        return summary

    def close_streams(self, *keep: str) -> None:
        """End the loader workers of every stream but ``keep``: call when a phase stops reading them."""
        for name, stream in self.streams.items():
            if name not in keep:
                stream.close()

    def close(self) -> None:
        self.close_streams()
        self.metrics.close()
        if self._log_handler is not None:
            logging.getLogger("bljust").removeHandler(self._log_handler)
            self._log_handler.close()
        cleanup_distributed(self.dist)



def compile_encoder(encoder: torch.nn.Module, backend: str) -> None:
    """Compile the encoder's repeated blocks in place (``nn.Module.compile``: parameters, state-dict keys and
    DDP's gradient hooks stay as they are), with dynamic shapes since every batch has its own length.

    The blocks, not the whole model: they hold nearly all the compute, one compiled graph serves them all,
    and the front-end's strided convolutions made inductor fail on their symbolic output lengths (torch
    2.13, CPU); an LSTM encoder has no blocks to compile and stays eager."""
    blocks = getattr(encoder, "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        log.warning("train.compile=%s: the %s has no blocks to compile; it runs eagerly", backend,
                    type(encoder).__name__)
        return
    for block in blocks:
        block.compile(backend=backend, dynamic=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class MetricsLogger:
    """Metrics as JSON lines (``metrics.jsonl``) and TensorBoard scalars (``tb/``), rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        if resume_step and self.path.exists():
            # Records past the checkpoint came from the killed run and are about to be redone.
            kept = []
            for ln in self.path.read_text().splitlines():
                if not ln.strip():
                    continue
                try:
                    record = json.loads(ln)
                except json.JSONDecodeError:  # a kill in the middle of a write leaves half a line
                    log.warning("%s: dropped an unreadable (truncated) line: %.80s", self.path, ln)
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(ln)
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))  # a kill here keeps the records
        elif not resume_step:
            self.path.write_text("")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step or None)

    def log(self, step: int, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def setup_run_dir(run_dir: Path, cfg: Config, dist: Dist, resume: bool) -> logging.Handler | None:
    """Create the run directory, refuse to overwrite a run by accident, log to train.log.

    Returns the log file's handler, for the caller to remove when the run ends.
    """
    handler = None
    if dist.is_main:
        if not resume and any((run_dir / "checkpoints").glob("step-*.pt")):
            raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue it, "
                                  f"or choose another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("bljust").addHandler(handler)
    barrier(dist)
    return handler


def progress_bar(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True,
                file=sys.stderr, mininterval=1.0)
