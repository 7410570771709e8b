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
import itertools
import logging
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch
from lhotse import CutSet
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from torch.utils.data import DataLoader, Dataset

from bljust.data.features import num_frames
from bljust.data.manifests import SAMPLE_RATE, cut_text
from bljust.training import TrainingFailed

log = logging.getLogger("bljust.data")

# Our cut sets are eager by design (they are filtered and counted up front).
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
    report = FilterReport(split)
    kept = []
    sizes: dict[str, int | None] = {}
    for cut in cuts:
        problem = _file_problem(cut, sizes)
        if problem is not None and skipped is not None:
            skipped.record(problem)
            continue
        if problem is not None:
            reason = f"{problem.reason}: {problem.file}"
        else:
            found = training_reason(cut, min_seconds=min_seconds, max_seconds=max_seconds,
                                    needs_text=tokenizer is not None, tokenizer=tokenizer, output_frames=output_frames)
            reason = None if found is None else ": ".join(x for x in found if x)
        if reason is None:
            kept.append(cut)
            report.kept += 1
            report.kept_seconds += cut.duration
        else:
            report.dropped.append((cut.id, reason))
    if report.dropped:
        log.warning(report.summary())
    if not kept:
        raise ValueError(f"no usable utterances left in split '{split}': " + report.summary(max_lines=5))
    return CutSet.from_cuts(kept), report


def hold_out(cuts: CutSet, fraction: float, max_seconds: float) -> tuple[CutSet, CutSet]:
    """Split ``cuts`` into (kept, held out): whole utterances, in the order of a hash of their ids,
    until the held-out audio reaches ``fraction`` of the total or ``max_seconds``.

    The choice depends on the cut ids alone: every method, seed and process holds out the same
    utterances, and a run that resumes holds out what it held out before.
    """
    cuts = cuts.to_eager()
    target = min(fraction * sum(c.duration for c in cuts), max_seconds)
    held, seconds = set(), 0.0
    for cut in sorted(cuts, key=lambda c: hashlib.sha1(c.id.encode()).hexdigest()):
        if seconds >= target:
            break
        held.add(cut.id)
        seconds += cut.duration
    return (CutSet.from_cuts([c for c in cuts if c.id not in held]),
            CutSet.from_cuts([c for c in cuts if c.id in held]))


def speed_perturbed(cuts: CutSet, factors: list[float]) -> CutSet:
    """``cuts`` plus one speed-changed copy per factor (lhotse resamples on load; ids get ``_sp<f>``)."""
    cuts = cuts.to_eager()
    out = list(cuts)
    for f in factors:
        out += list(cuts.perturb_speed(f))
    return CutSet.from_cuts(out)


@dataclass(frozen=True)
class AudioProblem:
    """Why one utterance's audio cannot be used: ``reason`` is a short category (the key counted in a
    run's ``skipped_audio``), ``detail`` the specifics."""

    cut_id: str
    file: str
    reason: str
    detail: str = ""


class BadAudio(Exception):
    def __init__(self, problem: AudioProblem):
        super().__init__(f"{problem.file}: {problem.reason}" + (f" ({problem.detail})" if problem.detail else ""))
        self.problem = problem


def _source(cut) -> tuple[str, str | None]:
    """(name of the cut's audio for messages, path when it is a local file)."""
    if not cut.has_recording:
        return cut.id, None
    src = cut.recording.sources[0]
    return str(src.source), (str(src.source) if src.type == "file" else None)


def _file_problem(cut, sizes: dict | None = None) -> AudioProblem | None:
    """A missing or empty audio file, found by its size alone (``sizes`` caches one stat per file)."""
    name, path = _source(cut)
    if path is None:
        return None
    sizes = {} if sizes is None else sizes
    if path not in sizes:
        try:
            sizes[path] = os.path.getsize(path)
        except OSError:
            sizes[path] = None
    if sizes[path] is None:
        return AudioProblem(cut.id, name, "missing file")
    if sizes[path] == 0:
        return AudioProblem(cut.id, name, "empty file", f"0 bytes where the manifest declares {cut.duration:.2f} s")
    return None


def _file_samples(path: str | None) -> str:
    if path is None:
        return "a different number"
    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - only used to word a message
        return "a different number"
    return f"{info.frames} samples at {info.samplerate} Hz"


def _rate_problem(cut, name: str, path: str | None) -> AudioProblem | None:
    """A plain local file (read by lhotse as it is) whose header rate is not the manifest's."""
    rec = cut.recording if cut.has_recording else None
    if path is None or rec is None or rec.transforms or len(rec.sources) != 1 or path.lower().endswith(".opus"):
        return None
    try:
        rate = sf.info(path).samplerate
    except Exception:  # noqa: BLE001 - a format only lhotse's other backends read
        return None
    if rate == rec.sampling_rate:
        return None
    return AudioProblem(cut.id, name, "sample rate mismatch",
                        f"the file is {rate} Hz, the manifest declares {rec.sampling_rate} Hz")


