"""The n-gram LM estimator, the lexicon beam search and the LM-weight tuning on dev."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bljust.data.tokenizer import CharTokenizer
from bljust.evaluate import lm_decode, tune_lm
from bljust.lm import WordDecoder, arpa_words, read_text, write_arpa

TEXT = ["THE CAT SAT ON THE MAT", "THE DOG SAT ON THE LOG", "A CAT AND A DOG", "THE CAT ATE THE RAT",
        "ON THE MAT THE DOG SAT", "A RAT SAT ON A LOG"]


def read_arpa(path) -> tuple[dict, dict]:
    """{ngram: log10 p} and {ngram: log10 backoff} of an ARPA file, parsed independently of KenLM."""
    probs, backoffs, order = {}, {}, 0
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.endswith("-grams:"):
            order = int(line[1])
            continue
        parts = line.split("\t")
        if order and len(parts) >= 2:
            probs[tuple(parts[1].split())] = float(parts[0])
            if len(parts) == 3:
                backoffs[tuple(parts[1].split())] = float(parts[2])
    return probs, backoffs


def prob(probs: dict, backoffs: dict, context: tuple, word: str) -> float:
    """p(word | context) by the ARPA back-off rule."""
    if context + (word,) in probs:
        return 10 ** probs[context + (word,)]
    if not context:
        return 10 ** probs[("<unk>",)]
    return 10 ** backoffs.get(context, 0.0) * prob(probs, backoffs, context[1:], word)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_arpa_distributions_sum_to_one(tmp_path, order):
    path = tmp_path / "lm.arpa"
    counts = write_arpa(TEXT, path, order)
    assert set(counts) == set(range(1, order + 1)) and all(c > 0 for c in counts.values())
    probs, backoffs = read_arpa(path)
    vocab = sorted({w for s in TEXT for w in s.split()}) + ["</s>", "<unk>"]
    # every context seen in the text, and one never seen: each is a proper distribution over the vocabulary
    contexts = {(), ("ZEBRA",)} | {g[:-1][-(order - 1):] if order > 1 else () for g in probs if len(g) > 1}
    for ctx in contexts:
        assert sum(prob(probs, backoffs, ctx, w) for w in vocab) == pytest.approx(1.0, abs=1e-4), ctx
    # the text's regularities are learnt: after THE, CAT beats AND (never seen after THE)
    if order > 1:
        assert prob(probs, backoffs, ("THE",), "CAT") > 3 * prob(probs, backoffs, ("THE",), "AND")
    assert set(arpa_words(path)) == set(vocab) - {"</s>", "<unk>"}


def test_read_text_names_a_bad_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n ,,, \n")
    with pytest.raises(ValueError, match="empty.txt"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "t.txt").write_text("The cat, sat.\n\nMister Darcy's dog!\n")
    assert read_text(tmp_path / "t.txt") == ["THE CAT SAT", "MISTER DARCY'S DOG"]


def emissions_for(tok: CharTokenizer, text: str, noise: dict[int, str] | None = None, seed: int = 0) -> torch.Tensor:
    """CTC log-posteriors that spell ``text`` (blank between letters); ``noise`` swaps the letter at
    given positions for another, as a weak acoustic model would."""
    g = torch.Generator().manual_seed(seed)
    letters = list(text)
    for i, c in (noise or {}).items():
        letters[i] = c
    frames = []
    for c in letters:
        frames += [tok.encode(c)[0] if c != " " else tok.encode("A B")[1], 0]
    logits = torch.randn(len(frames), tok.vocab_size, generator=g)
    logits[torch.arange(len(frames)), torch.tensor(frames)] += 6.0
    return logits.log_softmax(-1)


def test_lexicon_search_with_the_lm_repairs_misspelt_words(tmp_path):
    tok = CharTokenizer()
    arpa = tmp_path / "lm.arpa"
    write_arpa(TEXT, arpa, 3)
    decoder = WordDecoder(tok, arpa, beam_size=20)
    assert decoder.num_words == len({w for s in TEXT for w in s.split()})
    clean = emissions_for(tok, "THE CAT SAT ON THE MAT")
    # "THE CAT SAT ON THE MAT" read as "THE CAZ SAT ON THQ MAT": greedy keeps the errors, the search does not
    noisy = emissions_for(tok, "THE CAT SAT ON THE MAT", noise={6: "Z", 17: "Q"})
    greedy = tok.decode([i for i in noisy.argmax(-1).tolist() if i != 0])
    assert greedy == "THE CAZ SAT ON THQ MAT"
    assert decoder.decode([clean, noisy], lm_weight=1.0, word_score=0.0) == ["THE CAT SAT ON THE MAT"] * 2
    # words outside the LM's vocabulary cannot be emitted
    out = decoder.decode([emissions_for(tok, "THE COW SAT")], lm_weight=1.0, word_score=0.0)[0]
    assert "COW" not in out.split() and all(w in decoder.word_dict_words for w in out.split())


def test_tune_lm_picks_the_lowest_dev_wer_and_lm_decode_applies_it(tmp_path):
    tok = CharTokenizer()
    arpa = tmp_path / "lm.arpa"
    write_arpa(TEXT, arpa, 2)
    decoder = WordDecoder(tok, arpa, beam_size=20)
    refs = {"a": "THE DOG SAT ON THE LOG", "b": "A CAT AND A DOG"}
    em = {"a": emissions_for(tok, refs["a"], noise={5: "X"}, seed=1), "b": emissions_for(tok, refs["b"], seed=2)}
    decoded = {"refs": refs, "hyps": {k: "" for k in refs}, "emissions": em}
    tuned = tune_lm(decoder, decoded, [0.0, 1.0], [-50.0, 0.0])
    assert len(tuned["grid"]) == 4
    best = min(tuned["grid"], key=lambda g: (g["wer"], g["cer"]))
    assert (tuned["lm_weight"], tuned["word_score"]) == (best["lm_weight"], best["word_score"])
    # a huge word penalty empties the output: it must lose to a sane setting
    assert tuned["word_score"] == 0.0 and best["wer"] == 0.0
    assert lm_decode(decoder, decoded, tuned["lm_weight"], tuned["word_score"])["hyps"] == refs
    assert math.isclose(max(g["wer"] for g in tuned["grid"]), 1.0)


def test_decoder_needs_an_existing_lm(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.arpa"):
        WordDecoder(CharTokenizer(), tmp_path / "missing.arpa")
