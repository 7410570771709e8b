"""Bring your own data: turn user audio into one split of a bljust data directory.

Two sources are supported:

* :func:`import_lhotse_manifests` -- the output of any lhotse recipe (``lhotse prepare
  librispeech CORPUS OUT`` writes ``librispeech_recordings_dev-clean.jsonl.gz`` and
  ``librispeech_supervisions_dev-clean.jsonl.gz``; :func:`find_lhotse_manifests` finds them), or
  with :func:`import_lhotse_parts` the union of several parts of one such output;
* :func:`import_folder` -- a folder of audio files plus an optional transcript table.

Every item is validated; a bad item is skipped with a reason that names its file (or id), and
the returned :class:`ImportReport` lists every skip. Nothing is dropped silently, and one bad
item never stops an import. Audio is referenced in place by absolute path, never copied.

Split semantics (see :mod:`bljust.data.manifests`): ``labeled``, ``dev`` and ``test`` need a
transcript for every utterance; ``unlabeled`` supervisions carry no text, so importing into
``unlabeled`` always drops the text (and word alignments) of the source. An unlabeled import
can cut long utterances into fixed windows (``window_seconds``), one utterance per window.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from lhotse import MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.utils import fastcopy

from bljust.data.manifests import OPTIONAL_SPLITS, SAMPLE_RATE, SPLITS, has_split, write_split
from bljust.data.text import normalize_transcript

log = logging.getLogger("bljust.data")

__all__ = ["ImportReport", "import_lhotse_manifests", "import_lhotse_parts", "import_folder",
           "find_lhotse_manifests", "AUDIO_EXTENSIONS"]

# Extensions import_folder treats as audio: what libsndfile (soundfile) reads, minus formats that
# are rarely speech audio (.htk holds features, .mat/.raw have no usable header).
AUDIO_EXTENSIONS = frozenset({
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".sph", ".nist", ".aiff", ".aif",
    ".aifc", ".au", ".snd", ".caf", ".w64", ".rf64", ".voc", ".wve",
})

# A segment may overrun its recording by this much (rounding in recipes) before it is an error;
# a small overrun is trimmed.
_END_TOLERANCE = 0.05
_SUMMARY_MAX_LINES = 50

# Skip categories, with their plural for the summary line.
_PLURALS = {
    "missing file": "missing files",
    "unreadable audio": "unreadable audio",
    "empty audio": "empty audio",
    "wrong sample rate": "wrong sample rate",
    "multichannel audio": "multichannel audio",
    "unsupported audio source": "unsupported audio sources",
    "malformed manifest entry": "malformed manifest entries",
    "duplicate id": "duplicate ids",
    "unknown recording": "unknown recordings",
    "bad segment": "bad segments",
    "no transcript": "no transcript",
    "empty transcript": "empty transcripts",
    "transcript with digits": "transcripts with digits",
    "transcript with symbols": "transcripts with symbols",
    "untokenisable transcript": "untokenisable transcripts",
    "transcript without audio": "transcripts without audio",
}


class _Skip(Exception):
    """One item is unusable: ``kind`` is its category, ``reason`` says why (for humans)."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass
class ImportReport:
    """What one import kept and what it skipped, and why."""

    split: str
    kept: int
    kept_seconds: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file or id, reason)
    # the category of each entry of ``skipped`` (same order), for the summary line
    skip_kinds: list[str] = field(default_factory=list, repr=False, compare=False)
    # windowing: the window length (None: none), the utterances longer than it that were cut into
    # windows, and the windows cut from them (counted in ``kept``)
    window_seconds: float | None = None
    windowed: int = 0
    windows: int = 0

    def skip(self, item: str, reason: str, kind: str = "other") -> None:
        self.skipped.append((str(item), reason))
        self.skip_kinds.append(kind)
        log.warning("%s: skipping %s: %s", self.split, item, reason)

    def counts(self) -> dict[str, int]:
        """Number of skips per category."""
        kinds = list(self.skip_kinds)
        kinds += ["other"] * (len(self.skipped) - len(kinds))
        return dict(Counter(kinds[:len(self.skipped)]))

    def summary(self) -> str:
        head = f"{self.split}: kept {self.kept} utterances ({self.kept_seconds / 3600:.2f} h)"
        if self.windowed:
            head += (f", {self.windows} of them windows of at most {self.window_seconds:g} s cut from "
                     f"{self.windowed} longer utterance{'s' if self.windowed > 1 else ''}")
        if not self.skipped:
            return head + "; skipped 0"
        parts = [f"{n} {kind if n == 1 else _PLURALS.get(kind, kind)}"
                 for kind, n in sorted(self.counts().items(), key=lambda kv: (-kv[1], kv[0]))]
        lines = [f"{head}; skipped {len(self.skipped)}: {', '.join(parts)}"]
        shown = self.skipped if len(self.skipped) <= _SUMMARY_MAX_LINES else self.skipped[:_SUMMARY_MAX_LINES - 1]
        lines += [f"  {item}: {reason}" for item, reason in shown]
        if len(shown) < len(self.skipped):
            lines.append(f"  ... and {len(self.skipped) - len(shown)} more")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# transcripts


