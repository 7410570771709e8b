"""A copy of a data directory with every kind of broken input added to every split.

The broken recordings are written as lhotse manifests directly (as a user's own recipe would),
not through ``bljust corpus import``, whose checks would refuse them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from bljust.data.manifests import SAMPLE_RATE, SPLITS, load_split, write_split

AUDIO_REASONS = {
    "nan": "non-finite samples",
    "empty": "empty file",
    "garbage": "unreadable",
    "short": "sample count mismatch",
    "missing": "missing file",
}
"""Broken recording (id suffix) → the reason the loader and ``bljust corpus check`` give."""

INFEASIBLE = "labeled-broken-repeats"
"""A labeled utterance whose transcript needs more CTC frames than its audio has, through repeats."""


def make_broken_corpus(clean: Path, out: Path) -> dict[str, str]:
    """Copy ``clean`` to ``out`` and add one recording per kind of ``AUDIO_REASONS`` to every split
    (ids ``{split}-broken-{kind}``, files under ``out/broken``), plus ``INFEASIBLE`` to labeled.

    Returns the broken files' paths → reason.
    """
    shutil.copytree(clean, out)
    broken_dir = out / "broken"
    broken_dir.mkdir()
    expected = {}
    for split in SPLITS:
        cuts = load_split(out, split)
        recordings, supervisions = cuts.decompose()[:2]
        donor = next(iter(cuts))
        speech = donor.load_audio()[0]
        text = donor.supervisions[0].text
        new_recs, new_sups = [], []
        for kind, reason in AUDIO_REASONS.items():
            rid, path = f"{split}-broken-{kind}", broken_dir / f"{split}-{kind}.wav"
            declared = len(speech)
            if kind == "nan":
                x = speech.copy()
                x[len(x) // 3], x[len(x) // 2], x[2 * len(x) // 3] = np.nan, np.inf, -np.inf
                sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
            elif kind == "empty":
                path.write_bytes(b"")
                declared = 3 * SAMPLE_RATE  # the manifest claims 3 s of a 0-byte file
            elif kind == "garbage":
                path.write_bytes(np.random.default_rng(0).bytes(20000))
            elif kind == "short":
                sf.write(path, speech[: len(speech) // 2], SAMPLE_RATE)
            # "missing": nothing is written
            new_recs.append(Recording(id=rid, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                                      sampling_rate=SAMPLE_RATE, num_samples=declared,
                                      duration=declared / SAMPLE_RATE))
            new_sups.append(SupervisionSegment(id=rid, recording_id=rid, start=0.0, duration=declared / SAMPLE_RATE,
                                               channel=0, text=text if split != "unlabeled" else None,
                                               speaker=donor.supervisions[0].speaker))
            expected[str(path)] = reason
        if split == "labeled":
            # 0.4 s is 9 encoder frames under recipes/tiny.yaml; "LL LL LL" needs 8 units + 3 repeats = 11
            path = broken_dir / "labeled-repeats.wav"
            sf.write(path, speech[: int(0.4 * SAMPLE_RATE)], SAMPLE_RATE)
            n = int(0.4 * SAMPLE_RATE)
            new_recs.append(Recording(id=INFEASIBLE, sources=[AudioSource(type="file", channels=[0], source=str(path))],
                                      sampling_rate=SAMPLE_RATE, num_samples=n, duration=n / SAMPLE_RATE))
            new_sups.append(SupervisionSegment(id=INFEASIBLE, recording_id=INFEASIBLE, start=0.0,
                                               duration=n / SAMPLE_RATE, channel=0, text="LL LL LL"))
        write_split(out, split, RecordingSet.from_recordings([*recordings, *new_recs]),
                    SupervisionSet.from_segments([*supervisions, *new_sups]))
    return expected
