"""Corpus scenarios: the unseen preset is the original corpus, in-domain audio never leaks a scored
utterance or sentence into training, test_unseen voices are new, and the commands text domain."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bljust.cli import build_parser, main
from bljust.data import synth
from bljust.data.grammar import command_sentences, number_words, ordinal_words
from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, cut_speaker, cut_text, has_split, load_split
from bljust.data.scenarios import SCENARIOS, Scenario, resolve_scenario
from bljust.data.synth import synthesize_corpus
from bljust.data.voices import EVAL_SPEAKERS, FAMILIES, make_speakers
from bljust.data.text import normalize_transcript
from tests.data.test_synth import _manifest_rows, _utterance_table

SCORED = ("dev", "test", "test_unseen")
TINY = dict(labeled_minutes=0.3, unlabeled_minutes=0.5, dev_minutes=0.2, test_minutes=0.2)
# Enough in-domain audio for every one of the 12 dev and test voices to read at least once.
IN_DOMAIN_TINY = dict(TINY, in_domain_minutes=2.0, test_unseen_minutes=0.3)




def _all_cuts(out: Path) -> dict[str, list]:
    return {split: list(load_split(out, split)) for split in (*SPLITS, *OPTIONAL_SPLITS) if has_split(out, split)}


@pytest.fixture(scope="module")
def in_domain(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("in_domain")
    return out, synthesize_corpus(out, scenario="in-domain", **IN_DOMAIN_TINY, seed=0, jobs=2, progress=False)


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Path:
    """Made through the command line, so the CLI's scenario options are exercised on the way."""
    out = tmp_path_factory.mktemp("commands") / "corpus"
    args = ["corpus", "synth", str(out), "--scenario", "commands", "--quiet", "--seed", "3", "--jobs", "2",
            "--labeled-minutes", "0.3", "--unlabeled-minutes", "0.3", "--in-domain-minutes", "1",
            "--test-unseen-minutes", "0.2", "--dev-minutes", "0.2", "--test-minutes", "0.2"]
    assert main(args) == 0
    return out


# --------------------------------------------------------------------------------------------- presets


def _default_plan(seed: int, scenario: Scenario) -> list[list]:
    """The first planning round of a full-size corpus: everything but synthesis (engine-independent)."""
    sentences, word_counts, _, states = synth._plan_states(scenario, seed, Path("audio"))
    counts: dict[str, int] = defaultdict(int)
    return [[u.id, u.split, u.speaker, u.text, u.words, u.tempo, u.pitch, u.snr_db, u.noise_seed, u.path]
            for st in states.values() for u in synth._plan_round(st, sentences, word_counts, Path("audio"), counts)]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


@pytest.mark.parametrize("seed, n_utts, plan_digest, speakers_digest", [
    (0, 1617, "2f07ad39eb4e58a9dd12e031c2566dca95df0afe298b5eeffbb46dd7e3cec908",
     "6427be8bfab96a659e980eb18e2d6cf0b0e2070ab411b7961a2d16abb779bac7"),
    (1, 1670, "176d123edc6dbcb63a1dc3bb731bb67e9853e2441e476617323b65cfbfb50f2a",
     "a72fadc08291744e2cb038a2c66ee597f18edeb87fe87d184cc3587f7648db72"),
])
def test_unseen_is_the_original_corpus(seed, n_utts, plan_digest, speakers_digest):
    """Digests of what synthesize_corpus planned before scenarios existed (the default 166-minute corpus):
    the unseen scenario must plan the same speakers and utterances (ids, texts, jitter, noise seeds)."""
    plan = _default_plan(seed, SCENARIOS["unseen"])
    assert len(plan) == n_utts and _digest(plan) == plan_digest
    speakers = make_speakers(seed)
    assert _digest([dataclasses.astuple(s) for split in speakers.values() for s in split]) == speakers_digest
    # The default arguments are the unseen scenario.
    assert resolve_scenario() == SCENARIOS["unseen"]


