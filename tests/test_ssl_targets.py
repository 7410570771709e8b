"""HuBERT targets: computed once, cached, looked up by cut id, aligned under speed perturbation, scored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bljust.checkpoint import load
from bljust.data.features import num_frames
from bljust.data.manifests import load_split
from bljust.models.subsampling import subsampled_lengths
from bljust.ssl_targets import (AcousticFrames, TargetSpec, Targets, TargetsError, cluster_scores, compute_targets,
                                ctc_align, load_targets)
from tests.conftest import REPO, TINY

torch.set_num_threads(1)


def _targets(seqs: dict[str, list[int]]) -> Targets:
    ids = list(seqs)
    offsets = torch.tensor([0] + [len(seqs[i]) for i in ids]).cumsum(0)
    labels = torch.tensor([x for i in ids for x in seqs[i]])
    return Targets(path=Path("t.pt"), rows={c: i for i, c in enumerate(ids)}, offsets=offsets, labels=labels,
                   clusters=10, meta={"key": "k"})


def test_lookup_maps_a_speed_perturbed_copy_to_its_original_resampled():
    t = _targets({"a": list(range(10)), "b": [7, 7, 3]})
    assert t.lookup("a", 10).tolist() == list(range(10))
    slow = t.lookup("a_sp0.9", 11)  # a slowed copy has more frames
    fast = t.lookup("a_sp1.1", 9)
    for seq, n in ((slow, 11), (fast, 9)):
        assert seq.numel() == n and seq[0] == 0 and seq[-1] == 9
        assert (seq.diff() >= 0).all()  # order kept: nearest frame in time
    assert set(fast.tolist()) < set(range(10)) and set(slow.tolist()) == set(range(10))
    batch = t.batch(["b", "a"], torch.tensor([3, 10]), 12)
    assert batch[0].tolist() == [7, 7, 3] + [-1] * 9 and batch[1, :10].tolist() == list(range(10))
    assert t.missing(["a", "a_sp1.1", "c", "c_sp0.9"]) == ["c", "c_sp0.9"]
    with pytest.raises(TargetsError, match="'c'"):
        t.lookup("c", 3)


@pytest.fixture(scope="module")
def mfcc(tiny_corpus) -> Path:
    return compute_targets(tiny_corpus, TargetSpec(source="mfcc", clusters=16, fit_frames=10_000))


def test_targets_cover_every_unlabeled_utterance_at_the_encoder_frame_rate(tiny_corpus, mfcc):
    t = load_targets(mfcc)
    assert mfcc.parent == tiny_corpus / "ssl_targets" and mfcc.name.startswith("mfcc-k16-")
    cuts = load_split(tiny_corpus, "unlabeled")
    assert t.missing(c.id for c in cuts) == [] and len(t.rows) == len(cuts)
    for cut in cuts:
        frames = int(subsampled_lengths(torch.tensor([num_frames(cut.num_samples)]))[0])
        assert t.sequence(cut.id).numel() == frames
    h = t.meta["health"]
    assert t.clusters == 16 and 0.5 < h["code_usage"] <= 1 and 1 < h["code_perplexity"] <= 16
    state = load(mfcc)  # weights_only: a plain file, no code
    assert state["centroids"].shape[0] == 16


def test_targets_are_cached_by_settings_and_data(tiny_corpus, mfcc):
    before = mfcc.stat().st_mtime_ns
    again = compute_targets(tiny_corpus, TargetSpec(source="mfcc", clusters=16, fit_frames=10_000))
    assert again == mfcc and mfcc.stat().st_mtime_ns == before
    other = compute_targets(tiny_corpus, TargetSpec(source="mfcc", clusters=8, fit_frames=10_000))
    assert other != mfcc and load_targets(other).clusters == 8


def test_a_speed_perturbed_cut_gets_targets_as_long_as_its_encoder_output(tiny_corpus, mfcc):
    t = load_targets(mfcc)
    cut = load_split(tiny_corpus, "unlabeled")[0]
    for factor in (0.9, 1.1):
        copy = cut.perturb_speed(factor)
        wav = torch.from_numpy(copy.load_audio()).float()
        frames = AcousticFrames("mfcc")({"wav": wav, "wav_lens": torch.tensor([wav.size(1)])})[0].size(0)
        assert t.lookup(copy.id, frames).numel() == frames != t.sequence(cut.id).numel()


def test_ctc_alignment_follows_the_emissions():
    # tokens [1, 2, 2] over 8 frames: blank,1,1,blank,2,blank,2,blank is the only sensible path
    path = [0, 1, 1, 0, 2, 0, 2, 0]
    lp = np.full((8, 3), np.log(0.01))
    lp[np.arange(8), path] = np.log(0.98)
    assert ctc_align(lp, [1, 2, 2]).tolist() == [-1, 0, 0, 0, 1, 1, 2, 2]


def test_cluster_scores():
    assert cluster_scores(np.eye(4) * 10)["pnmi"] == pytest.approx(1.0)
    assert cluster_scores(np.eye(4) * 10)["cluster_purity"] == pytest.approx(1.0)
    independent = cluster_scores(np.ones((4, 5)))
    assert independent["pnmi"] == pytest.approx(0.0, abs=1e-12)
    assert independent["cluster_purity"] == pytest.approx(0.25)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bljust", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)


def test_iteration_two_targets_from_a_trained_run_train_a_hubert_run(tiny_corpus, tmp_path):
    sup = _cli("train", "--method", "supervised", "--data", str(tiny_corpus), "--out", str(tmp_path / "sup"),
               "--config", str(TINY), "--set", "train.max_steps=6")
    assert sup.returncode == 0, sup.stderr[-2000:]
    made = _cli("ssl-targets", str(tiny_corpus), "--from", str(tmp_path / "sup"), "--layer", "0", "--clusters", "8",
                "--quiet")
    assert made.returncode == 0, made.stderr[-2000:]
    report = json.loads(made.stdout[:made.stdout.rindex("}") + 1])
    path = Path(report["path"])
    assert path.name.startswith("L0-k8-") and report["clusters"] == 8
    # scored against the run's own CTC alignments of the labeled split
    assert 0 < report["health"]["pnmi"] < 1 and 0 < report["health"]["cluster_purity"] <= 1
    run = _cli("train", "--method", "just", "--data", str(tiny_corpus), "--out", str(tmp_path / "just"),
               "--config", str(TINY), "--set", "train.max_steps=4", "--set", "ssl.loss=hubert",
               "--set", f"ssl.targets={path}")
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "just" / "summary.json").read_text())
    assert summary["ssl_targets"]["key"] == load_targets(path).key
    steps = [json.loads(line) for line in (tmp_path / "just" / "metrics.jsonl").read_text().splitlines()]
    joint = [s for s in steps if "ssl_acc" in s]
    assert joint and all(0.3 < s["ssl_masked_frac"] < 0.8 for s in joint)


def test_align_adds_purity_to_targets_cached_without_it(tiny_corpus, tmp_path):
    spec = TargetSpec(source="mfcc", clusters=6, fit_frames=10_000, seed=3)
    path = compute_targets(tiny_corpus, spec)
    if "pnmi" in load_targets(path).meta["health"]:  # a shared corpus scored by an earlier session: start over
        path.unlink()
        path = compute_targets(tiny_corpus, spec)
    assert "pnmi" not in load_targets(path).meta["health"]
    sup = _cli("train", "--method", "supervised", "--data", str(tiny_corpus), "--out", str(tmp_path / "sup"),
               "--config", str(TINY), "--set", "train.max_steps=4")
    assert sup.returncode == 0, sup.stderr[-2000:]
    labels = load_targets(path).labels.clone()
    assert compute_targets(tiny_corpus, spec, aligner=tmp_path / "sup") == path
    t = load_targets(path)
    assert 0 <= t.meta["health"]["pnmi"] <= 1 and torch.equal(t.labels, labels)


def test_unreadable_audio_is_skipped_and_recorded_not_fatal(tiny_corpus, tmp_path):
    from tests.broken import make_broken_corpus

    broken = tmp_path / "broken"
    make_broken_corpus(tiny_corpus, broken)
    t = load_targets(compute_targets(broken, TargetSpec(source="mfcc", clusters=6, fit_frames=10_000)))
    cuts = load_split(broken, "unlabeled")
    bad = [c.id for c in cuts if "broken" in c.id]
    assert bad and set(t.meta["unreadable"]) <= set(bad) and t.meta["unreadable"]
    assert sum(t.meta["skipped_audio"].values()) == len(t.meta["unreadable"])
    # what training checks before it starts: nothing is missing but the unreadable ones, which it skips
    assert t.missing(c.id for c in cuts) == [] and not set(t.rows) & set(t.meta["unreadable"])
