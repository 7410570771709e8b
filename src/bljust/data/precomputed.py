"""Precomputed log-mel features: ``bljust features DATA`` writes them, ``data.features: precomputed`` reads them.

At LibriSpeech scale the loader decodes every FLAC file and the trainer takes its STFT again in each
epoch; icefall and ESPnet precompute instead. The features stored are the model front-end's own
un-normalised log-mel (``LogMel.raw``), so nothing else changes: normalisation (global or per
utterance) stays in the model, and a model trained on stored features transcribes audio with its
in-graph front-end. lhotse stores them: ``LilcomChunkyWriter`` archives (lilcom's lossy compression,
a step of 2^-5 in the log domain) and a ``Features`` entry on each cut.

Layout in the data directory, per split:

- ``{split}_features.jsonl.gz``: the cuts ``load_split`` makes (same ids, same order), each with its
  features; a cut whose audio could not be read is kept without features, so a run meets it as bad
  audio and counts the skip like any other;
- ``features/{split}-{part}.lca``: the lilcom archives (one per ``--jobs`` part), referenced relative to
  the data directory, so the directory can move;
- ``{split}_features.json``: the settings, the counts, and a fingerprint of the split's two
  manifests: features of manifests that changed since are refused, never silently trained on.

Speed-perturbed copies (``data.speed_perturb``) have no stored features (lhotse does not perturb
features): the loader computes theirs from audio, in its workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet
from lhotse.features.base import Features
from lhotse.features.io import LilcomChunkyWriter
from lhotse.utils import fastcopy

from bljust.data.audio import AudioProblem, BadAudio, load_checked, non_finite_detail
from bljust.data.manifests import SAMPLE_RATE, has_split, load_split, manifest_paths

log = logging.getLogger("bljust.data")

FEATURE_TYPE = "bljust-logmel"
FRAME_SHIFT = 0.01
FORMAT = 1
"""Bumped when the stored features change meaning (front-end, storage): older ones are then stale."""


def feature_paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(cut manifest with features, settings and fingerprint) of ``split``."""
    d = Path(data_dir)
    return d / f"{split}_features.jsonl.gz", d / f"{split}_features.json"


def fingerprint(data_dir: str | Path, split: str) -> str:
    """SHA-256 over the split's recordings and supervisions manifests as they are on disk."""
    h = hashlib.sha256()
    for path in manifest_paths(data_dir, split):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@dataclass
class FeatureSummary:
    """What ``compute_features`` wrote for one split."""

    split: str
    num_mel_bins: int
    cuts: int = 0
    with_features: int = 0
    frames: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    """Cuts left without features, by the reason their audio could not be read."""
    seconds: float = 0.0
    """Wall-clock time of the computation."""

    def line(self) -> str:
        skipped = (f"; {sum(self.skipped.values())} left without (bad audio: "
                   + ", ".join(f"{n} {r}" for r, n in self.skipped.items()) + ")") if self.skipped else ""
        return (f"{self.split}: {self.with_features} of {self.cuts} utterances, {self.frames / 360000:.2f} h of "
                f"{self.num_mel_bins}-bin log-mel in {self.bytes / 2 ** 20:.1f} MiB "
                f"({self.bytes / max(self.frames * self.num_mel_bins * 4, 1):.2f} of float32){skipped}, "
                f"{self.seconds:.1f} s")


def _compute_part(data_dir: str, split: str, start: int, stop: int, num_mel_bins: int, part: int) -> dict:
    """Features of cuts [start, stop) of ``split`` into ``features/{split}-{part}.lca`` and a part manifest."""
    from bljust.config import FeatureConfig
    from bljust.data.features import LogMel

    torch.set_num_threads(1)  # one part per process: --jobs sets the parallelism
    logmel = LogMel(FeatureConfig(num_mel_bins=num_mel_bins))
    rel = Path("features") / f"{split}-{part}.lca"  # lhotse's "lilcom chunky archive"
    archive = Path(data_dir) / rel
    archive.parent.mkdir(parents=True, exist_ok=True)
    manifest = Path(data_dir) / "features" / f".{split}-{part}.jsonl.gz"
    skipped: Counter = Counter()
    frames = 0
    cuts = itertools.islice(load_split(data_dir, split, lazy=True), start, stop)
    with LilcomChunkyWriter(archive) as writer, CutSet.open_writer(manifest) as out:
        for cut in cuts:
            try:
                audio = load_checked(cut)
            except BadAudio as e:
                skipped[e.problem.reason] += 1
                out.write(cut)
                continue
            wav = torch.from_numpy(audio[:1]).float()
            feats, lens = logmel.raw(wav, torch.tensor([wav.shape[1]]))
            array = feats[0, : int(lens[0])].numpy()
            key = writer.write(cut.id, array)
            frames += array.shape[0]
            out.write(_with_features(cut, array, str(rel), writer.name, key))
    return {"manifest": str(manifest), "frames": frames, "skipped": dict(skipped), "bytes": archive.stat().st_size}


def _with_features(cut, array: np.ndarray, storage_path: str, storage_type: str, key: str):
    features = Features(type=FEATURE_TYPE, num_frames=array.shape[0], num_features=array.shape[1],
                        frame_shift=FRAME_SHIFT, sampling_rate=SAMPLE_RATE, start=cut.start,
                        duration=cut.duration, storage_type=storage_type, storage_path=storage_path,
                        storage_key=key, recording_id=cut.recording_id, channels=0)
    return fastcopy(cut, features=features)


