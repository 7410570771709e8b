"""LibriSpeech at scale, on a miniature: ``scripts/prepare_librispeech.sh`` end to end (lhotse's recipe,
then ``bljust corpus import`` per split), ``recipes/librispeech.yaml`` trained a few steps at test size
and scored on ``test_other``, and what they rely on: several lhotse parts imported as one split, and
long unlabeled recordings cut into windows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

from bljust.cli import build_parser
from bljust.data.importers import import_folder, import_lhotse_manifests, import_lhotse_parts
from bljust.data.loader import training_reason
from bljust.data.manifests import OPTIONAL_SPLITS, SAMPLE_RATE, SPLITS, cut_text, has_split, load_split
from tests.conftest import REPO
from tests.data.librispeech_miniature import PARTS, make_librispeech_miniature

SCRIPT = REPO / "scripts" / "prepare_librispeech.sh"
RECIPE = REPO / "recipes" / "librispeech.yaml"
# The recipe at test size: a 1-block Conformer, a small BPE vocabulary, short batches, one CPU thread.
SMALL = ["model.d_model=32", "model.num_layers=1", "model.num_heads=2", "model.conv_kernel=7",
         "model.subsampling_channels=16", "tokenizer.vocab_size=40", "data.max_duration=20", "data.num_buckets=2",
         "data.num_workers=0", "train.device=cpu", "train.num_threads=1", "train.valid_every=2",
         "train.checkpoint_every=2", "train.log_every=1", "optim.warmup_steps=1"]
# Where the script puts each part.
SPLIT_PARTS = {"labeled": ["train-clean-100"], "unlabeled": ["train-clean-360", "train-other-500"],
               "dev": ["dev-clean"], "test": ["test-clean"], "dev_other": ["dev-other"],
               "test_other": ["test-other"]}


def _env() -> dict[str, str]:
    # the venv's bljust and lhotse first on PATH, as after 'source .venv/bin/activate'
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1"}


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=_env(), timeout=600)


def _bljust(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "bljust", *args], capture_output=True, text=True, cwd=REPO,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _transcripts(corpus: Path, part: str) -> dict[str, str]:
    """``{utterance id: transcript}`` of one part of a LibriSpeech tree, from its .trans.txt files."""
    lines = [ln for p in (corpus / part).rglob("*.trans.txt") for ln in p.read_text().splitlines()]
    return dict(ln.split(" ", 1) for ln in lines)


@pytest.fixture(scope="module")
def miniature(tiny_corpus, tmp_path_factory) -> Path:
    return make_librispeech_miniature(tiny_corpus, tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def prepared(miniature, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The data directory the script makes from the miniature, and the script's run."""
    data = tmp_path_factory.mktemp("librispeech")
    # the directory above LibriSpeech/, as the openslr archives unpack
    r = _script(str(miniature.parent), str(data))
    assert r.returncode == 0, r.stderr[-3000:]
    return data, r


def test_prepare_librispeech_makes_every_split(prepared, miniature):
    data, r = prepared
    assert all(has_split(data, s) for s in (*SPLITS, "dev_other", "test_other"))
    assert r.stdout.count("skipped 0") == len(SPLIT_PARTS) and "skipping" not in r.stderr
    assert sorted(p.name for p in (data / "lhotse").glob("librispeech_recordings_*")) == sorted(
        f"librispeech_recordings_{part}.jsonl.gz" for part in PARTS)
    for split, parts in SPLIT_PARTS.items():
        expected = {u: t for part in parts for u, t in _transcripts(miniature, part).items()}
        assert len(expected) == sum(PARTS[p] for p in parts)
        got = {c.supervisions[0].id: cut_text(c) for c in load_split(data, split)}
        if split == "unlabeled":  # the union of both parts, transcripts dropped
            assert got == dict.fromkeys(expected)
        else:
            assert got == expected, split


