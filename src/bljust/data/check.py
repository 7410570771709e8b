"""``bljust corpus check``: read every recording of a data directory and find what training cannot use.

:func:`check_corpus` reads every audio file of every split in worker processes and compares it
with its manifest (lhotse's ``validate_recordings_and_supervisions`` with ``read_data``, plus the
checks below), then puts every utterance through the filter a training run applies
(``bljust.data.loader.filter_cuts``, with the config's duration limits, tokenizer and model).
Reasons are the loader's and the filter's own strings, so a check's counts line up with a
run's ``skipped_audio`` and ``dropped_utterances``. :func:`write_clean` writes a copy of the
manifests without what the check found bad.

A recording is bad when its file is missing, empty, unreadable, at another sample rate or with
other channels than its manifest declares, holds no samples or a sample count that differs from
the manifest's by more than lhotse's tolerance (``LHOTSE_AUDIO_DURATION_MISMATCH_TOLERANCE``,
0.5 s by default: within it lhotse pads or trims on load, so training uses the file), or holds a
NaN or inf sample. A bad recording makes all of its utterances bad.

An utterance (supervision) is bad when its recording is not in the manifest, when it lies
outside its recording (lhotse's bounds: it starts before 0 or ends more than 1 ms after the
recording; ``load_split`` cannot even cut such a split), when its channel is not one of its
recording's, or for a reason of the training filter: labeled utterances by duration, transcript
and CTC feasibility, unlabeled ones by duration, dev and test ones when they have no transcript
(training and evaluation skip those). The labeled split's tokenizer also reads the dev and test
transcripts: unknown units or more units than CTC can align there are warnings, not drops,
because evaluation scores those utterances all the same.

Speed perturbation (``data.speed_perturb``) is not applied: training drops a perturbed copy that
breaks a limit, never the original.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio.utils import get_audio_duration_mismatch_tolerance

from bljust.config import Config
from bljust.data.audio import BadAudio, file_problem, load_checked, rate_detail
from bljust.data.loader import training_reason
from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, has_split, manifest_paths, write_split

BLOCK_FRAMES = 1 << 18
"""Frames read at once for the finiteness check: a few MB, however long the file."""

SUPERVISION_END_TOLERANCE = 1e-3
"""Seconds a supervision may end after its recording: lhotse's bound, beyond which ``trim_to_supervisions`` fails."""

@dataclass(frozen=True)
class Finding:
    """One bad file or utterance (or a warning): ``item`` is the recording id for a file, the supervision
    (= cut) id for an utterance; ``utterances`` the supervision ids it makes bad."""

    split: str
    kind: str
    """'file' or 'utterance'."""
    item: str
    file: str
    """The audio file, or the recording's source (URL, command) or id when it is not one local file."""
    reason: str
    detail: str = ""
    utterances: tuple[str, ...] = ()

    def describe(self) -> str:
        what = self.file if self.kind == "file" or self.file == self.item else f"{self.item} ({self.file})"
        text = f"{what}: {self.reason}" + (f": {self.detail}" if self.detail else "")
        if self.kind == "file":
            n = len(self.utterances)
            text += f" ({n} utterance{'s' if n != 1 else ''})"
        return text


@dataclass
class SplitCheck:
    """One split's counts and findings; ``bad`` is what ``write_clean`` leaves out, ``warnings`` stay."""

    split: str
    recordings: int = 0
    utterances: int = 0
    seconds: float = 0.0
    bad: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)

    def bad_utterances(self) -> set[str]:
        return {u for f in self.bad for u in f.utterances}

    def bad_recordings(self) -> set[str]:
        return {f.item for f in self.bad if f.kind == "file"}