# Symbols with a spoken form that normalisation would silently drop ("AT&T", "50%").
_SPOKEN_SYMBOLS_RE = re.compile(r"[&%$\u00a3\u20ac@#+=]")


def _clean_text(raw: str | None) -> str:
    """The normalised transcript, or raise :class:`_Skip` when it is unusable."""
    if raw is None or not raw.strip():
        raise _Skip("empty transcript", "empty transcript")
    if re.search(r"\d", raw):
        raise _Skip("transcript with digits", f"transcript has digits; spell them out: {_quote(raw)}")
    symbols = sorted(set(_SPOKEN_SYMBOLS_RE.findall(raw)))
    if symbols:
        raise _Skip("transcript with symbols", f"transcript has {' '.join(symbols)}; spell them out: "
                                               f"{_quote(raw)}")
    text = normalize_transcript(raw)
    if not text or not text.strip():
        raise _Skip("untokenisable transcript",
                    f"transcript has no usable characters (un-tokenisable): {_quote(raw)}")
    if not re.search(r"[A-Z]", text):
        raise _Skip("untokenisable transcript",
                    f"transcript has no letters after normalisation (un-tokenisable): {_quote(raw)}")
    return text


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


# --------------------------------------------------------------------------------------------
# audio checks


def _lhotse_info(path: Path):
    """Audio info through lhotse's other backends (ffmpeg, audioread...), for what soundfile can't read."""
    from lhotse.audio import info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # audioread imports deprecated modules
        return info(path)


def _check_file(path: Path, *, deep: bool, expect_rate: int | None = None,
                expect_channels: list[int] | None = None) -> None:
    """Raise :class:`_Skip` when ``path`` is missing, unreadable or empty.

    With ``deep``, decode the first and last block too (catches truncated FLAC/MP3 files).
    ``expect_rate`` and ``expect_channels`` are what a manifest claims about the file (a
    mismatch is reported); without ``expect_channels`` the file must be mono.
    """
    if not path.exists():
        raise _Skip("missing file", "audio file does not exist")
    if not path.is_file():
        raise _Skip("missing file", "not a regular file")
    if path.stat().st_size == 0:
        raise _Skip("empty audio", "empty file (0 bytes)")
    try:
        meta = sf.info(str(path))
        rate, frames, channels = meta.samplerate, meta.frames, meta.channels
        via_soundfile = True
    except Exception as sf_err:  # soundfile cannot read it; maybe another lhotse backend can
        try:
            meta = _lhotse_info(path)
        except Exception:
            raise _Skip("unreadable audio", f"unreadable audio: {_short(sf_err)}") from None
        rate, frames, channels = meta.samplerate, meta.frames, meta.channels
        via_soundfile = False
    if not frames or frames <= 0:
        raise _Skip("empty audio", "empty audio (0 samples)")
    if expect_channels is None:
        if channels != 1:
            raise _Skip("multichannel audio", _multichannel_reason(channels))
    elif any(c >= channels for c in expect_channels):
        raise _Skip("unreadable audio", f"the manifest uses channels {expect_channels}, the file has "
                                        f"{channels} channel(s)")
    if expect_rate is not None and rate != expect_rate and path.suffix.lower() != ".opus":
        raise _Skip("wrong sample rate", f"file is {rate} Hz but the manifest says {expect_rate} Hz")
    if deep and via_soundfile:
        try:
            with sf.SoundFile(str(path)) as f:
                block = min(1024, frames)
                f.read(block)
                if frames > block and f.seekable():
                    f.seek(frames - block)
                    f.read(block)
        except Exception as err:
            raise _Skip("unreadable audio", f"unreadable audio (corrupt or truncated): {_short(err)}") from None


