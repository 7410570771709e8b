"""The topline (supervised on every transcript) and the optional scored splits, end to end."""

from __future__ import annotations

import json

import pytest

from bljust.compare.results import validate_results
from bljust.config import load_config
from bljust.methods import METHOD_NAMES
from tests.compare.conftest import ARGS, BUDGET, COPIED, compare, linked_corpus
from tests.conftest import TINY


@pytest.fixture(scope="module")
def topline(tiny_corpus, tmp_path_factory):
    """supervised and the topline, seed 0, on a corpus with every optional split."""
    data = linked_corpus(tiny_corpus, tmp_path_factory.mktemp("optional") / "data", optional=True)
    out = tmp_path_factory.mktemp("compare-topline")
    r = compare("--data", str(data), "--out", str(out), "--methods", "supervised,topline", "--seeds", "1", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    return data, out


def test_topline_trains_supervised_on_every_transcript_and_the_optional_splits_are_scored(topline):
    data, out = topline
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    runs = {run["method"]: run for run in results["runs"]}
    assert set(runs) == {"supervised", "topline"} and {*COPIED, "unlabeled_text"} <= set(results["corpus"])
    top, sup = runs["topline"], runs["supervised"]
    assert top["settings"] == sup["settings"] + ['data.labeled_splits=["labeled", "unlabeled_text"]']
    assert top["batch_passes"] == top["labeled_batches"] == BUDGET and top["unlabeled_batches"] == 0
    # the same budget over a larger labeled set: fewer passes over it
    assert top["labeled_hours"] / top["labeled_passes"] > sup["labeled_hours"] / sup["labeled_passes"]
    assert load_config(out / "runs" / "topline-seed0" / "config.yaml").data.labeled_splits == ["labeled",
                                                                                             "unlabeled_text"]
    for run in runs.values():
        for split in COPIED:  # decoded once, greedily and with the LM at dev's weight and word score, as test is
            assert set(run[split]["groups"]) and "grid" not in run[split]["lm"]
            chosen = ("lm_weight", "word_score")
            assert [run[split]["lm"][k] for k in chosen] == [run["dev"]["lm"][k] for k in chosen]
            for hyp in (f"{split}.hyp.txt", f"{split}.lm.hyp.txt"):
                assert (out / run["run_dir"] / "eval" / hyp).is_file()
        assert 0 <= run["probe"]["cer"]
    # the random-init probe borrows supervised's units and statistics, never the topline's
    assert results["probe"]["random-init"]["model"].endswith("runs/supervised-seed0/best.pt")
    markdown = (out / "report.md").read_text()
    assert "| supervised − topline (points) |" in markdown
    assert "| test_unseen CER % | dev_other WER % | dev_other CER % | test_other WER % | test_other CER % |" in markdown
    assert "dev_other CER share | test_other CER share |" in markdown
    assert "test, test_unseen, dev_other and test_other evaluated once" in results["selection"]


def test_a_rerun_reuses_the_topline_and_the_probes(topline):
    data, out = topline
    r = compare("--data", str(data), "--out", str(out), "--methods", "supervised,topline", "--seeds", "1", *ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("reused") == 2 + 3 and "started" not in r.stderr


def test_the_topline_is_run_by_default_when_the_corpus_has_the_transcripts(tiny_corpus, tmp_path):
    from bljust.compare import comparison_methods

    plain = linked_corpus(tiny_corpus, tmp_path / "plain", optional=False)
    optional = linked_corpus(tiny_corpus, tmp_path / "optional", optional=True)
    assert comparison_methods(plain, None) == list(METHOD_NAMES)
    assert comparison_methods(optional, None) == [*METHOD_NAMES, "topline"]
    assert comparison_methods(optional, ["bljust"]) == ["bljust"]
    with pytest.raises(FileNotFoundError, match=r"no 'unlabeled_text' split \(missing .*unlabeled_text_recordings"):
        comparison_methods(plain, ["supervised", "topline"])
    with pytest.raises(ValueError, match="unknown method"):
        comparison_methods(plain, ["toplines"])


def test_labeled_splits_are_a_union_of_distinct_utterances(tiny_corpus, tmp_path):
    from bljust.config import ConfigError
    from bljust.data.manifests import load_split, write_split
    from bljust.engine.run import load_labeled

    data = linked_corpus(tiny_corpus, tmp_path / "data", optional=True)
    labeled, extra = load_split(data, "labeled"), load_split(data, "unlabeled_text")
    union = load_labeled(data, ["labeled", "unlabeled_text"])
    assert [c.id for c in union] == [c.id for c in labeled] + [c.id for c in extra]
    write_split(data, "test_unseen", *labeled.decompose()[:2])  # the labeled utterances again
    with pytest.raises(ValueError, match=r"utterance \S+ is in both the 'labeled' and the 'test_unseen' split"):
        load_labeled(data, ["labeled", "test_unseen"])
    for bad in ("[]", "[labeled, labeled]", "[labeled, unlabeled]"):
        with pytest.raises(ConfigError, match="data.labeled_splits"):
            load_config(TINY, [f"data.labeled_splits={bad}"])
