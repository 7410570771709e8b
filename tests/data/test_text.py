"""Austen sentences and LibriSpeech-style transcript normalisation."""

from __future__ import annotations

import re

import pytest

from bljust.data import text as text_mod
from bljust.data.text import (austen_sentences, expand_titles, find_janeaustenr_rdb, normalize_transcript,
                              split_sentences)

ALLOWED = re.compile(r"^[A-Z']+( [A-Z']+)*$")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return austen_sentences()


def test_sentence_count_and_lengths(sentences):
    # docs/data.md: a simple splitter gives ~14k sentences of 5-30 words; ours keeps a few more.
    assert 12_000 <= len(sentences) <= 30_000
    lengths = [len(normalize_transcript(s).split()) for s in sentences]
    assert min(lengths) >= 5 and max(lengths) <= 30
    short = austen_sentences(min_words=5, max_words=10)
    assert 0 < len(short) < len(sentences)
    assert set(short) <= set(sentences)


def test_sentences_are_deterministic_and_cached(sentences):
    again = austen_sentences()
    assert again == sentences
    again.append("mutating the result must not touch the cache")
    assert austen_sentences() == sentences
    assert text_mod.austen_novels.cache_info().hits >= 1 or text_mod._all_sentences.cache_info().hits >= 1
    assert sentences[0].startswith("The family of Dashwood")  # Sense and Sensibility comes first


def test_sentences_are_clean_engine_input(sentences):
    joined = "\n".join(sentences)
    # Titles expanded in the engine input, so engines and transcripts say the same words.
    assert "Mister Darcy" in joined and "Missus Bennet" in joined
    assert not re.search(r"\b(Mr|Mrs|Dr|St)\.?\s", joined)
    # No digits, italics marks or double quotes; the punctuation that shapes prosody stays.
    assert not re.search(r"[0-9_\"&*\[\]]", joined)
    assert "," in joined and "?" in joined and "!" in joined and ";" in joined
    # Transcripts are unique, so splits drawn from disjoint index sets share no text.
    norms = [normalize_transcript(s) for s in sentences]
    assert len(set(norms)) == len(norms)
    assert all(ALLOWED.match(n) for n in norms)


def test_normalize_rules():
    assert normalize_transcript('"Mr. Darcy," said Mrs. Bennet--"Dr. Jones of St. Ives!"') == \
        "MISTER DARCY SAID MISSUS BENNET DOCTOR JONES OF SAINT IVES"
    assert normalize_transcript("Mr Elliot and Mrs Clay") == "MISTER ELLIOT AND MISSUS CLAY"  # Persuasion
    assert normalize_transcript("twenty-one  well-known\tcafé") == "TWENTY ONE WELL KNOWN CAFE"
    assert normalize_transcript("Don't -- it's Miss Taylor's; 'Tis 'quoted'.") == \
        "DON'T IT'S MISS TAYLOR'S TIS QUOTED"
    assert normalize_transcript("In 1811, 3 sisters & co.") == "IN SISTERS CO"
    assert normalize_transcript("  ") == ""
    assert expand_titles("MR. X and Mr. Y") == "MISTER X and Mister Y"


@pytest.mark.parametrize("raw", [
    "Mr. Darcy's sister--twenty-one!", "MISTER DARCY", "it's 'quoted' text", "Dr Shirley",
    "' ' -- ''", "HER father, Sir Walter.", "E. Weston, Esq.",
])
def test_normalize_is_idempotent_and_allowed(raw):
    once = normalize_transcript(raw)
    assert normalize_transcript(once) == once
    assert once == "" or ALLOWED.match(once)


def test_idempotent_on_the_corpus(sentences):
    for s in sentences[::50]:
        n = normalize_transcript(s)
        assert normalize_transcript(n) == n


def test_split_sentences_keeps_titles_and_initials_together():
    para = expand_titles('"Poor Miss Taylor! I wish she were here. What a pity Mr. E. Weston came?" said he. '
                         'Then she left.')
    assert split_sentences(para) == ['"Poor Miss Taylor!', "I wish she were here.",
                                     'What a pity Mister E. Weston came?" said he.', "Then she left."]


def test_missing_package_names_apt_package(monkeypatch, tmp_path):
    monkeypatch.setattr(text_mod, "_R_LIBRARY_DIRS", (str(tmp_path),))
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(FileNotFoundError, match="r-cran-janeaustenr.*--no-install-recommends"):
        find_janeaustenr_rdb()


def test_r_libs_is_searched(monkeypatch, tmp_path):
    real = find_janeaustenr_rdb()
    monkeypatch.setattr(text_mod, "_R_LIBRARY_DIRS", ())
    monkeypatch.setenv("R_LIBS", f"{tmp_path}:{real.parents[2]}")
    assert find_janeaustenr_rdb() == real
