"""Batches of audio: utterance filtering, lhotse bucketing samplers, resumable streams.

Training is counted in steps, not epochs, and every data stream cycles: a stream never runs
dry, so DDP ranks that receive different numbers of batches per epoch never wait on each
other, and the labeled and unlabeled streams of the semi-supervised methods can have any
ratio. A stream's position (epoch, batches consumed) is part of every checkpoint; resuming
replays the sampler (cheap: no audio is read) to the same position.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from torch.utils.data import DataLoader, Dataset

from bljust.data.audio import BadAudio, SkippedAudio, file_problem, load_checked
from bljust.data.precomputed import load_checked_features
from bljust.data.features import num_frames, raw_logmel
from bljust.data.manifests import SAMPLE_RATE, cut_text
from bljust.engine import TrainingFailed

log = logging.getLogger("bljust.data")

# Our cut sets are eager unless data.lazy is set (they are filtered and counted up front).
warnings.filterwarnings("ignore", message=".*with an eagerly read CutSet.*")


@dataclass
class FilterReport:
    """What a filter kept and dropped, with a reason per dropped utterance."""

    split: str
    kept: int = 0
    kept_seconds: float = 0.0
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, max_lines: int = 20) -> str:
        reasons = Counter(r.split(":")[0] for _, r in self.dropped)
        head = f"{self.split}: kept {self.kept} utterances ({self.kept_seconds / 3600:.2f} h)"
        if not self.dropped:
            return head
        lines = [head + f"; dropped {len(self.dropped)}: " + ", ".join(f"{n} {r}" for r, n in reasons.most_common())]
        lines += [f"  {cid}: {reason}" for cid, reason in self.dropped[:max_lines]]
        if len(self.dropped) > max_lines:
            lines.append(f"  ... and {len(self.dropped) - max_lines} more")
        return "\n".join(lines)


def ctc_frames_needed(ids: list[int]) -> int:
    """The fewest output frames CTC needs for ``ids``: one per unit, plus a blank between repeats."""
    return len(ids) + sum(a == b for a, b in zip(ids, ids[1:]))


def training_reason(cut, *, min_seconds: float | None, max_seconds: float | None, needs_text: bool,
                    tokenizer=None, output_frames: Callable[[int], int] | None = None) -> tuple[str, str] | None:
    """(reason, detail) for a cut that cannot train under these settings (its audio aside), else None.

    The rules of ``filter_cuts``, one utterance at a time, for ``bljust corpus check`` too.
    """
    if min_seconds is not None and cut.duration < min_seconds:
        return "too short", f"{cut.duration:.2f} s < {min_seconds} s"
    if max_seconds is not None and cut.duration > max_seconds:
        return "too long", f"{cut.duration:.2f} s > {max_seconds} s"
    text = cut_text(cut)
    if needs_text and not text:
        return "no transcript", ""
    if tokenizer is None or not text:
        return None
    if not tokenizer.can_encode(text):
        return "transcript has units the tokenizer does not know", repr(text)
    if output_frames is not None:
        ids = tokenizer.encode(text)
        needed = ctc_frames_needed(ids)
        n_frames = output_frames(int(num_frames(round(cut.duration * SAMPLE_RATE))))
        if needed > n_frames:
            return "more tokens than encoder frames", (f"{len(ids)} tokens and {needed - len(ids)} repeats need "
                                                       f"{needed} frames > {n_frames}")
    return None


class UtteranceFilter:
    """The rules of ``filter_cuts`` as a predicate that reports as it goes: ``keep(cut)`` says whether
    ``cut`` can train and records it in ``keep.report`` (or in ``skipped``, for a missing or empty file)."""

    def __init__(self, split: str, *, min_seconds: float, max_seconds: float, tokenizer=None,
                 output_frames: Callable[[int], int] | None = None, skipped: SkippedAudio | None = None):
        self.report = FilterReport(split)
        self.min_seconds, self.max_seconds = min_seconds, max_seconds
        self.tokenizer, self.output_frames, self.skipped = tokenizer, output_frames, skipped
        self.sizes: dict[str, int | None] = {}
        """One stat per audio file (``file_problem``); a streaming caller may clear it between recordings."""

    def __call__(self, cut) -> bool:
        problem = file_problem(cut, self.sizes)
        if problem is not None and self.skipped is not None:
            self.skipped.record(problem)
            return False
        if problem is not None:
            reason = f"{problem.reason}: {problem.file}"
        else:
            found = training_reason(cut, min_seconds=self.min_seconds, max_seconds=self.max_seconds,
                                    needs_text=self.tokenizer is not None, tokenizer=self.tokenizer,
                                    output_frames=self.output_frames)
            reason = None if found is None else ": ".join(x for x in found if x)
        if reason is not None:
            self.report.dropped.append((cut.id, reason))
            return False
        self.report.kept += 1
        self.report.kept_seconds += cut.duration
        return True

    def finish(self) -> FilterReport:
        """Log what was dropped; an error when nothing was kept."""
        report = self.report
        if report.dropped:
            log.warning(report.summary())
        if not report.kept:
            raise ValueError(f"no usable utterances left in split '{report.split}': " + report.summary(max_lines=5))
        return report


def filter_cuts(cuts: CutSet, split: str, *, min_seconds: float, max_seconds: float,
                tokenizer=None, output_frames: Callable[[int], int] | None = None,
                skipped: SkippedAudio | None = None) -> tuple[CutSet, FilterReport]:
    """Drop utterances that cannot train, each with a logged reason.

    A missing or empty audio file is found here, by its size, before any reason that trusts the
    manifest; it goes to ``skipped`` (logged once per file) when given. With a tokenizer, the cut
    needs a transcript that maps to known units, and enough encoder output frames for CTC (one per
    unit plus one per repeated unit; CTC's loss is infinite otherwise). The rest of the audio
    checks need the samples and happen where audio is loaded (``load_checked``).
    """
    keep = UtteranceFilter(split, min_seconds=min_seconds, max_seconds=max_seconds, tokenizer=tokenizer,
                           output_frames=output_frames, skipped=skipped)
    kept = [cut for cut in cuts if keep(cut)]
    return CutSet.from_cuts(kept), keep.finish()


def _hash_key(cut_id: str) -> str:
    return hashlib.sha1(cut_id.encode()).hexdigest()


def hold_out(cuts: CutSet, fraction: float, max_seconds: float) -> tuple[CutSet, CutSet]:
    """Split ``cuts`` into (kept, held out): whole utterances, in the order of a hash of their ids,
    until the held-out audio reaches ``fraction`` of the total or ``max_seconds``.

    The choice depends on the cut ids alone: every method, seed and process holds out the same
    utterances, and a run that resumes holds out what it held out before.
    """
    cuts = cuts.to_eager()
    candidates = HeldOutCandidates(max_seconds)
    for cut in cuts:
        candidates.add(cut)
    held = candidates.choose(fraction, sum(c.duration for c in cuts))
    ids = frozenset(held.ids)
    return CutSet.from_cuts([c for c in cuts if c.id not in ids]), held


class HeldOutCandidates:
    """``hold_out``'s choice, made in one pass over a split (eager, or streamed by ``write_lazy_split``),
    holding at most ``max_seconds`` of cuts (plus one).

    ``hold_out`` takes cuts in hash order while the audio taken so far is under its target, and the
    target is at most ``max_seconds``; a cut preceded (in hash order) by ``max_seconds`` of audio already
    seen can never be taken, so it is let go. ``choose`` then applies the target, once the total is known.
    """

    def __init__(self, max_seconds: float):
        self.max_seconds = max_seconds
        # a max-heap by hash (a min-heap of negated hashes) of (hash, place in the stream, cut)
        self._heap: list[tuple[int, int, Cut]] = []
        self._seconds = 0.0
        self._added = 0

    def add(self, cut: Cut) -> None:
        heapq.heappush(self._heap, (-int(_hash_key(cut.id), 16), self._added, cut))
        self._added += 1
        self._seconds += cut.duration
        while self._heap and self._seconds - self._heap[0][2].duration >= self.max_seconds:
            self._seconds -= heapq.heappop(self._heap)[2].duration

    def choose(self, fraction: float, total_seconds: float) -> CutSet:
        """The held-out cuts, as ``hold_out`` picks them from a split of ``total_seconds`` (in stream order)."""
        target = min(fraction * total_seconds, self.max_seconds)
        held, seconds = [], 0.0
        for _, place, cut in sorted(self._heap, reverse=True):  # ascending hash
            if seconds >= target:
                break
            held.append((place, cut))
            seconds += cut.duration
        return CutSet.from_cuts(cut for _, cut in sorted(held, key=lambda x: x[0]))


@dataclass
class LazySplit:
    """A training split written once by ``write_lazy_split`` and read lazily on every pass."""

    cuts: CutSet
    """The training cuts: lazy, read from ``path`` (less the held-out ones) on every pass."""
    report: FilterReport
    """What the filter kept and dropped (the held-out cuts count as kept)."""
    heldout: CutSet
    """The held-out cuts (eager, small)."""

    @property
    def num_cuts(self) -> int:
        return self.report.kept - len(self.heldout)


def write_lazy_split(cuts: CutSet, path: Path, keep: UtteranceFilter, *, heldout_fraction: float = 0.0,
                     heldout_max_seconds: float = 0.0) -> LazySplit:
    """Put ``cuts`` (a lazy set, read once) through ``keep`` and write what it keeps to ``path`` in one pass,
    choosing the held-out cuts (``hold_out``'s choice) on the way; no list of the split's cuts is held.

    The drop report is complete when this returns, as ``filter_cuts``'s is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.jsonl.gz")
    candidates = HeldOutCandidates(heldout_max_seconds) if heldout_fraction > 0 else None
    recording = None
    with CutSet.open_writer(tmp, overwrite=True) as writer:  # never append to a crashed run's file
        for cut in cuts:
            if cut.recording_id != recording:  # a file's cuts come together: one stat each, forgotten after
                recording = cut.recording_id
                keep.sizes.clear()
            if keep(cut):
                writer.write(cut)
                if candidates is not None:
                    candidates.add(cut)
    tmp.replace(path)
    report = keep.finish()
    heldout = candidates.choose(heldout_fraction, report.kept_seconds) if candidates else CutSet.from_cuts([])
    return LazySplit(open_lazy_split(path, heldout), report, heldout)


def open_lazy_split(path: Path, heldout: CutSet) -> CutSet:
    """The lazy training cuts written to ``path``, less ``heldout``."""
    cuts = CutSet.from_file(path)
    return cuts.filter(_NotIn(frozenset(heldout.ids))) if len(heldout) else cuts


@dataclass(frozen=True)
class _NotIn:
    """A predicate of cuts, a named class rather than a lambda so that a lazy set filtered by it pickles."""

    ids: frozenset[str]

    def __call__(self, cut: Cut) -> bool:
        return cut.id not in self.ids


def speed_perturbed(cuts: CutSet, factors: list[float]) -> CutSet:
    """``cuts`` plus one speed-changed copy per factor (lhotse resamples on load; ids get ``_sp<f>``); lazy
    when ``cuts`` is (each copy then reads ``cuts`` anew). A copy has no stored features (the loader
    computes its log-mel from audio): they are dropped first, as lhotse's perturbation would detach
    them from the original cut as well as the copy."""
    source = cuts.drop_features()
    if cuts.is_lazy:
        return sum((source.perturb_speed(f) for f in factors), start=cuts)
    cuts, source = cuts.to_eager(), source.to_eager()
    out = list(cuts)
    for f in factors:
        out += list(source.perturb_speed(f))
    return CutSet.from_cuts(out)


class AudioDataset(Dataset):
    """lhotse-style map dataset: a CutSet batch in, padded waveforms out, or padded raw log-mel
    (``feats``, ``feat_lens``) when the batch's cuts carry precomputed features (``data.features``).

    Audio that fails ``load_checked`` (or stored features that fail ``load_checked_features``) is
    dropped from the batch and listed in ``failed`` (as ``AudioProblem`` fields), so one bad file
    cannot stop a long run or poison a batch; a ``SkippedAudio`` in the trainer's process logs it: a
    worker has no log handlers of the run. In a batch where some cuts have features and others (a
    speed-perturbed copy) have not, the latter's log-mel is computed here from their audio.
    """

    def __getitem__(self, cuts: CutSet) -> dict:
        bins = next((c.features.num_features for c in cuts if c.has_features), None)
        items, ids, texts, durations, failed = [], [], [], [], []
        for cut in cuts:
            try:
                if bins is None:
                    item = torch.from_numpy(load_checked(cut)[0]).float()
                elif cut.has_features:
                    item = torch.from_numpy(load_checked_features(cut, bins))
                else:
                    item = raw_logmel(torch.from_numpy(load_checked(cut)[0]).float(), bins)
            except BadAudio as e:
                failed.append(vars(e.problem).copy())
                continue
            items.append(item)
            ids.append(cut.id)
            texts.append(cut_text(cut))
            durations.append(cut.duration)
        lens = torch.tensor([len(x) for x in items], dtype=torch.long)
        padded = torch.nn.utils.rnn.pad_sequence(items, batch_first=True) if items else torch.zeros(0, 0)
        data = {"wav": padded, "wav_lens": lens} if bins is None else {"feats": padded, "feat_lens": lens}
        return {**data, "ids": ids, "texts": texts, "seconds": float(sum(durations)), "failed": failed}


class _SkipSampler(torch.utils.data.Sampler):
    """Replays a lhotse sampler for one epoch, skipping the batches already consumed.

    The stream sets ``epoch`` and ``skip`` before each pass; the sampler runs in the main process,
    so persistent workers see only the batches it yields.
    """

    def __init__(self, sampler):
        self.sampler, self.epoch, self.skip = sampler, 0, 0

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        return itertools.islice(iter(self.sampler), self.skip, None)


class BatchStream:
    """An endless, resumable stream of training batches over one split.

    ``position`` = (epoch, batches consumed in that epoch) is all that a checkpoint needs.
    Workers persist across epochs and start from a fork server rather than by forking the
    trainer: a forked worker copies the trainer's heap (a gigabyte once autocast caches have
    grown), and a run holds one stream per split. ``close()`` ends them when a phase stops
    reading the stream; the next batch reopens it where it stopped. A lazy ``cuts`` (``data.lazy``) is
    read anew, in file order, by every pass of the sampler, so replaying a position reaches the same batches.
    """

    def __init__(self, cuts: CutSet, name: str, *, max_duration: float, num_buckets: int, seed: int,
                 shuffle: bool = True, world_size: int = 1, rank: int = 0, num_workers: int = 0,
                 buffer_size: int = 20000, skipped: SkippedAudio | None = None):
        self.name = name
        self.skipped = skipped if skipped is not None else SkippedAudio()
        if cuts.is_lazy:  # counted in one streaming pass: a lazy set has no length and is never held
            num_cuts, self.seconds = 0, 0.0
            for cut in cuts:
                num_cuts, self.seconds = num_cuts + 1, self.seconds + cut.duration
        else:
            num_cuts, self.seconds = len(cuts), sum(c.duration for c in cuts)
        buckets = min(num_buckets, num_cuts // 2)
        if buckets >= 2:
            self.sampler = DynamicBucketingSampler(
                cuts, max_duration=max_duration, num_buckets=buckets, shuffle=shuffle, drop_last=False, seed=seed,
                world_size=world_size, rank=rank, buffer_size=buffer_size)
        else:  # lhotse's bucketing needs two buckets at least
            self.sampler = DynamicCutSampler(cuts, max_duration=max_duration, shuffle=shuffle, drop_last=False,
                                             seed=seed, world_size=world_size, rank=rank)
        self.num_workers = num_workers
        self.epoch = 0
        self.batch_in_epoch = 0
        self._loader: DataLoader | None = None
        self._it: Iterator | None = None
        self._batches: int | None = None
        self._loaded: int | None = None  # utterances loaded in an epoch this process read from its start

    def batches_per_epoch(self) -> int:
        """Batches in one pass for this process, counted by replaying the sampler (no audio is read; a lazy
        set is streamed through a copy of the sampler, which holds its buffer only), once."""
        if self._batches is None:
            counter = copy.deepcopy(self.sampler)
            counter.set_epoch(0)
            self._batches = max(1, sum(1 for _ in counter))
        return self._batches

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self._it = None

    def close(self) -> None:
        """Stop the workers (prefetched batches are dropped); the next batch restarts at the same position."""
        self._it = None
        if self._loader is not None:
            it = getattr(self._loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
            self._loader = None

    def _start_epoch(self) -> Iterator:
        if self._loader is None:
            workers = self.num_workers
            # Its own generator: a DataLoader draws a worker seed when iterated, and drawing it from
            # the global RNG would shift dropout masks after a resume.
            self._loader = DataLoader(
                AudioDataset(), sampler=_SkipSampler(self.sampler), batch_size=None, num_workers=workers,
                generator=torch.Generator().manual_seed(0), persistent_workers=workers > 0,
                prefetch_factor=4 if workers else None,
                multiprocessing_context=_worker_context() if workers else None)
        self._loader.sampler.epoch, self._loader.sampler.skip = self.epoch, self.batch_in_epoch
        return iter(self._loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        empty_epochs = 0
        while True:
            if self._it is None:
                self._loaded = 0 if self.batch_in_epoch == 0 else None
                self._it = self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                if self.batch_in_epoch == 0:
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise RuntimeError(f"the '{self.name}' split yields no batches for this process")
                elif self._loaded == 0:
                    raise TrainingFailed(f"no audio of the '{self.name}' split could be loaded in a whole pass; "
                                       f"skipped files by reason: {self.skipped.counts()} (see the log, or run "
                                       f"'bljust corpus check')")
                self._it = None
                self.epoch += 1
                self.batch_in_epoch = 0
                continue
            self.batch_in_epoch += 1
            if self._loaded is not None:
                self._loaded += len(batch["ids"])
            return self.skipped.take(batch)


def _worker_context():
    """A fork server whose workers import only the data loader, not the trainer's memory."""
    ctx = torch.multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bljust.data.loader"])
    return ctx


def eval_batches(cuts: CutSet, max_duration: float, num_workers: int = 0,
                 skipped: SkippedAudio | None = None) -> Iterator[dict]:
    """One ordered pass over all of ``cuts`` for evaluation and decoding; bad audio goes to ``skipped``.

    The sampler is told it is alone: lhotse's samplers otherwise read the process group and keep a
    1/world_size share, so under torchrun a pass would silently skip the other ranks' shares (callers that
    decode sharded, as ``Run.decode``, pick their share themselves)."""
    skipped = skipped if skipped is not None else SkippedAudio()
    sampler = DynamicCutSampler(cuts, max_duration=max_duration, shuffle=False, world_size=1, rank=0)
    loader = DataLoader(AudioDataset(), sampler=sampler, batch_size=None, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    for batch in loader:
        yield skipped.take(batch)