def compute_features(data_dir: str | Path, split: str, num_mel_bins: int = 80, jobs: int = 1) -> FeatureSummary:
    """Compute and store ``split``'s log-mel features (see the module docstring); streams the split, so a
    960-hour one is never held. ``jobs`` processes each take a contiguous part, so the cuts keep their order."""
    if not has_split(data_dir, split):
        load_split(data_dir, split)  # raises, naming the missing manifest
    t0 = time.time()
    cuts_path, meta_path = feature_paths(data_dir, split)
    meta_path.unlink(missing_ok=True)  # a crash mid-way leaves no features that look current
    digest = fingerprint(data_dir, split)
    total = sum(1 for _ in load_split(data_dir, split, lazy=True))
    jobs = max(1, min(jobs, total))
    bounds = [(total * i // jobs, total * (i + 1) // jobs) for i in range(jobs)]
    args = [(str(data_dir), split, lo, hi, num_mel_bins, i) for i, (lo, hi) in enumerate(bounds)]
    if jobs == 1:
        parts = [_compute_part(*args[0])]
    else:
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            parts = list(pool.map(_compute_part, *zip(*args)))
    summary = FeatureSummary(split, num_mel_bins, cuts=total)
    skipped: Counter = Counter()
    tmp = cuts_path.with_name(f".{cuts_path.name}")
    with CutSet.open_writer(tmp) as out:
        for part in parts:
            for cut in CutSet.from_jsonl_lazy(part["manifest"]):
                summary.with_features += cut.has_features
                out.write(cut)
            os.remove(part["manifest"])
            summary.frames += part["frames"]
            summary.bytes += part["bytes"]
            skipped.update(part["skipped"])
    for stale in sorted((Path(data_dir) / "features").glob(f"{split}-*.lca")):
        if int(stale.stem.rsplit("-", 1)[1]) >= jobs:  # parts of an earlier run with more jobs
            stale.unlink()
    tmp.replace(cuts_path)
    summary.skipped = dict(sorted(skipped.items()))
    summary.seconds = time.time() - t0
    meta = {"format": FORMAT, "type": FEATURE_TYPE, "manifests_sha256": digest, **asdict(summary)}
    meta_tmp = meta_path.with_name(f".{meta_path.name}")
    meta_tmp.write_text(json.dumps(meta, indent=1) + "\n")
    meta_tmp.replace(meta_path)
    return summary


def load_feature_split(data_dir: str | Path, split: str, num_mel_bins: int, lazy: bool = False) -> CutSet:
    """``load_split``'s cuts with their stored features; an error naming the file when they are missing,
    stale (the split's manifests changed since) or of another size than ``num_mel_bins``."""
    cuts_path, meta_path = feature_paths(data_dir, split)
    make = f"make them with 'bljust features {data_dir} --splits {split} --num-mel-bins {num_mel_bins}'"
    if not meta_path.is_file() or not cuts_path.is_file():
        load_split(data_dir, split, lazy=True)  # a missing split is named as such first
        raise FileNotFoundError(f"{data_dir}: the '{split}' split has no precomputed features "
                                f"({meta_path} is missing; data.features=precomputed); {make}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: features in an older format ({meta.get('format')}, now {FORMAT}); {make}")
    if meta["num_mel_bins"] != num_mel_bins:
        raise ValueError(f"{meta_path}: features have {meta['num_mel_bins']} mel bins, the config's "
                         f"features.num_mel_bins is {num_mel_bins}; {make}")
    if meta["manifests_sha256"] != fingerprint(data_dir, split):
        raise ValueError(f"{meta_path}: stale features: the '{split}' manifests changed after they were "
                         f"computed; {make}")
    cuts = CutSet.from_jsonl_lazy(cuts_path) if lazy else CutSet.from_file(cuts_path).to_eager()
    return cuts.with_features_path_prefix(str(Path(data_dir).resolve()))


def load_checked_features(cut, num_mel_bins: int) -> np.ndarray:
    """One cut's stored log-mel, (frames, bins) float32, or ``BadAudio`` naming the archive and why it cannot
    be used (unreadable, another shape than its manifest declares, NaN or inf), as ``load_checked`` does
    for audio. All frames are read: ``cut.load_features`` would trim them to lhotse's frame count, which
    rounds where the front-end's STFT (``num_frames``) does not."""
    f = cut.features
    try:
        array = f.load()
    except Exception as e:  # noqa: BLE001 - a missing or corrupt archive is a per-utterance skip
        raise BadAudio(AudioProblem(cut.id, f.storage_path, "unreadable features",
                                    (str(e).splitlines() or [type(e).__name__])[0][:200])) from e
    if array.shape != (f.num_frames, num_mel_bins):
        raise BadAudio(AudioProblem(cut.id, f.storage_path, "feature shape mismatch",
                                    f"read {array.shape}, the manifest declares ({f.num_frames}, {f.num_features}) "
                                    f"and the config {num_mel_bins} bins"))
    if (detail := non_finite_detail(array)) is not None:
        raise BadAudio(AudioProblem(cut.id, f.storage_path, "non-finite features", detail))
    return np.ascontiguousarray(array, dtype=np.float32)
