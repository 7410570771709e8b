"""``bljust corpus check``: every broken file and utterance found with the loader's and the filter's reason,
nothing on a clean corpus, and a ``--write-clean`` copy that passes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import AudioSource, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from bljust.cli import main
from bljust.config import load_config
from bljust.data.check import CheckReport, check_corpus, check_recording, write_clean
from bljust.data.audio import BadAudio, SkippedAudio, load_checked
from bljust.data.loader import filter_cuts
from bljust.data.manifests import SAMPLE_RATE, SPLITS, load_split, manifest_paths, write_split
from bljust.data.tokenizer import CharTokenizer
from bljust.models.asr import ASRModel
from tests.broken import INFEASIBLE, make_broken_corpus
from tests.conftest import REPO, TINY

OWN_FILES = {"dev-rate": "sample rate mismatch", "dev-stereo": "channel mismatch", "dev-command": "non-finite samples"}
"""Recording id → reason, for the broken recordings this file adds (beside tests/broken.py's)."""

OWN_UTTERANCES = {
    "dev-overrun": "supervision outside its recording",
    "dev-no-text": "no transcript",
    "labeled-digits": "transcript has units the tokenizer does not know",
    "unlabeled-short": "too short",
    "test-orphan": "recording not in the manifest",
}
"""Supervision id → reason, for the bad utterances of good audio this file adds."""

DEV_WARNING = "dev-digits"
"""A dev utterance with a unit the tokenizer does not know: a warning, kept (evaluation scores it)."""


def _add(data: Path, split: str, recs: list[Recording], sups: list[SupervisionSegment]) -> None:
    rec_path, sup_path = manifest_paths(data, split)
    write_split(data, split, RecordingSet.from_recordings([*RecordingSet.from_file(rec_path), *recs]),
                SupervisionSet.from_segments([*SupervisionSet.from_file(sup_path), *sups]))


def _file_rec(rid: str, path: Path, num_samples: int, channels: list[int] | None = None, **source) -> Recording:
    src = AudioSource(type=source.get("type", "file"), channels=channels or [0], source=source.get("source", str(path)))
    return Recording(id=rid, sources=[src], sampling_rate=SAMPLE_RATE, num_samples=num_samples,
                     duration=num_samples / SAMPLE_RATE)


def _sup(sid: str, rec: Recording, text: str | None, start: float = 0.0, duration: float | None = None):
    return SupervisionSegment(id=sid, recording_id=rec.id, start=start, channel=0, text=text,
                              duration=rec.duration if duration is None else duration)


def add_own_cases(data: Path) -> None:
    """Add OWN_FILES, OWN_UTTERANCES and DEV_WARNING to the splits of the broken copy ``data``."""
    donor = next(iter(load_split(data, "labeled")))
    speech, own = donor.load_audio()[0], data / "own"
    own.mkdir()
    n = len(speech)

    sf.write(own / "rate.wav", speech[::2], SAMPLE_RATE // 2)  # 8 kHz, declared as 16 kHz
    rate = _file_rec("dev-rate", own / "rate.wav", n)
    sf.write(own / "stereo.wav", np.stack([speech, speech], axis=1), SAMPLE_RATE)  # two channels, one declared
    stereo = _file_rec("dev-stereo", own / "stereo.wav", n)
    nan = speech.copy()
    nan[n // 2] = np.nan
    sf.write(own / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")  # read through a command: lhotse's path
    command = _file_rec("dev-command", own / "nan.wav", n, type="command", source=f"cat {own / 'nan.wav'}")
    sf.write(own / "good.wav", speech, SAMPLE_RATE)
    overrun = _file_rec("dev-overrun", own / "good.wav", n)
    no_text = _file_rec("dev-no-text", own / "good.wav", n)
    warn = _file_rec(DEV_WARNING, own / "good.wav", n)
    _add(data, "dev", [rate, stereo, command, overrun, no_text, warn],
         [_sup("dev-rate", rate, "A"), _sup("dev-stereo", stereo, "A"), _sup("dev-command", command, "A"),
          _sup("dev-overrun", overrun, "A", duration=overrun.duration + 1.0), _sup("dev-no-text", no_text, None),
          _sup(DEV_WARNING, warn, "HELLO 42")])

    digits = _file_rec("labeled-digits", own / "good.wav", n)
    _add(data, "labeled", [digits], [_sup("labeled-digits", digits, "HELLO 42")])
    short = _file_rec("unlabeled-short", own / "good.wav", n)
    _add(data, "unlabeled", [short], [_sup("unlabeled-short", short, None, duration=0.2)])
    orphan = _file_rec("test-orphan", own / "good.wav", n)
    _add(data, "test", [], [_sup("test-orphan", orphan, "A")])


@pytest.fixture(scope="module")
def broken(tiny_corpus, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    data = tmp_path_factory.mktemp("check") / "broken"
    expected = make_broken_corpus(tiny_corpus, data)
    add_own_cases(data)
    return data, expected


@pytest.fixture(scope="module")
def checked(broken) -> CheckReport:
    return check_corpus(broken[0], load_config(TINY), jobs=2)


def _findings(report: CheckReport, kind: str) -> dict[str, tuple[str, str]]:
    """item → (split, reason) of the bad findings of ``kind``."""
    return {f.item: (f.split, f.reason) for s in report.splits.values() for f in s.bad if f.kind == kind}


def test_every_broken_file_and_utterance_is_found(broken, checked):
    data, expected = broken
    files = {f.file: (f.split, f.reason, f.utterances) for s in checked.splits.values() for f in s.bad
             if f.kind == "file"}
    for path, reason in expected.items():
        split = Path(path).stem.split("-")[0]
        kind = Path(path).stem.split("-")[1]
        assert files.get(path) == (split, reason, (f"{split}-broken-{kind}",)), path
    by_id = _findings(checked, "file")
    for rid, reason in OWN_FILES.items():
        assert by_id[rid] == ("dev", reason)
    assert len(by_id) == len(expected) + len(OWN_FILES)  # and nothing else

    utterances = _findings(checked, "utterance")
    assert utterances == {INFEASIBLE: ("labeled", "more tokens than encoder frames"),
                          **{sid: (sid.split("-")[0], r) for sid, r in OWN_UTTERANCES.items()}}
    warnings = [(f.item, f.reason) for s in checked.splits.values() for f in s.warnings]
    assert warnings == [(DEV_WARNING, "transcript has units the tokenizer does not know")]
    assert not checked.ok


def test_reasons_are_the_loaders_and_the_training_filters(broken, checked):
    data, expected = broken
    # The loader says the same of every broken file as the check. (Not through load_split: dev-overrun stops it.)
    for split in SPLITS:
        for rec in RecordingSet.from_file(manifest_paths(data, split)[0]):
            if "-broken-" in rec.id and rec.id != INFEASIBLE or rec.id in OWN_FILES:
                with pytest.raises(BadAudio) as err:
                    load_checked(rec.to_cut())
                want = OWN_FILES[rec.id] if rec.id in OWN_FILES else expected[rec.sources[0].source]
                assert err.value.problem.reason == want, (rec.id, err.value)

    # And the training filter, run as a run runs it, drops what the check reports, word for word.
    cfg = load_config(TINY)
    model = ASRModel(cfg, CharTokenizer().vocab_size)
    limits = {"min_seconds": cfg.data.min_utterance_seconds,
              "max_seconds": min(cfg.data.max_utterance_seconds, cfg.data.max_duration)}
    for split, tokenizer in (("labeled", CharTokenizer()), ("unlabeled", None)):
        skipped = SkippedAudio()
        _, report = filter_cuts(load_split(data, split), split, **limits, tokenizer=tokenizer,
                                output_frames=model.output_frames, skipped=skipped)
        bad = checked.splits[split].bad
        files = {f.file: f.reason for f in bad if f.kind == "file"}
        assert skipped.files.items() <= files.items()  # the missing and empty files, found by size
        mine = {f.item: f"{f.reason}: {f.detail}" if f.detail else f.reason for f in bad if f.kind == "utterance"}
        assert dict(report.dropped) == mine


def test_sample_count_tolerance_is_lhotses(tmp_path):
    x = 0.1 * np.random.default_rng(0).standard_normal(SAMPLE_RATE * 2)
    sf.write(tmp_path / "a.wav", x, SAMPLE_RATE)  # 16-bit PCM: read in blocks all the same
    assert check_recording(_file_rec("a", tmp_path / "a.wav", len(x))) is None
    # lhotse pads or trims up to 0.5 s on load, so training uses such a file: not bad
    assert check_recording(_file_rec("a", tmp_path / "a.wav", len(x) + SAMPLE_RATE // 10)) is None
    reason, detail = check_recording(_file_rec("a", tmp_path / "a.wav", len(x) + SAMPLE_RATE))
    assert reason == "sample count mismatch" and f"holds {len(x)}" in detail


def test_clean_corpus_has_nothing_bad(tiny_corpus, capsys):
    assert main(["corpus", "check", str(tiny_corpus), "--config", str(TINY), "--jobs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing bad") and ": 0 bad files, 0 bad utterances of " in out
    # the optional splits a synthesised corpus carries are checked too
    report = check_corpus(tiny_corpus, load_config(TINY), jobs=1)
    assert "unlabeled_text" in report.splits and report.splits["unlabeled_text"].utterances > 0
    assert report.missing_splits == []


def _ids(data: Path) -> dict[str, set[str]]:
    return {s: {x.id for x in SupervisionSet.from_file(manifest_paths(data, s)[1])} for s in SPLITS}


def test_cli_lists_the_bad_and_writes_a_clean_copy_that_passes(broken, checked, tiny_corpus, tmp_path):
    data, expected = broken
    clean = tmp_path / "clean"
    cmd = [sys.executable, "-m", "bljust", "corpus", "check"]
    run = subprocess.run([*cmd, str(data), "--config", str(TINY), "--jobs", "2", "--write-clean", str(clean)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    table = lines[:lines.index("")]
    assert table[0].split() == ["split", "reason", "files", "utterances"]
    rows = {m.group(1, 2): m.group(3, 4, 5) for line in table[1:]
            if (m := re.fullmatch(r"(\S+)\s+(.+?)\s+(\S+)\s+(\d+)(?:\s+(warning \(kept\)))?", line))}
    assert len(rows) == len(table) - 1
    assert rows["labeled", "more tokens than encoder frames"] == ("-", "1", None)
    assert rows["dev", "sample rate mismatch"] == ("1", "1", None)
    assert rows["test", "missing file"] == ("1", "1", None)
    assert rows["dev", "transcript has units the tokenizer does not know"] == ("-", "1", "warning (kept)")
    for path, reason in expected.items():
        assert any(path in line and f": {reason}" in line for line in lines), path
    n_bad = len(expected) + len(OWN_FILES) + 1 + len(OWN_UTTERANCES)
    assert f"{data}: {len(expected) + len(OWN_FILES)} bad files, {n_bad} bad utterances of " in run.stdout
    assert f"clean copy: {clean} (" in lines[-1]

    again = subprocess.run([*cmd, str(clean), "--config", str(TINY), "--jobs", "2", "--quiet"],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 bad files, 0 bad utterances" in again.stdout

    # Every good utterance is kept: the clean corpus's, and the dev one with only a warning.
    kept, before = _ids(clean), _ids(data)
    bad = {u for s in checked.splits.values() for u in s.bad_utterances()}
    for split in SPLITS:
        assert kept[split] == before[split] - bad
        assert _ids(tiny_corpus)[split] <= kept[split]
    assert DEV_WARNING in kept["dev"]
    # No recording without an utterance (dev-overrun's is good audio, but its only supervision was bad).
    recs = {r.id for r in RecordingSet.from_file(manifest_paths(clean, "dev")[0])}
    assert "dev-overrun" not in recs and DEV_WARNING in recs


def test_write_clean_refuses_the_data_dir_itself_and_existing_manifests(broken, checked, tmp_path, capsys):
    data, _ = broken
    with pytest.raises(ValueError, match="the data directory .* itself"):
        write_clean(checked, data, data / ".." / data.name)
    assert main(["corpus", "check", str(data), "--write-clean", str(data), "--quiet"]) == 2
    assert "itself" in capsys.readouterr().err
    write_split(tmp_path, "dev", RecordingSet.from_recordings([]), SupervisionSet.from_segments([]))
    assert main(["corpus", "check", str(data), "--write-clean", str(tmp_path), "--quiet"]) == 2
    assert "already holds manifests" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["corpus", "check", str(tmp_path), "--quiet"]) == 2
    assert "not a bljust data directory" in capsys.readouterr().err
    assert main(["corpus", "check", str(tmp_path), "--jobs", "0"]) == 2
    for path in manifest_paths(tmp_path, "dev"):
        path.write_bytes(b"not gzip")
    assert main(["corpus", "check", str(tmp_path), "--quiet"]) == 2
    assert "cannot read the 'dev' manifests" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["corpus", "check"])
    assert e.value.code == 2


def test_a_split_that_cannot_be_cut_is_a_clear_error_pointing_at_the_check(broken):
    # dev-overrun's supervision ends a second after its recording: lhotse cannot cut the split
    with pytest.raises(ValueError, match=r"cannot cut the 'dev' split .*bljust corpus check"):
        load_split(broken[0], "dev")


def test_a_transducer_config_keeps_utterances_with_more_units_than_frames(broken):
    """A transducer emits any number of units per frame, and its training keeps such utterances: so does the check."""
    report = check_corpus(broken[0], load_config(TINY, ["model.loss=rnnt"]), jobs=2)
    utterances = _findings(report, "utterance")
    assert INFEASIBLE not in utterances
    assert set(utterances) == set(OWN_UTTERANCES)