def _multichannel_reason(channels: int) -> str:
    return (f"{channels} channels; bljust expects mono audio "
            f"(downmix first, e.g. 'sox in.wav -c 1 out.wav')")


def _rate_reason(rate: int) -> str:
    return (f"sample rate {rate} Hz, expected {SAMPLE_RATE} Hz "
            f"(re-run with --resample to resample on load)")


def _check_recording(rec: Recording, resample: bool) -> Recording:
    """Raise :class:`_Skip` for a recording bljust cannot train on; else return it (resampled)."""
    if rec.num_channels != 1:
        raise _Skip("multichannel audio", _multichannel_reason(rec.num_channels))
    if not rec.num_samples or rec.num_samples <= 0 or not rec.duration or rec.duration <= 0:
        raise _Skip("empty audio", "empty audio (0 samples)")
    if rec.sampling_rate != SAMPLE_RATE:
        if not resample:
            raise _Skip("wrong sample rate", _rate_reason(rec.sampling_rate))
        rec = rec.resample(SAMPLE_RATE)
    return rec


def _short(err: BaseException, limit: int = 160) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    msg = re.sub(r"^Error opening '.*?': ", "", msg)  # soundfile repeats the path the report names
    return msg if len(msg) <= limit else msg[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# shared


def _resolve_labeled(split: str, labeled: bool | None) -> bool:
    """Whether ``split`` keeps transcripts; raise for contradictory requests."""
    if split not in (*SPLITS, *OPTIONAL_SPLITS):
        raise ValueError(f"unknown split {split!r}; a bljust data directory has {', '.join(SPLITS)} "
                         f"(and optionally {', '.join(OPTIONAL_SPLITS)})")
    if split == "unlabeled":
        if labeled:
            raise ValueError("the 'unlabeled' split carries no text; import with labeled=False/None "
                             "or into 'labeled', 'dev' or 'test'")
        return False
    if labeled is False:
        raise ValueError(f"the {split!r} split needs transcripts; labeled=False only makes sense "
                         f"for split='unlabeled'")
    return True


def _check_window(split: str, keep_text: bool, window_seconds: float | None) -> None:
    """Raise unless ``window_seconds`` is None or a positive length for a split without transcripts."""
    if window_seconds is None:
        return
    if not (math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"the window length must be a positive number of seconds, got {window_seconds}")
    if keep_text:
        raise ValueError(f"cannot cut the {split!r} split into windows: a window boundary would cut through "
                         f"the words of its transcripts; only the 'unlabeled' split can be windowed")


def _cut_into_windows(report: ImportReport, recordings: list[Recording],
                      supervisions: list[SupervisionSegment], seconds: float) -> list[SupervisionSegment]:
    """``supervisions`` with every one longer than ``seconds`` replaced by one per window of lhotse's
    ``cut_into_windows`` (back to back, the last one shorter), ids ``<supervision id>-<i>`` as lhotse
    names them. A long recording (LibriLight's last minutes to hours) then trains as many utterances
    instead of being dropped whole by the training duration filter."""
    by_id = {r.id: r for r in recordings}
    out: list[SupervisionSegment] = []
    for sup in supervisions:
        if sup.duration <= seconds:
            out.append(sup)
            continue
        rec = by_id[sup.recording_id]
        cut = MonoCut(id=sup.id, start=sup.start, duration=sup.duration, channel=rec.channel_ids[0],
                      recording=rec)
        windows = cut.cut_into_windows(seconds)
        out += [fastcopy(sup, id=w.id, start=w.start, duration=w.duration) for w in windows]
        report.windowed += 1
        report.windows += len(windows)
    return out


def _finish(report: ImportReport, out_dir: Path, recordings: list[Recording],
            supervisions: list[SupervisionSegment], what: str,
            window_seconds: float | None = None) -> ImportReport:
    if not supervisions:
        if report.skipped:
            first = "; ".join(f"{item}: {reason}" for item, reason in report.skipped[:5])
            raise ValueError(f"nothing to import into {report.split!r} from {what}: all "
                             f"{len(report.skipped)} item(s) were skipped. First reasons: {first}")
        raise ValueError(f"nothing to import into {report.split!r}: {what} holds no utterances")
    if window_seconds is not None:
        report.window_seconds = window_seconds
        supervisions = _cut_into_windows(report, recordings, supervisions, window_seconds)
    used = {s.recording_id for s in supervisions}
    recordings = [r for r in recordings if r.id in used]
    report.kept = len(supervisions)
    report.kept_seconds = float(sum(s.duration for s in supervisions))
    if has_split(out_dir, report.split):
        log.warning("%s: overwriting the existing '%s' split in %s", report.split, report.split, out_dir)
    write_split(out_dir, report.split, RecordingSet.from_recordings(recordings),
                SupervisionSet.from_segments(supervisions))
    log.info("%s", report.summary())
    return report


# --------------------------------------------------------------------------------------------
# lhotse manifests

_MANIFEST_RE = re.compile(r"^(?:(?P<prefix>.+)_)?(?P<kind>recordings|supervisions)_(?P<part>.+?)"
                          r"(?P<ext>\.jsonl\.gz|\.jsonl)$")


def find_lhotse_manifests(dir: Path, part: str) -> tuple[Path, Path]:
    """The ``(recordings, supervisions)`` manifests of ``part`` in a ``lhotse prepare`` output dir.

    Looks for ``*_recordings_<part>.jsonl.gz`` and ``*_supervisions_<part>.jsonl.gz`` (or
    ``.jsonl``) with the same prefix; raises ``FileNotFoundError`` when absent and
    ``ValueError`` when several corpora in ``dir`` have that part.
    """
    d = Path(dir)
    if not d.is_dir():
        raise FileNotFoundError(f"no such directory: {d}")
    found: dict[tuple[str, str], dict[str, Path]] = {}  # (prefix, ext) -> kind -> path
    parts: set[str] = set()
    for p in sorted(d.iterdir()):
        m = _MANIFEST_RE.match(p.name)
        if not m or not p.is_file():
            continue
        parts.add(m["part"])
        if m["part"] == part:
            found.setdefault((m["prefix"] or "", m["ext"]), {})[m["kind"]] = p
    if not found:
        have = f"; parts present: {', '.join(sorted(parts))}" if parts else \
            " (no *_recordings_*.jsonl.gz files at all: run 'lhotse prepare <recipe> CORPUS_DIR OUT_DIR')"
        raise FileNotFoundError(f"no lhotse manifests for part {part!r} in {d}{have}")
    complete = {k: v for k, v in found.items() if len(v) == 2}
    # prefer gzipped manifests when both a .jsonl.gz and a .jsonl copy exist
    prefixes = {prefix for prefix, _ in complete}
    if len(prefixes) > 1:
        listing = ", ".join(str(v["recordings"].name) for v in complete.values())
        raise ValueError(f"ambiguous: several corpora in {d} have part {part!r} ({listing}); "
                         f"pass the recordings and supervisions manifests explicitly")
    if not complete:
        only = ", ".join(str(p) for v in found.values() for p in v.values())
        raise FileNotFoundError(f"incomplete lhotse manifests for part {part!r} in {d}: found only "
                                f"{only} (need both *_recordings_{part} and *_supervisions_{part})")
    key = sorted(complete, key=lambda k: k[1] != ".jsonl.gz")[0]
    return complete[key]["recordings"], complete[key]["supervisions"]


def _read_manifest(path: Path, cls, report: ImportReport, what: str) -> list:
    """Parse a JSON-lines manifest line by line, so one malformed entry skips only itself."""
    items = []
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                d = None
                try:
                    d = json.loads(line)
                    items.append(cls.from_dict(d))
                except Exception as err:
                    ident = repr(d["id"]) if isinstance(d, dict) and "id" in d else "(no id)"
                    report.skip(f"{path}:{i}", f"malformed {what} entry {ident}: {_short(err)}",
                                "malformed manifest entry")
    except (OSError, EOFError, UnicodeDecodeError) as err:  # the file itself is broken
        raise ValueError(f"cannot read lhotse manifest {path}: {_short(err)}") from err
    return items


def _rec_label(rec: Recording) -> str:
    """What names a recording in a report: its file when it has exactly one, else its id."""
    files = {s.source for s in rec.sources if s.type == "file"}
    return next(iter(files)) if len(files) == 1 else rec.id


def _absolute_sources(rec: Recording, manifest_dir: Path) -> Recording:
    """Make file sources absolute (relative ones are tried against the cwd, then the manifest dir)."""
    sources = []
    for src in rec.sources:
        if src.type == "file" and not Path(src.source).is_absolute():
            p = Path(src.source)
            cand = p.absolute() if p.exists() or not (manifest_dir / p).exists() else (manifest_dir / p).absolute()
            src = fastcopy(src, source=str(cand))
        sources.append(src)
    return fastcopy(rec, sources=sources)


def import_lhotse_manifests(recordings: Path, supervisions: Path, out_dir: Path, split: str, *,
                            labeled: bool | None = None, resample: bool = False,
                            check_audio: bool = True, window_seconds: float | None = None) -> ImportReport:
    """Import a lhotse recipe's manifests as ``split`` of the data directory ``out_dir``.

    ``labeled=None`` keeps the text when the split is labeled (``labeled``/``dev``/``test``);
    ``labeled=False`` (or ``split='unlabeled'``) drops text and alignments, e.g. to use a
    labeled corpus as unlabeled data. ``resample=True`` keeps audio at other sample rates with
    lhotse's on-the-fly resampling to 16 kHz. ``check_audio=True`` opens every audio file
    (header plus first and last block); ``False`` trusts the manifest but still checks that
    files exist. ``window_seconds`` (the unlabeled split only) cuts every utterance longer than
    that into windows of that length (lhotse's ``cut_into_windows``), one utterance each.
    Returns an :class:`ImportReport`; raises ``ValueError`` when nothing is usable.
    """
    return _import_manifests([(Path(recordings), Path(supervisions))], Path(out_dir), split, labeled=labeled,
                             resample=resample, check_audio=check_audio, window_seconds=window_seconds)


def import_lhotse_parts(lhotse_dir: Path, parts: Sequence[str], out_dir: Path, split: str, *,
                        labeled: bool | None = None, resample: bool = False, check_audio: bool = True,
                        window_seconds: float | None = None) -> ImportReport:
    """Import the union of ``parts`` of one ``lhotse prepare`` output directory as ``split``.

    E.g. LibriSpeech's ``train-clean-360`` and ``train-other-500`` as one 860-hour unlabeled split.
    Each part's manifests are found by :func:`find_lhotse_manifests`; every part that lacks them
    is named in one ``FileNotFoundError`` before any is read. A recording or supervision id that
    two parts share is reported as a duplicate and kept once. Other arguments as for
    :func:`import_lhotse_manifests`.
    """
    parts = list(parts)
    if not parts:
        raise ValueError("no part to import: name at least one part of the lhotse output (e.g. train-clean-100)")
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise ValueError(f"part(s) named more than once: {', '.join(repeated)}")
    if not Path(lhotse_dir).is_dir():
        raise FileNotFoundError(f"no such directory: {lhotse_dir}")
    pairs, missing = [], []
    for part in parts:
        try:
            pairs.append(find_lhotse_manifests(Path(lhotse_dir), part))
        except FileNotFoundError as err:
            missing.append(str(err))
    if missing:
        raise FileNotFoundError("; ".join(missing))
    return _import_manifests(pairs, Path(out_dir), split, labeled=labeled, resample=resample,
                             check_audio=check_audio, window_seconds=window_seconds)


@dataclass
class _Kept:
    """What the manifests imported so far kept, so that several parts make one split without duplicates."""

    recordings: dict[str, Recording] = field(default_factory=dict)
    manifest_of: dict[str, str] = field(default_factory=dict)  # recording id -> the manifest that had it
    supervision_ids: set[str] = field(default_factory=set)
    supervisions: list[SupervisionSegment] = field(default_factory=list)


def _import_manifests(pairs: list[tuple[Path, Path]], out_dir: Path, split: str, *, labeled: bool | None,
                      resample: bool, check_audio: bool, window_seconds: float | None) -> ImportReport:
    """Check and import the union of ``(recordings, supervisions)`` manifest pairs as ``split``."""
    keep_text = _resolve_labeled(split, labeled)
    _check_window(split, keep_text, window_seconds)
    for p in (p for pair in pairs for p in pair):
        if not p.is_file():
            raise FileNotFoundError(f"no such lhotse manifest: {p}")
    report = ImportReport(split=split, kept=0, kept_seconds=0.0, skipped=[])
    kept = _Kept()
    for recordings, supervisions in pairs:
        _import_pair(recordings, supervisions, report, kept, keep_text=keep_text, resample=resample,
                     check_audio=check_audio)
    what = "; ".join(f"{recordings} + {supervisions}" for recordings, supervisions in pairs)
    return _finish(report, out_dir, list(kept.recordings.values()), kept.supervisions, what, window_seconds)


def _import_pair(recordings: Path, supervisions: Path, report: ImportReport, kept: _Kept, *,
                 keep_text: bool, resample: bool, check_audio: bool) -> None:
    """Check one recordings and supervisions manifest pair; add what is usable to ``kept``, report the rest.

    A supervision must refer to a recording of its own pair."""
    split = report.split
    recs = _read_manifest(recordings, Recording, report, "recording")
    sups = _read_manifest(supervisions, SupervisionSegment, report, "supervision")
    sups_by_rec: dict[str, list[SupervisionSegment]] = {}
    for s in sups:
        sups_by_rec.setdefault(s.recording_id, []).append(s)
    log.info("%s: checking %d recordings and %d supervisions from %s", split, len(recs), len(sups),
             recordings)

    good: dict[str, Recording] = {}
    skipped_recs: set[str] = set()
    for n, rec in enumerate(recs, start=1):
        if n % 10000 == 0:
            log.info("%s: checked %d/%d recordings", split, n, len(recs))
        rec = _absolute_sources(rec, recordings.parent)
        label = _rec_label(rec)
        n_sups = len(sups_by_rec.get(rec.id, []))
        if rec.id in good or rec.id in skipped_recs:
            report.skip(label, f"duplicate recording id {rec.id!r} in {recordings.name}", "duplicate id")
            continue
        if rec.id in kept.recordings:
            report.skip(label, f"duplicate recording id {rec.id!r}: {kept.manifest_of[rec.id]} has it too "
                               f"(kept from there)", "duplicate id")
            skipped_recs.add(rec.id)
            continue
        try:
            for src in rec.sources:
                if src.type == "file":
                    path = Path(src.source)
                    if check_audio:
                        # (a recording with transforms, e.g. resampling, differs from its file)
                        _check_file(path, deep=True, expect_channels=list(src.channels),
                                    expect_rate=None if rec.transforms else rec.sampling_rate)
                    elif not path.is_file():
                        raise _Skip("missing file", "audio file does not exist")
                elif check_audio and src.type not in ("url", "command", "memory", "shar"):
                    raise _Skip("unsupported audio source", f"unsupported audio source type {src.type!r}")
            rec = _check_recording(rec, resample)
        except _Skip as s:
            skipped_recs.add(rec.id)
            notes = [f"recording {rec.id!r}"] if Path(label).stem != rec.id else []
            if n_sups > 1:
                notes.append(f"drops its {n_sups} supervisions")
            report.skip(label, s.reason + (f" ({'; '.join(notes)})" if notes else ""), s.kind)
            continue
        good[rec.id] = rec

    for sup in sups:
        rec = good.get(sup.recording_id)
        if rec is None:
            if sup.recording_id not in skipped_recs:  # skipped recordings are already reported
                report.skip(sup.id, f"supervision refers to unknown recording {sup.recording_id!r} "
                                    f"(not in {recordings.name})", "unknown recording")
            continue
        label = _rec_label(rec)
        item = label if sup.id == rec.id else f"{label} [{sup.id}]"
        try:
            if sup.id in kept.supervision_ids:
                raise _Skip("duplicate id", f"duplicate supervision id {sup.id!r} in {supervisions.name}")
            sup = _check_segment(sup, rec)
            if keep_text:
                sup = fastcopy(sup, text=_clean_text(sup.text))
            else:
                sup = fastcopy(sup, text=None, alignment=None)
        except _Skip as s:
            report.skip(item, s.reason, s.kind)
            continue
        kept.supervision_ids.add(sup.id)
        kept.supervisions.append(sup)

    # recordings without any supervision: whole-recording utterances when unlabeled, else reported
    for rec_id, rec in good.items():
        if rec_id in sups_by_rec:
            continue
        if keep_text:
            report.skip(_rec_label(rec), "no transcript: the recording has no supervision", "no transcript")
        else:
            kept.supervision_ids.add(rec.id)
            kept.supervisions.append(SupervisionSegment(id=rec.id, recording_id=rec.id, start=0.0,
                                                        duration=rec.duration, channel=0))
    kept.recordings.update(good)
    kept.manifest_of.update(dict.fromkeys(good, recordings.name))


def _check_segment(sup: SupervisionSegment, rec: Recording) -> SupervisionSegment:
    if not (sup.duration > 0) or math.isnan(sup.start) or sup.start < 0:
        raise _Skip("bad segment", f"segment [{sup.start:.2f}, +{sup.duration:.2f}] s is empty or negative")
    end = sup.start + sup.duration
    if sup.start >= rec.duration or end > rec.duration + _END_TOLERANCE:
        raise _Skip("bad segment", f"segment {sup.start:.2f}-{end:.2f} s lies beyond the end of "
                                   f"the audio ({rec.duration:.2f} s)")
    if end > rec.duration:
        sup = fastcopy(sup, duration=rec.duration - sup.start)
    channels = sup.channel if isinstance(sup.channel, list) else [sup.channel]
    if any(c not in rec.channel_ids for c in channels):
        raise _Skip("bad segment", f"segment is on channel {sup.channel}, audio has {rec.channel_ids}")
    return sup


# --------------------------------------------------------------------------------------------
# a folder of audio files

_HEADER_KEYS = {"id", "utt", "uttid", "utt_id", "utterance", "utterance_id", "path", "file", "filename",
                "file_name", "audio", "audio_path", "wav", "key", "name"}
_HEADER_VALUES = {"text", "transcript", "transcription", "sentence", "label", "words", "normalized_text"}


def _table_key(key: str) -> str:
    """A transcript table key without a leading './', backslashes or an audio extension."""
    key = key.replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    suffix = Path(key).suffix
    return key[: -len(suffix)] if suffix.lower() in AUDIO_EXTENSIONS else key


def _read_transcripts(path: Path, report: ImportReport) -> dict[str, tuple[int, str]]:
    """``{key: (line number, raw text)}`` from a "<id-or-path><TAB|,|space><text>" table.

    Keys lose any audio extension (see :func:`_table_key`)."""
    table: dict[str, tuple[int, str]] = {}
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        content = raw.decode("latin-1")
        log.warning("%s is not UTF-8; read it as Latin-1", path)
    for i, line in enumerate(content.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            key, _, text = line.partition("\t")
        else:
            first = line.split(maxsplit=1)[0]
            if "," in first:  # CSV-ish: the key ends at the first comma
                key, _, text = line.partition(",")
            else:
                key, text = first, line[len(first):]
        key, text = key.strip().strip('"'), text.strip()
        if len(text) >= 2 and text[0] == text[-1] == '"':  # a quoted CSV field
            text = next(csv.reader(io.StringIO(text)))[0]
        if not table and key.lower() in _HEADER_KEYS and text.lower() in _HEADER_VALUES:
            continue  # a header row
        key = _table_key(key)
        if key in table:
            report.skip(f"{path}:{i}", f"duplicate transcript line for {key!r} (first on line "
                                       f"{table[key][0]}); using the first", "duplicate id")
            continue
        table[key] = (i, text)
    return table


def _audio_files(audio_dir: Path) -> list[Path]:
    files, other = [], Counter()
    for p in sorted(audio_dir.rglob("*")):
        if p.is_dir():
            continue
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            files.append(p)
        else:
            other[p.suffix.lower() or p.name] += 1
    if other:
        log.info("ignoring %d non-audio files under %s (%s)", sum(other.values()), audio_dir,
                 ", ".join(f"{n} {ext}" for ext, n in other.most_common(5)))
    return files


def import_folder(audio_dir: Path, out_dir: Path, split: str, *, transcripts: Path | None = None,
                  resample: bool = False, check_audio: bool = True,
                  window_seconds: float | None = None) -> ImportReport:
    """Import a folder (searched recursively) of audio files as ``split`` of ``out_dir``.

    The utterance id is the file stem and the speaker the parent directory's name. The optional
    ``transcripts`` table has one line per utterance: ``<utt-id or path relative to audio_dir>``,
    a TAB (or a comma, or the first whitespace), then the transcript; blank lines, ``#`` comments
    and an ``id<TAB>text`` style header are ignored. Without ``transcripts`` the split must be
    ``unlabeled``; with them, audio without a transcript line and transcript lines without
    audio are both reported. Other arguments as for :func:`import_lhotse_manifests`.
    """
    audio_dir, out_dir = Path(audio_dir).absolute(), Path(out_dir)
    keep_text = _resolve_labeled(split, None)
    _check_window(split, keep_text, window_seconds)
    if keep_text and transcripts is None:
        raise ValueError(f"the {split!r} split needs transcripts: pass transcripts=<table>, or "
                         f"import the folder as split='unlabeled'")
    if not keep_text and transcripts is not None:
        raise ValueError("the 'unlabeled' split carries no text: omit transcripts, or import into "
                         "'labeled', 'dev' or 'test'")
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"no such audio directory: {audio_dir}")
    report = ImportReport(split=split, kept=0, kept_seconds=0.0, skipped=[])
    table: dict[str, tuple[int, str]] = {}
    if transcripts is not None:
        transcripts = Path(transcripts)
        if not transcripts.is_file():
            raise FileNotFoundError(f"no such transcript table: {transcripts}")
        table = _read_transcripts(transcripts, report)

    files = _audio_files(audio_dir)
    log.info("%s: checking %d audio files under %s", split, len(files), audio_dir)
    recordings: list[Recording] = []
    sups: list[SupervisionSegment] = []
    first_file: dict[str, Path] = {}
    used_keys: set[str] = set()
    for n, path in enumerate(files, start=1):
        if n % 10000 == 0:
            log.info("%s: checked %d/%d files", split, n, len(files))
        utt = path.stem
        rel = path.relative_to(audio_dir)
        try:
            if utt in first_file:
                raise _Skip("duplicate id", f"duplicate utterance id {utt!r} (also {first_file[utt]}); "
                                            f"file stems must be unique")
            first_file[utt] = path
            text = None
            if keep_text:
                keys = [k for k in (rel.with_suffix("").as_posix(), utt, path.with_suffix("").as_posix())
                        if k in table]
                if not keys:
                    raise _Skip("no transcript", f"no transcript line for {utt!r} in {transcripts}")
                used_keys.update(keys)
                line_no, raw = table[keys[0]]
                try:
                    text = _clean_text(raw)
                except _Skip as s:
                    raise _Skip(s.kind, f"{s.reason} ({transcripts.name} line {line_no})") from None
            if check_audio:
                _check_file(path, deep=True)
            try:
                rec = Recording.from_file(path, recording_id=utt)
            except Exception as err:
                raise _Skip("unreadable audio", f"unreadable audio: {_short(err)}") from None
            rec = _check_recording(rec, resample)
        except _Skip as s:
            report.skip(str(path), s.reason, s.kind)
            continue
        recordings.append(rec)
        sups.append(SupervisionSegment(id=utt, recording_id=utt, start=0.0, duration=rec.duration,
                                       channel=0, text=text, speaker=path.parent.name))

    # transcript lines that match no audio file
    for key, (line_no, _) in table.items():
        if key not in used_keys:
            reason = f"no audio file for {key!r} under {audio_dir} ({transcripts.name} line {line_no})"
            report.skip(f"{transcripts}:{line_no}", reason, "transcript without audio")
    # used_keys: a file can match its line under several key forms; a line used by a file whose
    # other problems skipped it still counts as matched (that file's skip is reported).
    return _finish(report, out_dir, recordings, sups, str(audio_dir), window_seconds)