def test_old_keyword_path_equals_scenario_path(tmp_path):
    """The old keyword arguments and an explicit Scenario make the same corpus, audio included."""
    a, b = tmp_path / "keywords", tmp_path / "scenario"
    synthesize_corpus(a, **TINY, labeled_speakers=3, seed=2, jobs=2, progress=False)
    scenario = dataclasses.replace(SCENARIOS["unseen"], **TINY, labeled_speakers=3)
    summary = synthesize_corpus(b, scenario=scenario, seed=2, jobs=2, progress=False)
    assert _manifest_rows(a) == _manifest_rows(b)
    assert (a / "utterances.tsv").read_text() == (b / "utterances.tsv").read_text()
    assert (a / "lm_text.txt").read_text() == (b / "lm_text.txt").read_text()
    for path in sorted(a.rglob("*.flac")):
        assert np.array_equal(sf.read(path)[0], sf.read(b / path.relative_to(a))[0])
    assert summary["scenario"] == "unseen" and summary["scenario_settings"]["labeled_speakers"] == 3


def test_presets_and_overrides():
    unseen, in_dom, cmd = SCENARIOS["unseen"], SCENARIOS["in-domain"], SCENARIOS["commands"]
    assert (unseen.labeled_minutes, unseen.labeled_speakers, unseen.unlabeled_minutes, unseen.dev_minutes,
            unseen.test_minutes, unseen.in_domain_minutes, unseen.test_unseen_minutes, unseen.text) == \
        (12.0, 4, 120.0, 8.0, 8.0, 0.0, 0.0, "austen")
    assert in_dom.settings() == {**unseen.settings(), "in_domain_minutes": 80.0, "test_unseen_minutes": 8.0}
    assert cmd.settings() == {**in_dom.settings(), "text": "commands"}
    # The benchmark's corpus is the one the regime search chose (commands-l60s24, RESULTS.md); the demo's differs
    # from it only in untranscribed minutes.
    regime = resolve_scenario("commands", labeled_minutes=60.0, labeled_speakers=24, unlabeled_minutes=400.0)
    assert SCENARIOS["benchmark"].settings() == regime.settings()
    assert SCENARIOS["demo"].settings() == {**regime.settings(), "unlabeled_minutes": 120.0}
    r = resolve_scenario("commands", labeled_minutes=3.0, dev_minutes=None, text=None)
    assert (r.name, r.labeled_minutes, r.dev_minutes, r.text) == ("commands", 3.0, 8.0, "commands")
    with pytest.raises(ValueError, match="unknown scenario"):
        resolve_scenario("nope")
    with pytest.raises(ValueError, match="text domain"):
        resolve_scenario("unseen", text="shakespeare")
    with pytest.raises(ValueError, match="negative"):
        resolve_scenario("unseen", test_unseen_minutes=-1.0)


def test_cli_options_default_to_the_scenario():
    args = build_parser().parse_args(["corpus", "synth", "out"])
    assert args.scenario == "unseen"
    for opt in ("labeled_minutes", "labeled_speakers", "unlabeled_minutes", "in_domain_minutes",
                "test_unseen_minutes", "dev_minutes", "test_minutes", "text"):
        assert getattr(args, opt) is None, opt
    args = build_parser().parse_args(["corpus", "synth", "out", "--scenario", "in-domain", "--text", "commands",
                                      "--in-domain-minutes", "5", "--labeled-speakers", "2"])
    assert (args.scenario, args.text, args.in_domain_minutes, args.labeled_speakers) == \
        ("in-domain", "commands", 5.0, 2)


def test_test_unseen_speakers_leave_the_others_unchanged():
    plain, extra = make_speakers(0), make_speakers(0, test_unseen=True)
    assert "test_unseen" not in plain
    assert {k: v for k, v in extra.items() if k != "test_unseen"} == plain
    assert len(extra["test_unseen"]) == EVAL_SPEAKERS
    assert {s.family for s in extra["test_unseen"]} == set(FAMILIES)
    others = {s.id for split, spks in extra.items() if split != "test_unseen" for s in spks}
    assert not others & {s.id for s in extra["test_unseen"]}


def test_manifests_know_the_optional_splits(tmp_path):
    assert not has_split(tmp_path, "test_unseen") and not has_split(tmp_path, "unlabeled_text")
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path, "test_unseen")
    with pytest.raises(ValueError, match="unknown split 'unlabelled'"):
        has_split(tmp_path, "unlabelled")
    with pytest.raises(ValueError, match="unknown split"):
        load_split(tmp_path, "train")


# --------------------------------------------------------------------------------------------- in-domain


