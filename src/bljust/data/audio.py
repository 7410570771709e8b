"""Checking audio where it is loaded, and remembering what a run skipped.

``load_checked`` is the one place training, evaluation and decoding load an utterance's audio: a
file that is missing, empty, unreadable, disagrees with its manifest (sample count, rate,
channels) or holds NaN / inf raises ``BadAudio`` with an ``AudioProblem`` (a short reason and its
details). ``SkippedAudio`` logs each bad file once per run and counts every hit.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import soundfile as sf

log = logging.getLogger("bljust.data")


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


def file_problem(cut, sizes: dict | None = None) -> AudioProblem | None:
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


@functools.lru_cache(maxsize=None)
def _header_rate(path: str) -> int | None:
    """A file's sample rate from its header, read once per file and process (not once per epoch)."""
    try:
        return sf.info(path).samplerate
    except Exception:  # noqa: BLE001 - a format only lhotse's other backends read
        return None


def rate_detail(file_rate: int, declared: int) -> str:
    return f"the file is {file_rate} Hz, the manifest declares {declared} Hz"


def non_finite_detail(samples: np.ndarray) -> str | None:
    """How many samples are NaN or inf, or None when all are finite."""
    bad = int(samples.size - np.count_nonzero(np.isfinite(samples)))
    return f"{bad} of {samples.size} are NaN or inf" if bad else None


def _rate_problem(cut, name: str, path: str | None) -> AudioProblem | None:
    """A plain local file (read by lhotse as it is) whose header rate is not the manifest's."""
    rec = cut.recording if cut.has_recording else None
    if path is None or rec is None or rec.transforms or len(rec.sources) != 1 or path.lower().endswith(".opus"):
        return None
    rate = _header_rate(path)
    if rate is None or rate == rec.sampling_rate:
        return None
    return AudioProblem(cut.id, name, "sample rate mismatch", rate_detail(rate, rec.sampling_rate))


def load_checked(cut) -> np.ndarray:
    """The cut's audio, (channels, samples) float32, or ``BadAudio`` saying why it cannot be used.

    Checked here, where training, evaluation and decoding all load audio: the file exists, is not
    empty and decodes; its sample count agrees with the manifest (lhotse's own check, within its
    tolerance); it holds samples, on the channels and at the rate the manifest declares; every
    sample is finite, so NaN or inf never reach features.
    """
    name, path = _source(cut)
    try:
        audio = cut.load_audio()
    except Exception as e:  # noqa: BLE001 - any decoder error is a per-file skip
        # Classified once it failed: no stat of a good file on the loader's hot path.
        if (problem := file_problem(cut)) is not None:
            raise BadAudio(problem) from e
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
    if (detail := non_finite_detail(audio)) is not None:
        raise BadAudio(AudioProblem(cut.id, name, "non-finite samples", detail))
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