@dataclass
class CheckReport:
    """What ``check_corpus`` found, per split; ``format()`` is what ``bljust corpus check`` prints."""

    data_dir: Path
    splits: dict[str, SplitCheck]
    missing_splits: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(s.bad for s in self.splits.values())

    def table(self) -> str:
        """Counts per split and reason: bad files and the utterances they hold, and bad utterances."""
        rows = []
        for s in self.splits.values():
            for findings, note in ((s.bad, ""), (s.warnings, "warning (kept)")):
                files, utts = Counter(), Counter()
                for f in findings:
                    files[f.reason] += f.kind == "file"
                    utts[f.reason] += len(f.utterances)
                for reason in sorted(utts, key=lambda r: (-utts[r], r)):
                    rows.append((s.split, reason, str(files[reason] or "-"), str(utts[reason]), note))
        if not rows:
            return "nothing bad"
        head = ("split", "reason", "files", "utterances", "")
        w = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:>{w[3]}}  {r[4]}".rstrip()
                         for r in [head, *rows])

    def listing(self) -> str:
        """Every bad file, bad utterance and warning, one line each."""
        lines = []
        for title, pick in (("bad files", lambda s: [f for f in s.bad if f.kind == "file"]),
                            ("bad utterances", lambda s: [f for f in s.bad if f.kind == "utterance"]),
                            ("warnings, kept", lambda s: s.warnings)):
            found = [(s.split, f) for s in self.splits.values() for f in pick(s)]
            if found:
                lines.append(f"{title} ({len(found)}):")
                w = max(len(split) for split, _ in found)
                lines += [f"  {split:<{w}}  {f.describe()}" for split, f in found]
        return "\n".join(lines)

    def summary(self) -> str:
        splits = list(self.splits.values())
        utts = sum(s.utterances for s in splits)
        bad_files = sum(len(s.bad_recordings()) for s in splits)
        bad_utts = sum(len(s.bad_utterances()) for s in splits)
        where = f"{len(splits)} split{'s' if len(splits) != 1 else ''} ({', '.join(self.splits)})"
        warned = sum(len(s.warnings) for s in splits)
        tail = f"; {warned} warning{'s' if warned != 1 else ''}" if warned else ""
        return (f"{self.data_dir}: {bad_files} bad file{'s' if bad_files != 1 else ''}, {bad_utts} bad "
                f"utterance{'s' if bad_utts != 1 else ''} of {utts} in {where}{tail}")

    def format(self) -> str:
        parts = [self.table()]
        if listing := self.listing():
            parts.append(listing)
        parts += self.notes
        parts += [f"no '{s}' split (no manifests)" for s in self.missing_splits]
        parts.append(self.summary())
        return "\n\n".join(parts)


# ---------------------------------------------------------------- audio (in worker processes)


def _source_name(rec: Recording) -> str:
    if len(rec.sources) == 1 and rec.sources[0].type != "memory":
        return str(rec.sources[0].source)
    return rec.id


def _plain_file(rec: Recording) -> str | None:
    """The path when the recording is one local file that soundfile reads as lhotse does; else None."""
    if len(rec.sources) != 1 or rec.transforms or rec.sources[0].type != "file":
        return None
    path = str(rec.sources[0].source)
    # libsndfile decodes Opus at 48 kHz whatever the manifest says; lhotse resamples it
    return None if path.lower().endswith(".opus") else path


def _through_lhotse(rec: Recording) -> tuple[str, str] | None:
    """What ``load_checked`` says about the whole recording: for URLs, commands, transforms, several
    sources, and formats only lhotse's other backends decode."""
    try:
        load_checked(rec.to_cut())
    except BadAudio as e:
        return e.problem.reason, e.problem.detail
    except Exception as e:  # noqa: BLE001 - whatever goes wrong decoding is this file's problem
        return "unreadable", f"{type(e).__name__}: {e}"[:200]
    return None


def check_recording(rec: Recording) -> tuple[str, str] | None:
    """(reason, detail) when the recording's audio cannot be used as its manifest says, else None."""
    path = _plain_file(rec)
    if path is None:
        return _through_lhotse(rec)
    if (problem := file_problem(rec.to_cut())) is not None:
        return problem.reason, problem.detail
    try:
        info = sf.info(path)
    except Exception:  # noqa: BLE001 - perhaps a format only lhotse's other backends read (m4a...)
        return _through_lhotse(rec)
    if info.samplerate != rec.sampling_rate:
        return "sample rate mismatch", rate_detail(info.samplerate, rec.sampling_rate)
    declared = rec.sources[0].channels
    if info.channels != len(declared):
        return "channel mismatch", f"the file has {info.channels} channel(s), the manifest declares channels {declared}"
    frames, bad = 0, 0
    try:
        # Read to the end rather than trust the header: a truncated or corrupt file fails here, as in training.
        for block in sf.blocks(path, blocksize=BLOCK_FRAMES, dtype="float32", always_2d=True):
            frames += len(block)
            bad += block.size - np.count_nonzero(np.isfinite(block))
    except Exception as e:  # noqa: BLE001 - any decoder error
        return "unreadable", f"decoding failed after {frames} samples: {e}"[:200]
    allowed = int(np.ceil(get_audio_duration_mismatch_tolerance() * rec.sampling_rate))
    if abs(frames - rec.num_samples) > allowed:
        return "sample count mismatch", (f"the manifest declares {rec.num_samples} samples at {rec.sampling_rate} Hz, "
                                         f"the file holds {frames}")
    if frames == 0:
        return "no samples", "the file holds 0 samples"
    if bad:
        return "non-finite samples", f"{bad} of {frames * info.channels} are NaN or inf"
    return None