def _check_no_scored_leak(out: Path) -> None:
    """The hard invariant, from the manifests and the utterance table alone."""
    cuts = _all_cuts(out)
    table = _utterance_table(out)
    texts = defaultdict(set)  # split -> normalised transcripts read in it (the unlabeled ones from the table)
    pairs = defaultdict(set)  # split -> (speaker, transcript)
    for r in table:
        t = normalize_transcript(r["text"])
        texts[r["split"]].add(t)
        pairs[r["split"]].add((r["speaker"], t))
    training = ("labeled", "unlabeled")
    scored_ids = {c.id for s in SCORED if s in cuts for c in cuts[s]}
    scored_audio = {c.recording.sources[0].source for s in SCORED if s in cuts for c in cuts[s]}
    for split in (*training, "unlabeled_text"):
        assert not scored_ids & {c.id for c in cuts[split]}, split
        assert not scored_audio & {c.recording.sources[0].source for c in cuts[split]}, split
    for scored in SCORED:
        if scored not in cuts:
            continue
        # The manifests' transcripts are the table's.
        assert {cut_text(c) for c in cuts[scored]} == texts[scored]
        for train in training:
            assert not texts[scored] & texts[train], (scored, train)
            assert not pairs[scored] & pairs[train], (scored, train)
        for other in SCORED:
            if other != scored:
                assert not texts[scored] & texts[other], (scored, other)
    # Also against the transcribed copy of the unlabeled split.
    unlabeled_text = {cut_text(c) for c in cuts["unlabeled_text"]}
    assert unlabeled_text == texts["unlabeled"]
    assert not unlabeled_text & set().union(*(texts[s] for s in SCORED))


def test_in_domain_splits_and_speakers(in_domain):
    out, summary = in_domain
    names = sorted(p.name for p in out.glob("*.jsonl.gz"))
    assert names == sorted(f"{s}_{k}.jsonl.gz" for s in (*SPLITS, "test_unseen", "unlabeled_text")
                           for k in ("recordings", "supervisions"))
    cuts = _all_cuts(out)
    pool = make_speakers(0, test_unseen=True)
    ids = {split: {s.id for s in spks} for split, spks in pool.items()}
    speakers = {split: {cut_speaker(c) for c in cs} for split, cs in cuts.items()}
    # In-domain: the unlabeled split's voices are exactly its own plus every dev and test voice.
    in_domain_speakers = speakers["unlabeled"] - ids["unlabeled"]
    assert in_domain_speakers == ids["dev"] | ids["test"]
    assert speakers["unlabeled"] <= ids["unlabeled"] | ids["dev"] | ids["test"]
    assert speakers["dev"] <= ids["dev"] and speakers["test"] <= ids["test"]
    # test_unseen: voices no other split has, not even the unlabeled one.
    assert speakers["test_unseen"] and speakers["test_unseen"] <= ids["test_unseen"]
    for split, spk in speakers.items():
        if split != "test_unseen":
            assert not spk & speakers["test_unseen"], split
    assert not speakers["labeled"] & (speakers["unlabeled"] | speakers["dev"] | speakers["test"])
    # In-domain audio lives with the unlabeled split on disk, under the reading speaker.
    for c in cuts["unlabeled"]:
        assert f"/audio/unlabeled/{cut_speaker(c)}/" in c.recording.sources[0].source
    assert all(cut_text(c) is None for c in cuts["unlabeled"])


def test_in_domain_never_leaks_a_scored_utterance(in_domain):
    out, _ = in_domain
    _check_no_scored_leak(out)


def test_in_domain_summary(in_domain):
    out, summary = in_domain
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["scenario"] == "in-domain"
    assert summary["scenario_settings"] == {**SCENARIOS["in-domain"].settings(), **IN_DOMAIN_TINY}
    assert list(summary["splits"]) == [*SPLITS, "test_unseen"]
    unl = summary["splits"]["unlabeled"]
    part = unl["in_domain"]
    assert part["budget_minutes"] == 2.0 and part["seconds"] >= 120.0
    assert unl["budget_minutes"] == pytest.approx(2.5)
    assert unl["seconds"] - part["seconds"] >= 30.0  # the 40 unlabeled voices still have their own 0.5 min
    assert part["speakers"] == 2 * EVAL_SPEAKERS
    assert summary["splits"]["test_unseen"]["seconds"] >= 18.0
    assert summary["wall_seconds"] > 0 and summary["cpu_seconds"] > 0
    text = synth.format_summary(summary)
    assert "scenario in-domain" in text and "test_unseen" in text and "in-domain" in text


