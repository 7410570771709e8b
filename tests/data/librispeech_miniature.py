"""A LibriSpeech-shaped miniature corpus, made from speech that bljust synthesises itself.

No machine here can download LibriSpeech, so the tests of ``scripts/prepare_librispeech.sh`` run
on a copy of its layout: ``LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``
with one ``<speaker>-<chapter>.trans.txt`` per chapter (``<utterance id> <UPPER-CASE TRANSCRIPT>``
per line), numeric speaker and chapter ids, as in the real corpus, so that lhotse's own recipe
reads it as it reads the real one. The speech and transcripts are the transcribed utterances of a
corpus from ``bljust.data.synth`` (the tests' session corpus), a few per part.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import soundfile as sf

from bljust.data.manifests import SAMPLE_RATE, cut_speaker, cut_text, has_split, load_split

PARTS: dict[str, int] = {"train-clean-100": 8, "train-clean-360": 3, "train-other-500": 3, "dev-clean": 2,
                         "dev-other": 1, "test-clean": 2, "test-other": 2}
"""Utterances per part: every part of LibriSpeech, a few utterances each."""

# Transcribed splits of a synthesised corpus that the miniature draws from, in this order.
_SOURCES = ("labeled", "dev", "test", "unlabeled_text")


def make_librispeech_miniature(corpus: Path, out: Path, parts: Mapping[str, int] = PARTS) -> Path:
    """Write ``out/LibriSpeech/<part>/...`` with ``parts[part]`` utterances of the synthesised ``corpus``.

    Utterances are dealt out in corpus order (labeled, dev, test, then unlabeled_text), each used
    once; every voice of the corpus becomes one speaker with one chapter per part. Returns the
    ``LibriSpeech`` directory. Raises ``ValueError`` when ``corpus`` has too few transcribed utterances.
    """
    cuts = [c for split in _SOURCES if has_split(corpus, split) for c in load_split(corpus, split)]
    needed = sum(parts.values())
    if len(cuts) < needed:
        raise ValueError(f"{corpus} has {len(cuts)} transcribed utterances; the miniature needs {needed}")
    root = Path(out) / "LibriSpeech"
    speakers: dict[str, int] = {}
    pool = iter(cuts)
    for part_index, (part, count) in enumerate(parts.items()):
        chapters: dict[Path, list[str]] = {}
        for _ in range(count):
            cut = next(pool)
            speaker = speakers.setdefault(cut_speaker(cut) or cut.recording_id, 100 + len(speakers))
            chapter = 1000 * (part_index + 1) + speaker
            directory = root / part / str(speaker) / str(chapter)
            directory.mkdir(parents=True, exist_ok=True)
            transcript = directory / f"{speaker}-{chapter}.trans.txt"
            utt = f"{speaker}-{chapter}-{len(chapters.get(transcript, [])):04d}"
            sf.write(directory / f"{utt}.flac", cut.load_audio()[0], SAMPLE_RATE, format="FLAC")
            chapters.setdefault(transcript, []).append(f"{utt} {cut_text(cut)}")
        for transcript, lines in chapters.items():
            transcript.write_text("\n".join(lines) + "\n")
    return root
