import pytest
import torch

from bljust.decode import greedy_ctc
from bljust.evaluate import error_rates, evaluate_run, scores_with_groups


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


def test_scores_per_voice_family():
    from lhotse import SupervisionSegment
    from lhotse.testing.dummies import dummy_cut

    cuts = []
    for i, group in enumerate(["a", "a", "b", None]):
        cut = dummy_cut(i)
        cut.supervisions = [SupervisionSegment(f"s{i}", cut.recording_id, 0, 1, text="X",
                                               custom={"group": group} if group else None)]
        cuts.append(cut)
    ids = [c.id for c in cuts]
    refs = dict(zip(ids, ["THE CAT", "A DOG", "RED SKY", "NO GROUP"]))
    hyps = dict(zip(ids, ["THE CAT", "A FROG", "RED SKY", "NONE"]))
    s = scores_with_groups({"refs": refs, "hyps": hyps}, cuts)
    assert s["wer"] == pytest.approx(3 / 8) and s["num_utterances"] == 4
    assert set(s["groups"]) == {"a", "b"}
    assert s["groups"]["a"]["wer"] == pytest.approx(1 / 4) and s["groups"]["b"]["wer"] == 0


def test_evaluate_run_tunes_the_lm_on_dev_only(tmp_path):
    with pytest.raises(ValueError, match="chosen on dev"):
        evaluate_run(tmp_path, tmp_path, ("test",), lm="x.arpa", lm_weights=[1.0], word_scores=[0.0])
    with pytest.raises(ValueError, match="at least one split"):
        evaluate_run(tmp_path, tmp_path, ())


def test_a_file_that_is_not_a_model_is_refused_with_the_reason(tmp_path):
    from bljust.checkpoint import atomic_save
    from bljust.inference import load_trained

    atomic_save({"weights": torch.zeros(3)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"weights\.pt is not a bljust model file \(it has no model, config, tok"):
        load_trained(tmp_path / "weights.pt")


def test_decoding_in_shards_and_merging_equals_decoding_the_whole_split(tiny_corpus):
    """What sharded validation and pseudo-labeling gather: disjoint shards' results, merged, are the
    whole split's (the loss re-normalised by the summed token count, not averaged per shard)."""
    from bljust.config import load_config
    from bljust.data.manifests import cut_text, load_split
    from bljust.data.tokenizer import train_tokenizer
    from bljust.engine.dist import Dist, shard
    from bljust.evaluate import decode_cuts, merge_decoded
    from bljust.models.asr import ASRModel
    from lhotse import CutSet
    from tests.conftest import TINY

    cfg = load_config(TINY)
    tokenizer = train_tokenizer(cfg.tokenizer, [cut_text(c) for c in load_split(tiny_corpus, "labeled")])
    torch.manual_seed(0)
    model = ASRModel(cfg, tokenizer.vocab_size)
    dev = list(load_split(tiny_corpus, "dev"))
    cpu = torch.device("cpu")
    whole = decode_cuts(model, tokenizer, CutSet.from_cuts(dev), cpu, amp=False, keep_emissions=True)
    parts = [decode_cuts(model, tokenizer, CutSet.from_cuts(shard(dev, Dist(r, 3, r))), cpu, amp=False,
                         keep_emissions=True) for r in range(3)]
    assert sorted(len(p["hyps"]) for p in parts) != [0, 0, len(dev)]  # every shard decodes some of the split
    merged = merge_decoded(parts)
    assert merged["hyps"] == whole["hyps"] and merged["refs"] == whole["refs"]
    assert merged["emissions"].keys() == whole["emissions"].keys()
    assert merged["loss_tokens"] == whole["loss_tokens"] > 0
    assert merged["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert merged["loss"] != pytest.approx(sum(p["loss"] for p in parts) / 3, rel=1e-6)  # not a mean of means
