"""Bring-your-own-data importers: every bad item is reported, good items round-trip."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

from bljust.data.importers import (ImportReport, find_lhotse_manifests, import_folder,
                                   import_lhotse_manifests)
from bljust.data.manifests import SAMPLE_RATE, cut_speaker, cut_text, has_split, load_split

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def _skip_for(report: ImportReport, name: str) -> str:
    """The reason of the one skip whose item or reason names ``name``."""
    hits = [reason for item, reason in report.skipped if name in item or name in reason]
    assert len(hits) == 1, f"expected one skip naming {name!r}, got {report.skipped}"
    return hits[0]


def _texts(data_dir: Path, split: str) -> dict[str, str | None]:
    return {c.supervisions[0].id: cut_text(c) for c in load_split(data_dir, split)}


# ---------------------------------------------------------------------------------------------
# import_folder


def test_folder_labeled_round_trip(tmp_path, make_audio):
    audio = tmp_path / "audio"
    make_audio(audio / "alice" / "a1.wav", seconds=0.5, seed=1)
    make_audio(audio / "alice" / "a2.flac", seconds=0.75, seed=2)
    make_audio(audio / "bob" / "sub" / "b1.flac", seconds=1.0, kind="noise", seed=3)
    (audio / "README.txt").write_text("not audio")
    table = tmp_path / "transcripts.tsv"
    table.write_text("# utterances\n"
                     "id\ttext\n"                          # a header row is ignored
                     "a1\tHello, world!\n"                 # by utterance id, TAB
                     "alice/a2.flac  don't   STOP\n"       # by relative path, whitespace
                     "bob/sub/b1,\"Yes, sir.\"\n")         # CSV, quoted field
    report = import_folder(audio, tmp_path / "data", "labeled", transcripts=table)

    assert report.skipped == [] and report.kept == 3
    assert report.kept_seconds == pytest.approx(2.25)
    assert report.summary().startswith("labeled: kept 3 utterances (0.00 h); skipped 0")
    cuts = {c.supervisions[0].id: c for c in load_split(tmp_path / "data", "labeled")}
    assert {k: cut_text(c) for k, c in cuts.items()} == {
        "a1": "HELLO WORLD", "a2": "DON'T STOP", "b1": "YES SIR"}
    assert {k: cut_speaker(c) for k, c in cuts.items()} == {"a1": "alice", "a2": "alice", "b1": "sub"}
    assert cuts["b1"].duration == pytest.approx(1.0)
    src = cuts["a2"].recording.sources[0].source
    assert Path(src).is_absolute() and Path(src) == (audio / "alice" / "a2.flac").absolute()
    assert cuts["a1"].load_audio().shape == (1, 8000)


def test_folder_unlabeled(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "spk7" / "x.wav")
    make_audio(tmp_path / "in" / "spk8" / "y.flac")
    report = import_folder(tmp_path / "in", tmp_path / "data", "unlabeled")
    assert report.kept == 2 and not report.skipped
    cuts = load_split(tmp_path / "data", "unlabeled")
    assert sorted(cut_speaker(c) for c in cuts) == ["spk7", "spk8"]
    assert all(cut_text(c) is None for c in cuts)


def test_folder_split_rules(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "x.wav")
    table = tmp_path / "t.tsv"
    table.write_text("x\tHELLO\n")
    with pytest.raises(ValueError, match="needs transcripts"):
        import_folder(tmp_path / "in", tmp_path / "data", "dev")
    with pytest.raises(ValueError, match="carries no text"):
        import_folder(tmp_path / "in", tmp_path / "data", "unlabeled", transcripts=table)
    with pytest.raises(ValueError, match="unknown split"):
        import_folder(tmp_path / "in", tmp_path / "data", "train", transcripts=table)
    assert not has_split(tmp_path / "data", "dev")


# Each case: (name of the bad file, how to make it, table line for it or None, reason pattern).
def _corrupt(p: Path, make_audio):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"RIFF\x00\x00garbage" * 40)


def _truncated_flac(p: Path, make_audio):
    make_audio(p.with_suffix(".tmp.flac"), seconds=2.0, kind="noise")
    data = p.with_suffix(".tmp.flac").read_bytes()
    p.with_suffix(".tmp.flac").unlink()
    p.write_bytes(data[: len(data) // 2])


BAD_FOLDER_CASES = {
    "missing": ("ghost.wav", None, "ghost\tHELLO THERE", r"no audio file for 'ghost'"),
    "corrupt": ("broken.wav", _corrupt, "broken\tHELLO", r"unreadable audio"),
    "truncated": ("cut_short.flac", _truncated_flac, "cut_short\tHELLO", r"unreadable audio"),
    "zero_bytes": ("nothing.wav", lambda p, m: p.write_bytes(b""), "nothing\tHELLO", r"empty"),
    "zero_samples": ("silent.wav", lambda p, m: m(p, seconds=0.0), "silent\tHELLO", r"empty audio"),
    "8khz": ("phone.wav", lambda p, m: m(p, sample_rate=8000), "phone\tHELLO",
             re.escape("sample rate 8000 Hz, expected 16000 Hz (re-run with --resample to resample on load)")),
    "stereo": ("two.wav", lambda p, m: m(p, channels=2), "two\tHELLO", r"2 channels.*mono"),
    "empty_text": ("quiet.wav", lambda p, m: m(p), "quiet\t   ", r"empty transcript"),
    "punct_only": ("dots.wav", lambda p, m: m(p), "dots\t... ?! --", r"un-tokenisable"),
    "digits_only": ("num.wav", lambda p, m: m(p), "num\t1984", r"digits; spell them out"),
    "digits": ("count.wav", lambda p, m: m(p), "count\tI HAVE 2 CATS", r"digits; spell them out"),
    "symbols": ("amp.wav", lambda p, m: m(p), "amp\tSALT & PEPPER", r"has &; spell them out"),
    "no_line": ("orphan.wav", lambda p, m: m(p), None, r"no transcript line for 'orphan'"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDER_CASES))
def test_folder_bad_item_is_reported(case, tmp_path, make_audio):
    name, make, line, pattern = BAD_FOLDER_CASES[case]
    audio = tmp_path / "audio" / "spk"
    make_audio(audio / "good.wav")
    if make is not None:
        make(audio / name, make_audio)
    table = tmp_path / "t.tsv"
    table.write_text("good\tA GOOD ONE\n" + (line + "\n" if line else ""))

    report = import_folder(tmp_path / "audio", tmp_path / "data", "labeled", transcripts=table)
    reason = _skip_for(report, Path(name).stem)
    assert re.search(pattern, reason), reason
    assert report.kept == 1 and len(report.skipped) == 1
    assert _texts(tmp_path / "data", "labeled") == {"good": "A GOOD ONE"}
    assert f"skipped 1: 1 " in report.summary() and name.split(".")[0] in report.summary()


def test_folder_many_problems_summary(tmp_path, make_audio, caplog):
    audio = tmp_path / "audio"
    make_audio(audio / "s" / "good.wav")
    make_audio(audio / "s" / "low1.wav", sample_rate=8000)
    make_audio(audio / "s" / "low2.wav", sample_rate=8000)
    table = tmp_path / "t.tsv"
    table.write_text("good\tGOOD\nlow1\tLOW\nlow2\tLOW\nlost\tLOST\n")
    with caplog.at_level(logging.WARNING, logger="bljust.data"):
        report = import_folder(audio, tmp_path / "data", "test", transcripts=table)
    first = report.summary().splitlines()[0]
    assert first == ("test: kept 1 utterances (0.00 h); skipped 3: 2 wrong sample rate, "
                     "1 transcript without audio")
    assert len(report.summary().splitlines()) == 4
    assert any("low1.wav" in r.getMessage() for r in caplog.records)


def test_folder_resample_keeps_8khz(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "s" / "phone.wav", seconds=0.5, sample_rate=8000)
    table = tmp_path / "t.tsv"
    table.write_text("phone\tCALL ME\n")
    report = import_folder(tmp_path / "in", tmp_path / "data", "labeled", transcripts=table, resample=True)
    assert report.kept == 1 and not report.skipped
    (cut,) = load_split(tmp_path / "data", "labeled")
    assert cut.sampling_rate == SAMPLE_RATE
    assert cut.load_audio().shape == (1, 8000)  # 0.5 s at 16 kHz
    assert cut_text(cut) == "CALL ME"


def test_folder_all_skipped_raises(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "a.wav", sample_rate=8000)
    make_audio(tmp_path / "in" / "b.wav", channels=2)
    table = tmp_path / "t.tsv"
    table.write_text("a\tHI\nb\tHO\n")
    with pytest.raises(ValueError, match=r"all 2 item\(s\) were skipped.*a\.wav: sample rate 8000 Hz"):
        import_folder(tmp_path / "in", tmp_path / "data", "labeled", transcripts=table)
    assert not has_split(tmp_path / "data", "labeled")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no utterances"):
        import_folder(tmp_path / "empty", tmp_path / "data", "unlabeled")


def test_folder_duplicate_stems_reported(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "s1" / "utt.wav")
    make_audio(tmp_path / "in" / "s2" / "utt.flac")
    report = import_folder(tmp_path / "in", tmp_path / "data", "unlabeled")
    assert report.kept == 1
    ((item, reason),) = report.skipped
    assert item.endswith("s2/utt.flac") and "duplicate utterance id 'utt'" in reason


def test_summary_caps_listing():
    report = ImportReport(split="dev", kept=10, kept_seconds=7200.0, skipped=[])
    for i in range(60):
        report.skip(f"f{i}.wav", "audio file does not exist", "missing file")
    lines = report.summary().splitlines()
    assert lines[0] == "dev: kept 10 utterances (2.00 h); skipped 60: 60 missing files"
    assert len(lines) == 51 and lines[-1].strip() == "... and 11 more"
    assert lines[1].strip() == "f0.wav: audio file does not exist"
    # a report built by hand (no categories) still summarises
    assert "skipped 1: 1 other" in ImportReport("test", 0, 0.0, [("x", "y")]).summary()


# ---------------------------------------------------------------------------------------------
# lhotse manifests

LIBRI_TEXTS = {
    "1272-128104-0000": "MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES",
    "1272-128104-0001": "NOR IS MISTER QUILTER'S MANNER LESS INTERESTING THAN HIS MATTER",
    "1272-135031-0000": "BECAUSE YOU WERE SLEEPING INSTEAD OF CONQUERING",
    "2277-149896-0000": "HE WAS IN A FEVERED STATE OF MIND",
    "2277-149896-0001": "HE ARRANGED HIS PAPERS AND LOOKED AT THE CLOCK",
}


def _fake_librispeech(root: Path, make_audio, part: str = "dev-clean") -> Path:
    """``<root>/LibriSpeech/<part>/<spk>/<chapter>/<id>.flac`` + ``<spk>-<chapter>.trans.txt``."""
    corpus = root / "LibriSpeech"
    chapters: dict[Path, list[str]] = {}
    for i, (utt, text) in enumerate(sorted(LIBRI_TEXTS.items())):
        spk, chapter, _ = utt.split("-")
        d = corpus / part / spk / chapter
        make_audio(d / f"{utt}.flac", seconds=0.3 + 0.1 * i, kind="noise", seed=i)
        chapters.setdefault(d / f"{spk}-{chapter}.trans.txt", []).append(f"{utt} {text}")
    for path, lines in chapters.items():
        path.write_text("\n".join(lines) + "\n")
    return corpus


@pytest.fixture
def librispeech_manifests(tmp_path, make_audio):
    from lhotse.recipes import prepare_librispeech
    corpus = _fake_librispeech(tmp_path / "corpus", make_audio)
    prepare_librispeech(corpus, dataset_parts=["dev-clean"], output_dir=tmp_path / "manifests")
    return tmp_path / "manifests"


def test_librispeech_round_trip(tmp_path, librispeech_manifests):
    recs, sups = find_lhotse_manifests(librispeech_manifests, "dev-clean")
    assert recs.name == "librispeech_recordings_dev-clean.jsonl.gz"
    assert sups.name == "librispeech_supervisions_dev-clean.jsonl.gz"
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "dev")
    assert report.kept == 5 and not report.skipped
    expected = {u: 0.3 + 0.1 * i for i, u in enumerate(sorted(LIBRI_TEXTS))}
    assert report.kept_seconds == pytest.approx(sum(expected.values()))
    cuts = load_split(tmp_path / "data", "dev")
    assert {c.supervisions[0].id: cut_text(c) for c in cuts} == LIBRI_TEXTS
    assert {c.supervisions[0].id: c.duration for c in cuts} == pytest.approx(expected)
    assert {cut_speaker(c) for c in cuts} == {"1272", "2277"}
    for c in cuts:
        assert Path(c.recording.sources[0].source).is_absolute()
        assert c.load_audio().shape[1] == round(expected[c.supervisions[0].id] * SAMPLE_RATE)


def test_librispeech_as_unlabeled_drops_text(tmp_path, librispeech_manifests):
    recs, sups = find_lhotse_manifests(librispeech_manifests, "dev-clean")
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "unlabeled", labeled=False)
    assert report.kept == 5
    cuts = load_split(tmp_path / "data", "unlabeled")
    assert sorted(c.supervisions[0].id for c in cuts) == sorted(LIBRI_TEXTS)
    assert all(cut_text(c) is None and c.supervisions[0].alignment is None for c in cuts)
    # labeled=None into 'unlabeled' drops the text too; contradictory requests are refused
    import_lhotse_manifests(recs, sups, tmp_path / "data2", "unlabeled")
    assert set(_texts(tmp_path / "data2", "unlabeled").values()) == {None}
    with pytest.raises(ValueError, match="carries no text"):
        import_lhotse_manifests(recs, sups, tmp_path / "data3", "unlabeled", labeled=True)
    with pytest.raises(ValueError, match="needs transcripts"):
        import_lhotse_manifests(recs, sups, tmp_path / "data3", "dev", labeled=False)


def test_librispeech_missing_and_corrupt_audio(tmp_path, librispeech_manifests):
    recs, sups = find_lhotse_manifests(librispeech_manifests, "dev-clean")
    flacs = {p.stem: p for p in (tmp_path / "corpus").rglob("*.flac")}
    flacs["1272-128104-0000"].unlink()
    flacs["2277-149896-0001"].write_bytes(b"fLaC but not really" * 10)
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "labeled")
    assert "does not exist" in _skip_for(report, "1272-128104-0000.flac")
    assert "unreadable audio" in _skip_for(report, "2277-149896-0001.flac")
    assert report.kept == 3 and len(report.skipped) == 2
    assert "1 missing file" in report.summary() and "1 unreadable audio" in report.summary()
    assert set(_texts(tmp_path / "data", "labeled")) == set(LIBRI_TEXTS) - {
        "1272-128104-0000", "2277-149896-0001"}
    # without audio checks a missing file is still noticed (the corrupt one is not opened)
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "labeled", check_audio=False)
    assert report.kept == 4 and "does not exist" in _skip_for(report, "1272-128104-0000.flac")


def _manifests(tmp_path: Path, recordings: list[Recording], segments: list[SupervisionSegment]):
    out = tmp_path / "own"
    out.mkdir(exist_ok=True)
    RecordingSet.from_recordings(recordings).to_file(out / "mine_recordings_all.jsonl.gz")
    SupervisionSet.from_segments(segments).to_file(out / "mine_supervisions_all.jsonl.gz")
    return find_lhotse_manifests(out, "all")


def _seg(rec: Recording, text: str | None, sid: str | None = None, rid: str | None = None):
    return SupervisionSegment(id=sid or rec.id, recording_id=rid or rec.id, start=0.0,
                              duration=rec.duration, channel=0, text=text, speaker="s")


def test_lhotse_bad_items_are_reported(tmp_path, make_audio):
    a = tmp_path / "wav"
    good = Recording.from_file(make_audio(a / "good.wav"))
    low = Recording.from_file(make_audio(a / "low.wav", sample_rate=8000))
    stereo = Recording.from_file(make_audio(a / "stereo.wav", channels=2))
    digits = Recording.from_file(make_audio(a / "digits.wav"))
    blank = Recording.from_file(make_audio(a / "blank.wav"))
    punct = Recording.from_file(make_audio(a / "punct.wav"))
    segments = [_seg(good, "it's fine."), _seg(low, "LOW"), _seg(stereo, "TWO"),
                _seg(digits, "ROOM 101"), _seg(blank, "  "), _seg(punct, "?!"),
                _seg(good, "WHO AM I", sid="stray", rid="not-there")]
    recs, sups = _manifests(tmp_path, [good, low, stereo, digits, blank, punct], segments)

    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "labeled")
    assert report.kept == 1 and len(report.skipped) == 6
    assert _skip_for(report, "low.wav") == (
        "sample rate 8000 Hz, expected 16000 Hz (re-run with --resample to resample on load)")
    assert "2 channels" in _skip_for(report, "stereo.wav")
    assert "digits; spell them out" in _skip_for(report, "digits.wav")
    assert "empty transcript" in _skip_for(report, "blank.wav")
    assert "un-tokenisable" in _skip_for(report, "punct.wav")
    assert "unknown recording 'not-there'" in _skip_for(report, "stray")
    assert _texts(tmp_path / "data", "labeled") == {"good": "IT'S FINE"}

    # resample=True keeps the 8 kHz recording, loaded at 16 kHz
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "labeled", resample=True)
    assert report.kept == 2
    cut = next(c for c in load_split(tmp_path / "data", "labeled") if c.recording_id == "low")
    assert cut.sampling_rate == SAMPLE_RATE and cut_text(cut) == "LOW"
    assert cut.load_audio().shape == (1, round(0.5 * SAMPLE_RATE))


def test_lhotse_malformed_entries_and_bad_segments(tmp_path, make_audio):
    import gzip
    import json

    a = tmp_path / "wav"
    one = Recording.from_file(make_audio(a / "one.wav", seconds=1.0))
    lone = Recording.from_file(make_audio(a / "lone.wav", seconds=0.5))  # has no supervision
    recs, sups = _manifests(tmp_path, [one, lone], [])
    lines = [json.dumps(SupervisionSegment(id="one-a", recording_id="one", start=0.0, duration=0.5,
                                           channel=0, text="first half").to_dict()),
             "{not json at all",
             json.dumps({"id": "half-baked", "recording_id": "one"}),
             json.dumps(SupervisionSegment(id="one-late", recording_id="one", start=0.8, duration=2.0,
                                           channel=0, text="TOO LONG").to_dict())]
    with gzip.open(sups, "wt") as f:
        f.write("\n".join(lines) + "\n")

    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "labeled")
    assert report.kept == 1
    assert "malformed supervision entry" in _skip_for(report, f"{sups.name}:2")
    assert "malformed supervision entry 'half-baked'" in _skip_for(report, f"{sups.name}:3")
    assert "beyond the end of the audio" in _skip_for(report, "one-late")
    assert "no supervision" in _skip_for(report, "lone.wav")
    assert len(report.skipped) == 4
    assert _texts(tmp_path / "data", "labeled") == {"one-a": "FIRST HALF"}
    # as unlabeled data a recording without supervisions becomes one whole-recording utterance
    report = import_lhotse_manifests(recs, sups, tmp_path / "data", "unlabeled")
    assert report.kept == 2 and report.kept_seconds == pytest.approx(1.0)
    assert _texts(tmp_path / "data", "unlabeled") == {"one-a": None, "lone": None}


def test_lhotse_all_skipped_raises(tmp_path, make_audio):
    low = Recording.from_file(make_audio(tmp_path / "wav" / "low.wav", sample_rate=8000))
    recs, sups = _manifests(tmp_path, [low], [_seg(low, "HELLO")])
    with pytest.raises(ValueError, match=r"all 1 item\(s\) were skipped.*low\.wav: sample rate 8000"):
        import_lhotse_manifests(recs, sups, tmp_path / "data", "dev")


def test_find_lhotse_manifests_errors(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="lhotse prepare"):
        find_lhotse_manifests(d, "dev-clean")
    for name in ("librispeech_recordings_dev-clean.jsonl.gz", "librispeech_supervisions_dev-clean.jsonl.gz",
                 "librispeech_recordings_test-clean.jsonl.gz"):
        (d / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"'train-clean-5'.*parts present: dev-clean, test-clean"):
        find_lhotse_manifests(d, "train-clean-5")
    with pytest.raises(FileNotFoundError, match="incomplete"):
        find_lhotse_manifests(d, "test-clean")
    assert find_lhotse_manifests(d, "dev-clean") == (
        d / "librispeech_recordings_dev-clean.jsonl.gz", d / "librispeech_supervisions_dev-clean.jsonl.gz")
    for name in ("other_recordings_dev-clean.jsonl.gz", "other_supervisions_dev-clean.jsonl.gz"):
        (d / name).write_bytes(b"")
    with pytest.raises(ValueError, match="ambiguous"):
        find_lhotse_manifests(d, "dev-clean")


# ---------------------------------------------------------------------------------------------
# real speech: the LibriVox utterances of Debian's pocketsphinx-testdata


def _sphinx_to_table(transcription: Path, out: Path) -> Path:
    """Sphinx "<s> text </s> (uttid)" lines -> "uttid<TAB>text"."""
    lines = []
    for line in transcription.read_text().splitlines():
        m = re.match(r"^(.*)\(([^()\s]+)\)\s*$", line.strip())
        if m:
            text = re.sub(r"</?s>|<sil>", " ", m.group(1))
            lines.append(f"{m.group(2)}\t{' '.join(text.split())}")
    out.write_text("\n".join(lines) + "\n")
    return out


def test_pocketsphinx_librivox(tmp_path):
    if not (LIBRIVOX / "transcription").is_file():
        pytest.skip(f"{LIBRIVOX} is absent (Debian package pocketsphinx-testdata)")
    table = _sphinx_to_table(LIBRIVOX / "transcription", tmp_path / "librivox.tsv")
    report = import_folder(LIBRIVOX, tmp_path / "data", "test", transcripts=table)
    assert report.kept == 5 and not report.skipped
    assert 20 < report.kept_seconds < 30
    cuts = {c.supervisions[0].id: c for c in load_split(tmp_path / "data", "test")}
    assert cut_text(cuts["sense_and_sensibility_01_austen_64kb-0880"]) == "HE WAS NOT AN ILL DISPOSED YOUNG MAN"
    assert all(cut_speaker(c) == "librivox" for c in cuts.values())
    audio = cuts["sense_and_sensibility_01_austen_64kb-0930"].load_audio()
    assert audio.shape[0] == 1 and abs(audio.shape[1] / SAMPLE_RATE - 3.29) < 0.01
    assert audio.std() > 1e-3  # real speech, not silence