def test_the_recipe_trains_and_scores_test_other(prepared, tmp_path):
    data, _ = prepared
    small = [a for kv in SMALL for a in ("--set", kv)]
    r = _bljust("train", "--data", str(data), "--out", str(tmp_path / "sup"), "--config", str(RECIPE), *small,
                "--set", "train.max_steps=2")
    assert json.loads(r.stdout)["steps"] == 2
    run = tmp_path / "bljust"
    r = _bljust("train", "--data", str(data), "--out", str(run), "--config", str(RECIPE), "--method", "bljust",
                *small, "--set", "train.max_steps=3", "--set", "bljust.explore_steps=1", "--set",
                "bljust.joint_steps=1", "--set", "bljust.finetune_steps=1")
    assert json.loads(r.stdout)["steps"] == 3
    config = (run / "config.yaml").read_text()
    assert "kind: bpe" in config and "loss: cpc" in config and "amp_dtype: bf16" in config

    r = _bljust("evaluate", str(run), "--data", str(data), "--split", "test_other")
    result = json.loads((run / "eval" / "test_other.json").read_text())
    assert result["split"] == "test_other" and result["num_utterances"] == PARTS["test-other"]
    assert "test_other: WER" in r.stdout


def test_corpus_check_reads_every_librispeech_split(prepared):
    from bljust.config import load_config
    from bljust.data.check import check_corpus

    report = check_corpus(prepared[0], load_config(RECIPE, SMALL))
    assert report.ok and set(report.splits) == set(SPLIT_PARTS)


def test_a_missing_required_part_is_named(tmp_path):
    corpus = tmp_path / "LibriSpeech"
    for part in ("dev-clean", "train-other-500"):
        (corpus / part).mkdir(parents=True)
    r = _script(str(corpus), str(tmp_path / "data"))
    assert r.returncode != 0
    assert f"{corpus} lacks the required part(s) train-clean-100 test-clean" in r.stderr
    assert f"skipping train-clean-360: not in {corpus}" in r.stderr
    assert not (tmp_path / "data").exists()

    r = _script(str(tmp_path / "nowhere"), str(tmp_path / "data"))
    assert r.returncode != 0 and f"no such directory: {tmp_path / 'nowhere'}" in r.stderr


def test_parts_import_as_one_split(prepared, tmp_path):
    manifests = shutil.copytree(prepared[0] / "lhotse", tmp_path / "lhotse")
    with pytest.raises(FileNotFoundError, match="'train-clean-999'.*parts present: dev-clean"):
        import_lhotse_parts(manifests, ["train-clean-360", "train-clean-999"], tmp_path / "data", "unlabeled")
    with pytest.raises(ValueError, match="named more than once: train-clean-360"):
        import_lhotse_parts(manifests, ["train-clean-360", "train-clean-360"], tmp_path / "data", "unlabeled")
    # a second part that repeats the first's recordings: each reported, kept once
    for kind in ("recordings", "supervisions"):
        shutil.copy(manifests / f"librispeech_{kind}_train-clean-360.jsonl.gz",
                    manifests / f"librispeech_{kind}_copy.jsonl.gz")
    report = import_lhotse_parts(manifests, ["train-clean-360", "copy"], tmp_path / "data", "unlabeled")
    assert report.kept == PARTS["train-clean-360"] and len(report.skipped) == PARTS["train-clean-360"]
    assert all("librispeech_recordings_train-clean-360.jsonl.gz has it too" in reason
               for _, reason in report.skipped)


def _long_recording(corpus: Path, path: Path, seconds: float) -> np.ndarray:
    """Write ``seconds`` of the synthesised corpus's speech, utterance after utterance, to one FLAC file."""
    chunks, total = [], 0
    while total < seconds * SAMPLE_RATE:
        for cut in load_split(corpus, "labeled"):
            chunks.append(cut.load_audio()[0])
            total += chunks[-1].size
    audio = np.concatenate(chunks)[: round(seconds * SAMPLE_RATE)]
    path.parent.mkdir(parents=True)
    sf.write(path, audio, SAMPLE_RATE, format="FLAC")
    return sf.read(path, dtype="float32")[0]  # what loading gives back


