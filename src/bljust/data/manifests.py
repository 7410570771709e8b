"""The on-disk layout of a bljust data directory.

A data directory holds, per split, lhotse manifests in lhotse's own format:
``{split}_recordings.jsonl.gz`` and ``{split}_supervisions.jsonl.gz``. The demo corpus
generator, ``bljust corpus import`` and any lhotse recipe output (after import) share it, so
one loader serves all. Unlabeled supervisions carry no text.

Besides the four splits every data directory has (:data:`SPLITS`), a synthesised corpus may
have :data:`OPTIONAL_SPLITS`: ``test_unseen`` (scored, from speakers in no other split) and
``unlabeled_text`` (the unlabeled recordings *with* transcripts, for topline runs only); a
LibriSpeech one (``scripts/prepare_librispeech.sh``) has ``dev_other`` and ``test_other``, the
corpus's harder dev and test sets, scored like ``dev`` and ``test``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

from lhotse import CutSet, RecordingSet, SupervisionSet
from lhotse.cut import Cut

SPLITS = ("labeled", "unlabeled", "dev", "test")
OPTIONAL_SPLITS = ("test_unseen", "unlabeled_text", "dev_other", "test_other")
SAMPLE_RATE = 16000


def manifest_paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    d = Path(data_dir)
    return d / f"{split}_recordings.jsonl.gz", d / f"{split}_supervisions.jsonl.gz"


def write_split(data_dir: str | Path, split: str, recordings: RecordingSet, supervisions: SupervisionSet) -> None:
    """Write one split's manifests (through a temporary name, so a crash leaves no half file)."""
    rec_path, sup_path = manifest_paths(data_dir, split)
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    for obj, path in ((recordings, rec_path), (supervisions, sup_path)):
        tmp = path.with_name(path.name.replace(".jsonl.gz", ".tmp.jsonl.gz"))
        obj.to_file(tmp)
        tmp.replace(path)


def _check_split_name(split: str) -> None:
    # A misspelt split ("unlabelled") would otherwise read as a split that is simply absent.
    if split not in SPLITS and split not in OPTIONAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; a bljust data directory has {', '.join(SPLITS)} "
                         f"and may have {', '.join(OPTIONAL_SPLITS)}")


def has_split(data_dir: str | Path, split: str) -> bool:
    """Whether both manifests of ``split`` (one of SPLITS or OPTIONAL_SPLITS) exist."""
    _check_split_name(split)
    return all(p.is_file() for p in manifest_paths(data_dir, split))


def _split_paths(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """The split's two manifest paths, or a FileNotFoundError naming what is missing."""
    _check_split_name(split)
    rec_path, sup_path = manifest_paths(data_dir, split)
    missing = [str(p) for p in (rec_path, sup_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"data directory {data_dir} has no '{split}' split: missing {', '.join(missing)} "
            f"(make one with 'bljust corpus synth' or 'bljust corpus import')")
    return rec_path, sup_path


def _cannot_cut(data_dir: str | Path, split: str, e: Exception) -> ValueError:
    return ValueError(f"cannot cut the '{split}' split of {data_dir} into utterances ({e or type(e).__name__}); "
                      f"'bljust corpus check {data_dir}' names the bad supervisions and --write-clean drops them")


def load_split(data_dir: str | Path, split: str, lazy: bool = False, *, precomputed_bins: int | None = None) -> CutSet:
    """One cut per supervision segment of ``split`` (one of SPLITS or OPTIONAL_SPLITS), in manifest order.

    ``lazy``: a CutSet that reads the manifests anew on every pass (``StreamedSplit``) and holds one
    recording at a time, for splits too large for memory; the cuts are those of the eager set.
    ``precomputed_bins``: the same cuts with the log-mel features ``bljust features`` stored
    (``bljust.data.precomputed``), which must have this many mel bins."""
    rec_path, sup_path = _split_paths(data_dir, split)
    if precomputed_bins is not None:
        from bljust.data.precomputed import load_feature_split

        return load_feature_split(data_dir, split, precomputed_bins, lazy=lazy)
    if lazy:
        return CutSet(StreamedSplit(data_dir, split))
    recordings = RecordingSet.from_file(rec_path)
    supervisions = SupervisionSet.from_file(sup_path)
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    # One cut per segment: trims recordings that hold several utterances (e.g. long TED talks).
    try:
        return cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
    except (AssertionError, ValueError) as e:  # e.g. a supervision outside its recording, or on a missing channel
        raise _cannot_cut(data_dir, split, e) from e


class StreamedSplit:
    """The cuts of ``load_split(data_dir, split)``, streamed: a re-iterable source of a lazy CutSet.

    Recordings and supervisions are read side by side, so the supervisions must come in their
    recordings' order (as lhotse's recipes and ``bljust corpus import`` write them); a supervision out
    of that order, or of a recording the split lacks, is an error naming both files. lhotse's own lazy
    join (``CutSet.from_manifests(lazy=True)``) has that requirement too, but it re-chains its
    supervision iterator once per recording, so it slows quadratically (80 s for 40k recordings).
    """

    def __init__(self, data_dir: str | Path, split: str):
        self.data_dir, self.split = Path(data_dir), split

    def __iter__(self) -> Iterator[Cut]:
        rec_path, sup_path = _split_paths(self.data_dir, self.split)
        groups = itertools.groupby(SupervisionSet.from_file(sup_path), key=lambda s: s.recording_id)
        group = next(groups, None)
        for recording in RecordingSet.from_file(rec_path):
            sups = []
            if group is not None and group[0] == recording.id:
                sups = list(group[1])
                group = next(groups, None)
            # lhotse's eager join and trim, one recording at a time: the cuts match load_split's exactly.
            cuts = CutSet.from_manifests(recordings=RecordingSet.from_recordings([recording]),
                                         supervisions=SupervisionSet.from_segments(sups))
            try:
                yield from cuts.trim_to_supervisions(keep_overlapping=False)
            except (AssertionError, ValueError) as e:
                raise _cannot_cut(self.data_dir, self.split, e) from e
        if group is not None:
            raise ValueError(
                f"{sup_path}: the supervisions of recording {group[0]!r} are out of the order of the recordings in "
                f"{rec_path}, or the recording is missing there; a lazy split (data.lazy) reads both files side by "
                f"side and needs each recording's supervisions together, in the recordings' order")


def cut_text(cut) -> str | None:
    """The transcript of a single-supervision cut, or None when unlabeled."""
    if not cut.supervisions:
        return None
    texts = [s.text for s in cut.supervisions if s.text]
    return " ".join(texts) if texts else None


def cut_speaker(cut) -> str | None:
    return cut.supervisions[0].speaker if cut.supervisions else None


def cut_group(cut) -> str | None:
    """The voice family / speaker group of a cut when the corpus records one (``custom['group']``)."""
    if not cut.supervisions:
        return None
    custom = cut.supervisions[0].custom or {}
    return custom.get("group")