def _map(fn: Callable, items: list, jobs: int, progress: bool, desc: str) -> Iterator:
    """``fn`` over ``items`` in order, in ``jobs`` processes, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(total=len(items), desc=desc, unit="file", disable=not progress) as bar:
        if jobs <= 1 or len(items) <= 1:
            for item in items:
                yield fn(item)
                bar.update()
            return
        # A fork server rather than fork: the caller may hold torch threads, which forking can deadlock.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(jobs, mp_context=ctx)
        try:
            for result in pool.map(fn, items, chunksize=max(1, min(64, len(items) // (8 * jobs)))):
                yield result
                bar.update()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


# ---------------------------------------------------------------- utterances


def _supervision_problem(sup: SupervisionSegment, rec: Recording | None) -> tuple[str, str] | None:
    if rec is None:
        return "recording not in the manifest", f"no recording '{sup.recording_id}'"
    if sup.start < 0 or sup.end > rec.duration + SUPERVISION_END_TOLERANCE:
        return "supervision outside its recording", (f"it spans {sup.start:.3f}-{sup.end:.3f} s, the recording "
                                                     f"0-{rec.duration:.3f} s")
    channels = sup.channel if isinstance(sup.channel, list) else [sup.channel]
    if not set(channels) <= set(rec.channel_ids):
        return "channel mismatch", f"the supervision is on channel {sup.channel}, the recording has {rec.channel_ids}"
    return None


def _training_rules(cfg: Config, labeled_texts: list[str], notes: list[str]) -> dict[str, dict]:
    """Per split, the ``training_reason`` settings a run (``engine.run.Run``) applies, with the tokenizer
    and model it would build from the labeled transcripts."""
    from bljust.data.tokenizer import train_tokenizer
    from bljust.models.asr import ASRModel

    d = cfg.data
    try:
        tokenizer = train_tokenizer(cfg.tokenizer, labeled_texts)
    except ValueError as e:
        tokenizer = None
        notes.append(f"no tokenizer ({e}): transcripts were not checked against units")
    output_frames = None
    if tokenizer is not None and cfg.model.loss == "ctc":  # a transducer may emit several units per frame
        output_frames = lru_cache(maxsize=None)(ASRModel(cfg, tokenizer.vocab_size).output_frames)
    limits = {"min_seconds": d.min_utterance_seconds, "max_seconds": min(d.max_utterance_seconds, d.max_duration)}
    scored = {"min_seconds": None, "max_seconds": None, "needs_text": True,
              "tokenizer": tokenizer, "output_frames": output_frames}
    return {"labeled": {**limits, "needs_text": True, "tokenizer": tokenizer, "output_frames": output_frames},
            "unlabeled": {**limits, "needs_text": False}, "dev": scored, "test": scored, "test_unseen": scored,
            "dev_other": scored, "test_other": scored,
            # the topline trains on it like the labeled split
            "unlabeled_text": {**limits, "needs_text": True, "tokenizer": tokenizer, "output_frames": output_frames}}


# ---------------------------------------------------------------- the check


def _read_split(data_dir: Path, split: str) -> tuple[list[Recording], list[SupervisionSegment]]:
    rec_path, sup_path = manifest_paths(data_dir, split)
    try:
        return list(RecordingSet.from_file(rec_path)), list(SupervisionSet.from_file(sup_path))
    except Exception as e:  # noqa: BLE001 - a corrupt gzip, bad JSON, a field lhotse rejects
        raise ValueError(f"cannot read the '{split}' manifests of {data_dir}: {type(e).__name__}: {e}") from e


def check_corpus(data_dir: str | Path, cfg: Config, jobs: int = 1, progress: bool = False) -> CheckReport:
    """Check every split of ``data_dir`` that has manifests; ``cfg`` gives the training checks' settings."""
    data_dir = Path(data_dir)
    present = [s for s in (*SPLITS, *OPTIONAL_SPLITS) if has_split(data_dir, s)]
    if not present:
        names = ", ".join(p.name for p in manifest_paths(data_dir, "labeled"))
        raise FileNotFoundError(f"{data_dir} is not a bljust data directory: no split has manifests (e.g. {names})")
    manifests = {s: _read_split(data_dir, s) for s in present}
    report = CheckReport(data_dir, {s: SplitCheck(s) for s in present},
                         missing_splits=[s for s in SPLITS if s not in present])

    tasks = [(s, r) for s in present for r in manifests[s][0]]
    results = list(_map(check_recording, [r for _, r in tasks], jobs, progress, "reading audio"))
    audio = {(s, r.id): result for (s, r), result in zip(tasks, results)}

    labeled_texts = []
    if "labeled" in manifests:
        rec_ids = {r.id for r in manifests["labeled"][0]}
        labeled_texts = [s.text for s in manifests["labeled"][1] if s.text and s.recording_id in rec_ids]
    rules = _training_rules(cfg, labeled_texts, report.notes)

    for split in present:
        recs, sups = manifests[split]
        result = report.splits[split]
        result.recordings, result.utterances = len(recs), len(sups)
        result.seconds = sum(s.duration for s in sups)
        by_id = {r.id: r for r in recs}
        sups_of: dict[str, list[str]] = {}
        for s in sups:
            sups_of.setdefault(s.recording_id, []).append(s.id)
        for r in recs:
            if (problem := audio[split, r.id]) is not None:
                result.bad.append(Finding(split, "file", r.id, _source_name(r), *problem,
                                          utterances=tuple(sups_of.get(r.id, ()))))
        bad_recs = result.bad_recordings()
        usable = []
        for s in sups:
            if s.recording_id in bad_recs:
                continue
            rec = by_id.get(s.recording_id)
            if (problem := _supervision_problem(s, rec)) is not None:
                name = _source_name(rec) if rec is not None else s.recording_id
                result.bad.append(Finding(split, "utterance", s.id, name, *problem, utterances=(s.id,)))
            else:
                usable.append(s)
        if not usable:
            continue
        # The cuts training makes (``load_split``), of what is left: one per supervision, named after it.
        used = [by_id[i] for i in dict.fromkeys(s.recording_id for s in usable)]
        cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings(used),
                                     supervisions=SupervisionSet.from_segments(usable))
        for cut in cuts.trim_to_supervisions(keep_overlapping=False):
            if (problem := training_reason(cut, **rules[split])) is None:
                continue
            # Dev and test are scored, not trained on: only a missing transcript makes their utterances useless.
            trained = split in ("labeled", "unlabeled", "unlabeled_text")
            target = result.bad if trained or problem[0] == "no transcript" else result.warnings
            target.append(Finding(split, "utterance", cut.id, _source_name(cut.recording), *problem,
                                  utterances=(cut.supervisions[0].id,)))
    return report


