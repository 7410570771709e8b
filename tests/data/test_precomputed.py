"""data.features=precomputed: `bljust features` stores the front-end's log-mel, runs train on it without audio."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bljust.config import FeatureConfig, load_config
from bljust.data import loader
from bljust.data.audio import BadAudio
from bljust.data.features import LogMel, num_frames
from bljust.data.loader import AudioDataset, speed_perturbed
from bljust.data.manifests import load_split, manifest_paths
from bljust.data.precomputed import compute_features, feature_paths, load_checked_features
from bljust.methods import METHODS
from tests.conftest import TINY

TRAINED = ("labeled", "unlabeled", "dev")


def _copy_manifests(src: Path, dst: Path, splits=TRAINED) -> Path:
    """A data directory of ``src``'s manifests alone: their audio paths are absolute, so it reads ``src``'s audio."""
    dst.mkdir(parents=True, exist_ok=True)
    for split in splits:
        for path in manifest_paths(src, split):
            shutil.copy(path, dst / path.name)
    return dst


@pytest.fixture(scope="module")
def featured(tiny_corpus, tmp_path_factory) -> Path:
    data = _copy_manifests(tiny_corpus, tmp_path_factory.mktemp("featured"))
    for split in TRAINED:  # two processes for one split: the parts must join in the manifest's order
        compute_features(data, split, num_mel_bins=80, jobs=2 if split == "labeled" else 1)
    return data


def test_stored_features_are_the_front_ends_log_mel_of_the_same_cuts_in_order(featured):
    logmel = LogMel(FeatureConfig())
    for split in TRAINED:
        plain, stored = load_split(featured, split), load_split(featured, split, precomputed_bins=80)
        assert [c.id for c in stored] == [c.id for c in plain]
        for cut in stored:
            audio = torch.from_numpy(cut.load_audio()[0]).float()
            expected, lens = logmel.raw(audio[None], torch.tensor([audio.numel()]))
            got = load_checked_features(cut, 80)
            assert got.shape == (num_frames(audio.numel()), 80) == (int(lens[0]), 80)
            # lilcom stores multiples of 2^-5: within half a step of the exact values
            assert np.abs(got - expected[0].numpy()).max() <= 2 ** -6 + 1e-4
    meta = json.loads(feature_paths(featured, "labeled")[1].read_text())
    assert meta["cuts"] == meta["with_features"] == len(load_split(featured, "labeled")) and not meta["skipped"]


def test_missing_stale_or_mis_sized_features_are_errors_naming_the_file(featured, tmp_path):
    data = _copy_manifests(featured, tmp_path / "d")
    with pytest.raises(FileNotFoundError, match=f"{data / 'dev_features.json'}.*bljust features {data} --splits dev"):
        load_split(data, "dev", precomputed_bins=80)
    for name in ("dev_features.json", "dev_features.jsonl.gz"):
        shutil.copy(featured / name, data / name)
    (data / "features").symlink_to(featured / "features")
    assert len(load_split(data, "dev", precomputed_bins=80)) == len(load_split(data, "dev"))
    with pytest.raises(ValueError, match="80 mel bins, the config's features.num_mel_bins is 40"):
        load_split(data, "dev", precomputed_bins=40)
    sup = manifest_paths(data, "dev")[1]
    lines = gzip.open(sup, "rt").read().splitlines()
    with gzip.open(sup, "wt") as f:  # one transcript edited after the features were computed
        f.write("\n".join([lines[0].replace('"text": "', '"text": "EDITED ')] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=f"{data / 'dev_features.json'}: stale features"):
        load_split(data, "dev", precomputed_bins=80)


def test_unreadable_audio_leaves_a_cut_without_features_and_a_bad_archive_is_a_counted_skip(tiny_corpus, tmp_path):
    data = _copy_manifests(tiny_corpus, tmp_path / "d", splits=("dev",))
    rec = manifest_paths(data, "dev")[0]
    lines = gzip.open(rec, "rt").read().splitlines()
    first = json.loads(lines[0])
    first["sources"][0]["source"] = str(tmp_path / "gone.flac")
    with gzip.open(rec, "wt") as f:
        f.write("\n".join([json.dumps(first)] + lines[1:]) + "\n")
    summary = compute_features(data, "dev", num_mel_bins=80)
    assert summary.skipped == {"missing file": 1} and summary.with_features == summary.cuts - 1
    cuts = load_split(data, "dev", precomputed_bins=80)
    batch = AudioDataset()[cuts]
    assert [f["reason"] for f in batch["failed"]] == ["missing file"] and "feats" in batch
    assert len(batch["ids"]) == len(cuts) - 1
    with pytest.raises(BadAudio, match="feature shape mismatch"):
        load_checked_features(cuts[1], 40)
    archive = data / cuts[1].features.storage_path
    archive.write_bytes(archive.read_bytes()[:100])  # truncated
    with pytest.raises(BadAudio, match=f"{archive}: unreadable features"):
        load_checked_features(cuts[1], 80)


def test_speed_perturbed_copies_get_log_mel_from_audio_and_the_originals_keep_their_features(featured):
    cuts = load_split(featured, "labeled", precomputed_bins=80).subset(first=2)
    both = speed_perturbed(cuts, [1.1])
    assert all(c.has_features for c in cuts) and [c.has_features for c in both] == [True, True, False, False]
    batch = AudioDataset()[both]
    assert "wav" not in batch and batch["feats"].shape[-1] == 80
    copy = both[2]
    assert int(batch["feat_lens"][2]) == num_frames(copy.num_samples)


def test_a_run_on_precomputed_features_reads_no_audio_and_learns(featured, tmp_path, monkeypatch):
    def no_audio(cut):
        raise AssertionError(f"audio of {cut.id} was read")

    monkeypatch.setattr(loader, "load_checked", no_audio)  # tiny.yaml loads in the main process (num_workers 0)
    common = ["data.features=precomputed", "features.normalize=global"]
    cfg = load_config(TINY, [*common, "train.max_steps=16", "train.valid_every=8", "optim.lr=0.003"])
    summary = METHODS["supervised"](cfg, featured, tmp_path / "supervised")
    rows = [json.loads(line) for line in (tmp_path / "supervised" / "metrics.jsonl").read_text().splitlines()]
    f = [r["f"] for r in rows if r["kind"] == "train"]
    assert summary["steps"] == 16 and not summary["skipped_audio"]
    assert np.mean(f[-4:]) < 0.8 * np.mean(f[:4]), f
    # BL-JUST reads the unlabeled split too (and its held-out part), here streamed (data.lazy)
    cfg = load_config(TINY, [*common, "data.lazy=true", "train.max_steps=6", "bljust.explore_steps=1",
                             "bljust.joint_steps=2", "bljust.finetune_steps=1"])
    summary = METHODS["bljust"](cfg, featured, tmp_path / "bljust")
    assert summary["steps"] == 6 and not summary["skipped_audio"]
    lazy = load_split(featured, "unlabeled", precomputed_bins=80)
    assert all(c.has_features for c in lazy)


def test_features_command_stores_the_named_splits_with_the_configs_mel_bins(tiny_corpus, tmp_path, capsys):
    from bljust.cli import main

    data = _copy_manifests(tiny_corpus, tmp_path / "d", splits=("dev", "test"))
    config = tmp_path / "c.yaml"
    config.write_text("features:\n  num_mel_bins: 40\n")
    assert main(["features", str(data), "--splits", "dev", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    n = len(load_split(data, "dev"))
    assert out.startswith(f"dev: {n} of {n} utterances") and "40-bin log-mel" in out and "data.features=precomputed" in out
    assert load_checked_features(load_split(data, "dev", precomputed_bins=40)[0], 40).shape[1] == 40
    assert not feature_paths(data, "test")[1].exists()