def test_long_unlabeled_recordings_are_cut_into_windows(tiny_corpus, tmp_path):
    book = _long_recording(tiny_corpus, tmp_path / "audio" / "book.flac", 95.0)
    short = Recording.from_file(load_split(tiny_corpus, "labeled")[0].recording.sources[0].source)
    long = Recording.from_file(tmp_path / "audio" / "book.flac")
    # as LibriLight's lhotse recipe describes a recording: one supervision over all of it
    out = tmp_path / "manifests"
    out.mkdir()
    RecordingSet.from_recordings([long, short]).to_file(out / "rec.jsonl.gz")
    SupervisionSet.from_segments([SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration,
                                                     channel=0, speaker="reader") for r in (long, short)]
                                 ).to_file(out / "sup.jsonl.gz")

    report = import_lhotse_manifests(out / "rec.jsonl.gz", out / "sup.jsonl.gz", tmp_path / "data", "unlabeled",
                                     window_seconds=20)
    assert (report.kept, report.windowed, report.windows) == (6, 1, 5)
    assert "kept 6 utterances (0.03 h), 5 of them windows of at most 20 s cut from 1 longer utterance" in (
        report.summary())
    cuts = sorted(load_split(tmp_path / "data", "unlabeled"), key=lambda c: (c.recording_id != "book", c.start))
    windows = cuts[:5]
    assert [c.supervisions[0].id for c in windows] == [f"book-{i}" for i in range(5)]
    assert [c.start for c in windows] == pytest.approx([0, 20, 40, 60, 80])
    assert [c.duration for c in windows] == pytest.approx([20, 20, 20, 20, 15])
    for c in windows:
        audio = c.load_audio()
        assert audio.shape == (1, round(c.duration * SAMPLE_RATE))
        start = round(c.start * SAMPLE_RATE)
        np.testing.assert_array_equal(audio[0], book[start:start + audio.shape[1]])
        assert c.supervisions[0].speaker == "reader" and cut_text(c) is None
        assert training_reason(c, min_seconds=0.3, max_seconds=30.0, needs_text=False) is None
    assert cuts[5].supervisions[0].id == short.id and cuts[5].duration == pytest.approx(short.duration)

    # without windows the training duration filter drops the whole recording
    import_lhotse_manifests(out / "rec.jsonl.gz", out / "sup.jsonl.gz", tmp_path / "whole", "unlabeled")
    whole = next(c for c in load_split(tmp_path / "whole", "unlabeled") if c.recording_id == "book")
    assert training_reason(whole, min_seconds=0.3, max_seconds=30.0, needs_text=False)[0] == "too long"

    # a folder of audio files is windowed alike
    report = import_folder(tmp_path / "audio", tmp_path / "folder", "unlabeled", window_seconds=20)
    assert (report.kept, report.windows) == (5, 5)


def test_windows_are_for_unlabeled_splits_only(tmp_path, make_audio):
    make_audio(tmp_path / "in" / "a.wav")
    (tmp_path / "t.tsv").write_text("a\tHELLO\n")
    with pytest.raises(ValueError, match="cannot cut the 'labeled' split into windows.*only the 'unlabeled'"):
        import_folder(tmp_path / "in", tmp_path / "data", "labeled", transcripts=tmp_path / "t.tsv",
                      window_seconds=20)
    with pytest.raises(ValueError, match="positive number of seconds, got 0"):
        import_folder(tmp_path / "in", tmp_path / "data", "unlabeled", window_seconds=0)


def test_corpus_import_offers_every_split():
    # the parser spells the split names out (it does not import lhotse): they must not drift
    parser = build_parser()
    for split in (*SPLITS, *OPTIONAL_SPLITS):
        assert parser.parse_args(["corpus", "import", "d", "--split", split]).split == split
    args = parser.parse_args(["corpus", "import", "d", "--split", "unlabeled", "--lhotse-dir", "m", "--part",
                              "train-clean-360", "train-other-500", "--window-seconds", "20"])
    assert args.part == ["train-clean-360", "train-other-500"] and args.window_seconds == 20.0
