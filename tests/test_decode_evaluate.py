import pytest
import torch

from bljust.decode import greedy_ctc
from bljust.evaluate import error_rates


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    frames = [1, 1, 0, 1, 2, 2, 0, 0, 3]
    lp = torch.full((1, len(frames), 4), -10.0)
    lp[0, torch.arange(len(frames)), torch.tensor(frames)] = -0.1
    seqs, conf = greedy_ctc(lp, torch.tensor([len(frames)]))
    assert seqs == [[1, 1, 2, 3]]
    assert conf[0] == pytest.approx(-0.1)
    seqs, _ = greedy_ctc(lp, torch.tensor([3]))  # length is respected
    assert seqs == [[1]]


def test_corpus_level_error_rates():
    r = error_rates(["THE CAT SAT", "A DOG"], ["the cat sat.", "A FROG RAN"])
    # 1 substitution + 1 insertion over 5 reference words
    assert r["wer"] == pytest.approx(2 / 5)
    assert r["num_words"] == 5 and r["num_utterances"] == 2
    assert 0 < r["cer"] < r["wer"]


def test_empty_references_are_not_scored():
    with pytest.raises(ValueError):
        error_rates([""], ["X"])
