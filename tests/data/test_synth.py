"""The demo corpus generator: splits, manifests, audio, determinism, failures, summary."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bljust.data import synth, voices
from bljust.data.manifests import SAMPLE_RATE, SPLITS, cut_group, cut_speaker, cut_text, load_split
from bljust.data.synth import format_summary, synthesize_corpus
from bljust.data.voices import FAMILIES
from bljust.data.text import normalize_transcript

TINY = dict(labeled_minutes=0.3, unlabeled_minutes=0.5, dev_minutes=0.2, test_minutes=0.2)


def _synth(out_dir: Path, seed: int) -> dict:
    return synthesize_corpus(out_dir, **TINY, seed=seed, jobs=2, progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus_seed0")
    return out, _synth(out, seed=0)


@pytest.fixture(scope="module")
def corpus_again(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus_seed0_again")
    return out, _synth(out, seed=0)


@pytest.fixture(scope="module")
def corpus_other_seed(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus_seed1")
    return out, _synth(out, seed=1)


@pytest.fixture(scope="module")
def cuts(corpus) -> dict:
    out, _ = corpus
    return {split: load_split(out, split) for split in SPLITS}


def _utterance_table(out: Path) -> list[dict[str, str]]:
    with open(out / "utterances.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _manifest_rows(out: Path) -> dict[str, list[dict]]:
    """All manifest rows, with the corpus directory replaced so two corpora can be compared."""
    rows = {}
    for path in sorted(out.glob("*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            rows[path.name] = [json.loads(line.replace(str(out), "<out>")) for line in f]
    return rows


# ---------------------------------------------------------------------------------------------


def test_all_manifests_present_and_loadable(corpus, cuts):
    out, _ = corpus
    names = sorted(p.name for p in out.glob("*.jsonl.gz"))
    # The default (unseen) scenario has no test_unseen split; every corpus has unlabeled_text.
    assert names == sorted(f"{s}_{kind}.jsonl.gz" for s in (*SPLITS, "unlabeled_text")
                           for kind in ("recordings", "supervisions"))
    for split in SPLITS:
        assert len(cuts[split]) > 0
        for cut in cuts[split]:
            sup = cut.supervisions[0]
            assert cut.recording.id == sup.id == sup.recording_id
            assert sup.language == "English"
            assert cut_group(cut) in FAMILIES


def test_budgets_are_reached(corpus, cuts):
    for split in SPLITS:
        seconds = sum(c.duration for c in cuts[split])
        budget = TINY[f"{split}_minutes"] * 60
        # Filled until the budget is reached, overshooting by less than one long utterance.
        assert budget <= seconds < budget + 15.0


def test_speakers_disjoint_and_families_present(cuts):
    speakers = {split: {cut_speaker(c) for c in cuts[split]} for split in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not speakers[a] & speakers[b], (a, b)
    assert {cut_group(c) for split in SPLITS for c in cuts[split]} == set(FAMILIES)
    # A speaker is one voice: one family per speaker id, and the id says which.
    for split in SPLITS:
        for c in cuts[split]:
            assert cut_speaker(c).startswith(cut_group(c))


def test_texts_and_held_out_sentences(corpus, cuts):
    out, _ = corpus
    for split in ("labeled", "dev", "test"):
        for c in cuts[split]:
            text = cut_text(c)
            assert text and normalize_transcript(text) == text
    assert all(cut_text(c) is None for c in cuts["unlabeled"])
    # unlabeled_text: the same recordings, with the transcripts the unlabeled split withholds.
    rows = {r["id"]: r for r in _utterance_table(out)}
    with_text = load_split(out, "unlabeled_text")
    assert [c.id for c in with_text] == [c.id for c in cuts["unlabeled"]]
    for c, u in zip(with_text, cuts["unlabeled"]):
        assert c.recording == u.recording and cut_speaker(c) == cut_speaker(u) and cut_group(c) == cut_group(u)
        assert cut_text(c) == normalize_transcript(rows[c.id]["text"])
    # The unlabeled sentences are only in the synthesis record, never in a manifest.
    table = _utterance_table(out)
    assert {r["id"] for r in table} == {c.supervisions[0].id for s in SPLITS for c in cuts[s]}
    texts = {split: {normalize_transcript(r["text"]) for r in table if r["split"] == split} for split in SPLITS}
    for split in ("labeled", "dev", "test"):
        assert texts[split] == {cut_text(c) for c in cuts[split]}
    train = texts["labeled"] | texts["unlabeled"]
    assert not train & (texts["dev"] | texts["test"])
    assert not texts["dev"] & texts["test"]


def test_audio_format_and_durations(corpus, cuts):
    out, _ = corpus
    for split in SPLITS:
        for cut in cuts[split]:
            path = cut.recording.sources[0].source
            assert path == str(out / "audio" / split / cut_speaker(cut) / f"{cut.recording.id}.flac")
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.format) == (SAMPLE_RATE, 1, "FLAC")
            assert info.frames == cut.recording.num_samples
            assert cut.duration == pytest.approx(info.frames / SAMPLE_RATE)
            assert cut.supervisions[0].duration == pytest.approx(cut.recording.duration)
    # The audio is speech plus noise, not silence or clipping.
    x = cuts["dev"][0].load_audio()[0]
    assert 0.01 < np.abs(x).max() < 1.0 and np.std(x) > 1e-3


def test_summary_matches_manifests(corpus, cuts):
    out, summary = corpus
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["scenario"] == "unseen"
    assert summary["scenario_settings"] == {**synth.SCENARIOS["unseen"].settings(), **TINY}
    assert list(summary["splits"]) == list(SPLITS)
    total_utts = 0
    for split in SPLITS:
        s = summary["splits"][split]
        seconds = sum(c.duration for c in cuts[split])
        assert s["utterances"] == len(cuts[split])
        assert s["seconds"] == pytest.approx(seconds, abs=0.01)
        assert s["minutes"] == pytest.approx(seconds / 60, abs=0.001)
        assert s["hours"] == pytest.approx(seconds / 3600, abs=1e-4)
        assert s["speakers"] == len({cut_speaker(c) for c in cuts[split]})
        for fam in FAMILIES:
            fam_cuts = [c for c in cuts[split] if cut_group(c) == fam]
            assert s["families"][fam]["utterances"] == len(fam_cuts)
            assert s["families"][fam]["seconds"] == pytest.approx(sum(c.duration for c in fam_cuts), abs=0.01)
        total_utts += len(cuts[split])
    assert summary["total"]["utterances"] == total_utts
    assert sum(f["utterances"] for f in summary["families"].values()) == total_utts
    assert summary["wall_seconds"] > 0 and summary["real_time_factor"] > 0
    assert summary["real_time_factor"] == pytest.approx(summary["total"]["seconds"] / summary["wall_seconds"], rel=0.01)
    table = format_summary(summary)
    for word in (*SPLITS, *FAMILIES, "real time"):
        assert word in table


def test_same_seed_is_identical(corpus, corpus_again):
    (a, sa), (b, sb) = corpus, corpus_again
    assert _manifest_rows(a) == _manifest_rows(b)
    assert [(r["id"], r["text"]) for r in _utterance_table(a)] == [(r["id"], r["text"]) for r in _utterance_table(b)]
    for split in ("labeled", "unlabeled"):
        for cut_a, cut_b in zip(load_split(a, split), load_split(b, split)):
            assert cut_a.id == cut_b.id
            assert np.array_equal(cut_a.load_audio(), cut_b.load_audio())
    assert sa["splits"] == sb["splits"]


def test_jobs_do_not_change_the_result(corpus, tmp_path):
    a, _ = corpus
    synthesize_corpus(tmp_path, **TINY, seed=0, jobs=1, progress=False)
    assert _manifest_rows(a) == _manifest_rows(tmp_path)
    for cut_a, cut_b in zip(load_split(a, "test"), load_split(tmp_path, "test")):
        assert np.array_equal(cut_a.load_audio(), cut_b.load_audio())


def test_other_seed_differs(corpus, corpus_other_seed):
    (a, _), (c, _) = corpus, corpus_other_seed
    texts_a = [r["text"] for r in _utterance_table(a)]
    texts_c = [r["text"] for r in _utterance_table(c)]
    assert texts_a != texts_c
    assert _manifest_rows(a) != _manifest_rows(c)


def test_failed_sentences_are_retried_then_skipped(tmp_path, monkeypatch, caplog):
    """jobs=1 runs in this process, so the patched engine is the one used."""
    calls: Counter[str] = Counter()
    real_flite = voices._flite_wav

    def flaky_flite(spk, utt):
        calls[utt.id] += 1
        if utt.id.endswith("-00001"):
            raise voices.SynthError("simulated crash")      # always: skipped
        if calls[utt.id] == 1:
            raise voices.SynthError("simulated hiccup")     # once: the retry succeeds
        return real_flite(spk, utt)

    monkeypatch.setattr(voices, "_flite_wav", flaky_flite)
    caplog.set_level(logging.WARNING, logger="bljust.synth")
    summary = synthesize_corpus(tmp_path, labeled_minutes=0.4, unlabeled_minutes=0.05, dev_minutes=0.05,
                                test_minutes=0.05, jobs=1, progress=False)
    flite_ids = [i for i in calls if not i.endswith("-00001")]
    assert flite_ids and all(calls[i] == 2 for i in flite_ids)
    skipped = [s for s in summary["skipped"]]
    assert skipped and all(s["engine"] == "flite" and s["id"].endswith("-00001") for s in skipped)
    warnings = [r.getMessage() for r in caplog.records if r.name == "bljust.synth" and r.levelno == logging.WARNING]
    assert any("flite" in w and "simulated crash" in w and skipped[0]["voice"] in w for w in warnings)
    kept = {c.id for s in SPLITS for c in load_split(tmp_path, s)}
    assert not kept & {s["id"] for s in skipped}
    assert summary["splits"]["labeled"]["families"]["flite"]["utterances"] > 0


def test_missing_engine_binary_names_apt_get(monkeypatch, tmp_path):
    real_which = voices.shutil.which
    monkeypatch.setattr(voices.shutil, "which", lambda b: None if b == "festival" else real_which(b))
    with pytest.raises(RuntimeError, match=r"festival.*apt-get install"):
        synthesize_corpus(tmp_path, **TINY, progress=False)