def test_in_domain_lm_text_holds_no_unlabeled_or_scored_sentence(in_domain):
    out, _ = in_domain
    lm = set((out / "lm_text.txt").read_text().splitlines())
    table = _utterance_table(out)
    for r in table:
        assert (normalize_transcript(r["text"]) in lm) == (r["split"] == "labeled"), r["id"]


# --------------------------------------------------------------------------------------------- commands


def test_command_grammar():
    sents = command_sentences(5)
    assert len(sents) == len({normalize_transcript(s) for s in sents}) >= 20000
    assert command_sentences(5, 100) == sents[:100]           # a prefix, whatever n
    assert command_sentences(6, 100) != sents[:100]           # another seed, other sentences
    transcripts = [normalize_transcript(s) for s in sents]
    assert not any(re.search(r"[0-9]", s) for s in sents)     # numbers are spelled out
    assert all(re.fullmatch(r"[A-Z' ]+", t) and len(t.split()) >= 3 for t in transcripts)
    assert all(s[0].isupper() and s[-1] in ".?" for s in sents)
    vocab = {w for t in transcripts for w in t.split()}
    # A narrow domain: a vocabulary of hundreds of words, every intent present.
    assert 300 < len(vocab) < 3000
    joined = "\n".join(transcripts)
    for phrase in ("SET AN ALARM FOR", "SET A TIMER FOR", "REMIND ME", "CALL ", "TEXT ", "PLAY ",
                   "WEATHER", "TURN ON THE", "THERMOSTAT", "SHOPPING LIST", " A M", " P M", "DEGREES"):
        assert phrase in joined, phrase
    assert normalize_transcript("Set an alarm for seven thirty a.m.") == "SET AN ALARM FOR SEVEN THIRTY A M"
    assert [number_words(n) for n in (0, 13, 40, 72, 100, 305, 999)] == [
        "zero", "thirteen", "forty", "seventy two", "one hundred", "three hundred five", "nine hundred ninety nine"]
    assert [ordinal_words(n) for n in (1, 2, 3, 12, 20, 21, 30, 31)] == [
        "first", "second", "third", "twelfth", "twentieth", "twenty first", "thirtieth", "thirty first"]


def test_commands_corpus_reads_the_grammar(commands):
    summary = json.loads((commands / "summary.json").read_text())
    assert summary["scenario"] == "commands" and summary["seed"] == 3
    assert summary["scenario_settings"] == {**SCENARIOS["commands"].settings(), "labeled_minutes": 0.3,
                                            "unlabeled_minutes": 0.3, "in_domain_minutes": 1.0,
                                            "test_unseen_minutes": 0.2, "dev_minutes": 0.2, "test_minutes": 0.2}
    grammar = set(command_sentences(3, summary["text_sentences"]))
    table = _utterance_table(commands)
    assert table and all(r["text"] in grammar for r in table)
    cuts = _all_cuts(commands)
    for split in ("labeled", "dev", "test", "test_unseen", "unlabeled_text"):
        assert cuts[split] and all(re.fullmatch(r"[A-Z' ]+", cut_text(c)) for c in cuts[split]), split
    assert all(cut_text(c) is None for c in cuts["unlabeled"])
    _check_no_scored_leak(commands)


def test_commands_lm_text(commands):
    """The command LM text is the corpus's grammar list less every sentence read outside the labeled split."""
    summary = json.loads((commands / "summary.json").read_text())
    lm = (commands / "lm_text.txt").read_text().splitlines()
    table = _utterance_table(commands)
    held_out = {normalize_transcript(r["text"]) for r in table if r["split"] != "labeled"}
    everything = [normalize_transcript(s) for s in command_sentences(3, summary["text_sentences"])]
    assert lm == [t for t in everything if t not in held_out]
    assert {normalize_transcript(r["text"]) for r in table if r["split"] == "labeled"} <= set(lm)
    assert not held_out & set(lm)
    # Rewriting it (as bljust demo does for old corpora) gives the same file.
    before = (commands / "lm_text.txt").read_text()
    synth.write_lm_text(commands)
    assert (commands / "lm_text.txt").read_text() == before