def load_checked(cut) -> np.ndarray:
    """The cut's audio, (channels, samples) float32, or ``BadAudio`` saying why it cannot be used.

    Checked here, where training, evaluation and decoding all load audio: the file exists, is not
    empty and decodes; its sample count agrees with the manifest (lhotse's own check, within its
    tolerance); it holds samples, on the channels and at the rate the manifest declares; every
    sample is finite, so NaN or inf never reach features.
    """
    name, path = _source(cut)
    if (problem := _file_problem(cut)) is not None:
        raise BadAudio(problem)
    try:
        audio = cut.load_audio()
    except Exception as e:  # noqa: BLE001 - any decoder error is a per-file skip
        msg = str(e)
        if "diverged" in msg and (problem := _rate_problem(cut, name, path)) is not None:
            raise BadAudio(problem) from e
        if "diverged" in msg:  # lhotse's DurationMismatch: the manifest and the file disagree
            declared = cut.recording.num_samples if cut.has_recording else cut.num_samples
            raise BadAudio(AudioProblem(cut.id, name, "sample count mismatch",
                                        f"the manifest declares {declared} samples at {cut.sampling_rate} Hz, the "
                                        f"file holds {_file_samples(path)}")) from e
        m = re.search(r"Error opening [^:]*: ([^\n|]+)", msg)
        detail = m.group(1).strip() if m else (msg.splitlines() or [type(e).__name__])[0][:200]
        raise BadAudio(AudioProblem(cut.id, name, "unreadable", detail)) from e
    if audio.ndim != 2 or audio.shape[1] == 0:
        raise BadAudio(AudioProblem(cut.id, name, "no samples", f"decoded to an array of shape {audio.shape}"))
    if audio.shape[0] != len(cut.channel if isinstance(cut.channel, list) else [cut.channel]):
        raise BadAudio(AudioProblem(cut.id, name, "channel mismatch", f"the file has {audio.shape[0]} channel(s), "
                                    f"the manifest declares {cut.recording.sources[0].channels}"))
    if (problem := _rate_problem(cut, name, path)) is not None:
        # lhotse reads the file at its own rate: with agreeing sample counts it would train at the wrong speed
        raise BadAudio(problem)
    finite = np.isfinite(audio)
    if not finite.all():
        raise BadAudio(AudioProblem(cut.id, name, "non-finite samples",
                                    f"{int(finite.size - finite.sum())} of {finite.size} samples are NaN or inf"))
    return audio


class SkippedAudio:
    """The audio a run skipped: each file logged once, with its reason, and every later hit only counted.

    One per run (checkpointed, so a resumed run does not log a file again) or per evaluation.
    """

    def __init__(self):
        self.files: dict[str, str] = {}
        """file (or cut id) → reason"""
        self.hits = 0

    def record(self, problem: AudioProblem | dict) -> None:
        p = problem if isinstance(problem, AudioProblem) else AudioProblem(**problem)
        self.hits += 1
        if p.file in self.files:
            return
        self.files[p.file] = p.reason
        log.warning("skipping audio %s (utterance %s): %s%s (logged once; later uses are only counted)",
                    p.file, p.cut_id, p.reason, f": {p.detail}" if p.detail else "")

    def take(self, batch: dict) -> dict:
        """Record a loaded batch's failures (in the trainer's process, where the run's log handlers are)."""
        for failure in batch["failed"]:
            self.record(failure)
        return batch

    def counts(self) -> dict[str, int]:
        """Skipped files by reason."""
        return dict(sorted(Counter(self.files.values()).items()))

    def state_dict(self) -> dict:
        return {"files": dict(self.files), "hits": self.hits}

    def load_state_dict(self, state: dict) -> None:
        self.files, self.hits = dict(state["files"]), int(state["hits"])


class AudioDataset(Dataset):
    """lhotse-style map dataset: a CutSet batch in, padded waveforms out.

    Audio that fails ``load_checked`` is dropped from the batch and listed in ``failed`` (as
    ``AudioProblem`` fields), so one bad file cannot stop a long run or poison a batch; a
    ``SkippedAudio`` in the trainer's process logs it: a worker has no log handlers of the run.
    """

    def __getitem__(self, cuts: CutSet) -> dict:
        wavs, ids, texts, durations, failed = [], [], [], [], []
        for cut in cuts:
            try:
                audio = load_checked(cut)
            except BadAudio as e:
                failed.append(vars(e.problem).copy())
                continue
            wavs.append(torch.from_numpy(audio[0]).float())
            ids.append(cut.id)
            texts.append(cut_text(cut))
            durations.append(cut.duration)
        lens = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
        wav = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True) if wavs else torch.zeros(0, 0)
        return {"wav": wav, "wav_lens": lens, "ids": ids, "texts": texts,
                "seconds": float(sum(durations)), "failed": failed}


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
    reading the stream; the next batch reopens it where it stopped.
    """

    def __init__(self, cuts: CutSet, name: str, *, max_duration: float, num_buckets: int, seed: int,
                 shuffle: bool = True, world_size: int = 1, rank: int = 0, num_workers: int = 0,
                 buffer_size: int = 20000, skipped: SkippedAudio | None = None):
        self.name = name
        self.skipped = skipped if skipped is not None else SkippedAudio()
        self.seconds = sum(c.duration for c in cuts)
        buckets = min(num_buckets, len(cuts) // 2)
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
        """Batches in one pass for this process, counted by replaying the sampler (no audio is read)."""
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
    """One ordered pass over ``cuts`` for evaluation and decoding; bad audio goes to ``skipped``."""
    skipped = skipped if skipped is not None else SkippedAudio()
    sampler = DynamicCutSampler(cuts, max_duration=max_duration, shuffle=False)
    loader = DataLoader(AudioDataset(), sampler=sampler, batch_size=None, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    for batch in loader:
        yield skipped.take(batch)