# ---------------------------------------------------------------- a clean copy


def check_clean_target(data_dir: str | Path, out_dir: str | Path) -> None:
    """Raise unless ``out_dir`` can take a clean copy of ``data_dir``: not the same directory, no manifests yet."""
    data, out = Path(data_dir).resolve(), Path(out_dir).resolve()
    if out == data or (out.exists() and data.exists() and os.path.samefile(out, data)):
        raise ValueError(f"--write-clean {out_dir}: that is the data directory {data_dir} itself; "
                         f"write the clean copy to another directory")
    existing = [p for s in (*SPLITS, *OPTIONAL_SPLITS) for p in manifest_paths(out, s) if p.exists()]
    if existing:
        raise FileExistsError(f"--write-clean {out_dir}: it already holds manifests ({existing[0].name}...); "
                              f"choose an empty or new directory")


def write_clean(report: CheckReport, data_dir: str | Path, out_dir: str | Path) -> dict[str, tuple[int, int]]:
    """Write every checked split's manifests to ``out_dir`` less the bad recordings and utterances, and less
    recordings left without an utterance; audio paths stay as they are and nothing else is copied.

    Returns per split (utterances kept, utterances dropped).
    """
    check_clean_target(data_dir, out_dir)
    kept = {}
    for split, result in report.splits.items():
        recs, sups = _read_split(Path(data_dir), split)
        bad_sups, bad_recs = result.bad_utterances(), result.bad_recordings()
        good_sups = [s for s in sups if s.id not in bad_sups and s.recording_id not in bad_recs]
        used = {s.recording_id for s in good_sups}
        write_split(out_dir, split, RecordingSet.from_recordings([r for r in recs if r.id in used]),
                    SupervisionSet.from_segments(good_sups))
        kept[split] = (len(good_sups), len(sups) - len(good_sups))
    return kept


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
