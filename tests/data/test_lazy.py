"""data.lazy: training splits streamed from disk, never held, with the eager path's cuts, batches and results."""

from __future__ import annotations

import gc
import gzip
import json
import random
import shutil
import tracemalloc
from pathlib import Path

import pytest
import torch

from bljust.checkpoint import load
from bljust.config import load_config
from bljust.data import loader
from bljust.data.loader import BatchStream, UtteranceFilter, hold_out, speed_perturbed, write_lazy_split
from bljust.data.manifests import SPLITS, load_split, manifest_paths
from bljust.engine import run as run_module
from bljust.engine.run import FAULT_ENV
from bljust.methods import METHODS
from tests.conftest import TINY
from tests.methods.test_resume import _cli

STEPS = {"supervised": ["train.max_steps=4"],
         "bljust": ["train.max_steps=6", "bljust.explore_steps=1", "bljust.joint_steps=2", "bljust.finetune_steps=1"]}


def _keep(split: str = "unlabeled", max_seconds: float = 30.0) -> UtteranceFilter:
    return UtteranceFilter(split, min_seconds=0.3, max_seconds=max_seconds)


def test_a_lazy_split_and_its_speed_perturbed_copies_have_the_cuts_of_the_eager_ones(tiny_corpus):
    for split in SPLITS:
        lazy = load_split(tiny_corpus, split, lazy=True)
        assert lazy.is_lazy
        assert [c.to_dict() for c in lazy] == [c.to_dict() for c in load_split(tiny_corpus, split)]
    eager, lazy = (speed_perturbed(load_split(tiny_corpus, "labeled", lazy=z), [0.9, 1.1]) for z in (False, True))
    assert lazy.is_lazy and [c.to_dict() for c in lazy] == [c.to_dict() for c in eager]


def test_supervisions_out_of_their_recordings_order_are_an_error_naming_the_files(tiny_corpus, tmp_path):
    rec, sup = manifest_paths(tiny_corpus, "labeled")
    shutil.copy(rec, tmp_path / rec.name)
    lines = gzip.open(sup, "rt").read().splitlines()
    with gzip.open(tmp_path / sup.name, "wt") as f:
        f.write("\n".join(lines[1:] + lines[:1]) + "\n")  # the first recording's supervision comes last
    with pytest.raises(ValueError, match=f"{tmp_path / sup.name}.*out of the order of the recordings in "
                                         f"{tmp_path / rec.name}"):
        list(load_split(tmp_path, "labeled", lazy=True))


@pytest.mark.parametrize("method", sorted(STEPS))
def test_a_lazy_run_trains_exactly_as_an_eager_one_from_lazy_streams(method, tiny_corpus, tmp_path, monkeypatch):
    seen = []

    class Recording(BatchStream):
        def __init__(self, cuts, name, **kwargs):
            seen.append((name, cuts.is_lazy))
            super().__init__(cuts, name, **kwargs)

    monkeypatch.setattr(run_module, "BatchStream", Recording)
    summaries = {}
    for lazy in (False, True):
        cfg = load_config(TINY, ["data.max_duration=10", f"data.lazy={str(lazy).lower()}", *STEPS[method]])
        summaries[lazy] = METHODS[method](cfg, tiny_corpus, tmp_path / str(lazy))
    streams = ["labeled"] + (["unlabeled"] if method == "bljust" else [])
    assert seen == [(name, lazy) for lazy in (False, True) for name in streams]
    assert sorted(p.name for p in (tmp_path / "True" / "lazy").iterdir()) == [f"{s}_cuts.jsonl.gz" for s in streams]
    for summary in summaries.values():
        summary.pop("train_seconds"), summary.pop("wall_seconds")
    assert summaries[True] == summaries[False]
    assert summaries[True]["dropped_utterances"]  # data.max_duration=10 drops two labeled utterances
    name = f"step-{summaries[True]['steps']:07d}.pt"
    a, b = (load(tmp_path / str(lazy) / "checkpoints" / name) for lazy in (False, True))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["streams"] == b["streams"]


def test_a_killed_lazy_run_resumes_exactly(tiny_corpus, tmp_path):
    settings = ["data.lazy=true", "data.max_duration=10", "train.checkpoint_every=2", "train.valid_every=4",
                "model.dropout=0.1", "train.max_steps=12", "bljust.outer_epochs=2", "bljust.explore_steps=2",
                "bljust.joint_steps=3", "bljust.finetune_steps=2"]
    straight = METHODS["bljust"](load_config(TINY, settings), tiny_corpus, tmp_path / "straight")
    sets = [a for s in settings for a in ("--set", s)]
    base = ["train", "--method", "bljust", "--data", str(tiny_corpus), "--out", str(tmp_path / "killed")]
    killed = _cli(*base, "--config", str(TINY), *sets, env={FAULT_ENV: "9"})
    assert killed.returncode == 17, killed.stderr[-3000:]
    resumed = _cli(*base, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 8" in resumed.stderr
    name = f"step-{straight['steps']:07d}.pt"
    a, b = load(tmp_path / "straight" / "checkpoints" / name), load(tmp_path / "killed" / "checkpoints" / name)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["streams"] == b["streams"] and a["streams"]["unlabeled"]["epoch"] >= 1  # resumed past an epoch's end


def _fake_cuts(path: Path, n: int, audio: Path, seed: int = 0) -> Path:
    """A cut manifest of ``n`` one-recording cuts of 0.2–25 s (some outside the duration limits), every one
    pointing at ``audio`` (only its size is read)."""
    rng = random.Random(seed)
    with gzip.open(path, "wt") as f:
        for i in range(n):
            samples = int(rng.uniform(0.2, 25.0) * 16000)
            seconds = samples / 16000
            rec = {"id": f"rec{i:07d}", "sources": [{"type": "file", "channels": [0], "source": str(audio)}],
                   "sampling_rate": 16000, "num_samples": samples, "duration": seconds, "channel_ids": [0]}
            sup = {"id": f"utt{i:07d}", "recording_id": rec["id"], "start": 0.0, "duration": seconds, "channel": 0,
                   "speaker": f"spk{i % 251}"}
            f.write(json.dumps({"id": sup["id"], "start": 0.0, "duration": seconds, "channel": 0,
                                "supervisions": [sup], "recording": rec, "type": "MonoCut"}) + "\n")
    return path


@pytest.fixture
def fake_audio(tiny_corpus) -> Path:
    return next(iter(load_split(tiny_corpus, "dev"))).recording.sources[0].source


@pytest.mark.parametrize("fraction, max_seconds", [(0.03, 300.0), (0.01, 1e9), (0.2, 40.0), (0.0, 300.0)])
def test_lazy_held_out_utterances_are_the_eager_choice_and_disjoint_from_training(fraction, max_seconds, tmp_path,
                                                                                   fake_audio):
    from lhotse import CutSet

    source = CutSet.from_file(_fake_cuts(tmp_path / "cuts.jsonl.gz", 2000, fake_audio))
    written = write_lazy_split(source, tmp_path / "out" / "unlabeled_cuts.jsonl.gz", _keep(),
                               heldout_fraction=fraction, heldout_max_seconds=max_seconds)
    assert written.cuts.is_lazy and not written.heldout.is_lazy
    def within_limits(cut) -> bool:
        return 0.3 <= cut.duration <= 30.0

    kept, held = hold_out(source.filter(within_limits), fraction, max_seconds)
    assert [c.id for c in written.heldout] == [c.id for c in held]
    # the rule itself, written out: utterances in the order of their ids' hash until the target is reached
    import hashlib

    by_hash = sorted(source.filter(within_limits), key=lambda c: hashlib.sha1(c.id.encode()).hexdigest())
    target, expected, seconds = min(fraction * sum(c.duration for c in by_hash), max_seconds), set(), 0.0
    for cut in by_hash:
        if seconds >= target:
            break
        expected.add(cut.id)
        seconds += cut.duration
    assert set(held.ids) == expected
    assert (len(held) > 0) == (fraction > 0)
    training = [c.id for c in written.cuts]
    assert training == [c.id for c in kept] and written.num_cuts == len(training)
    assert not set(training) & set(written.heldout.ids)
    assert written.report.kept == len(training) + len(held) and written.report.dropped  # some are out of limits
    CutSet.from_cuts(reversed(source.to_eager())).to_file(tmp_path / "backwards.jsonl.gz")
    again = write_lazy_split(CutSet.from_file(tmp_path / "backwards.jsonl.gz"), tmp_path / "again" / "cuts.jsonl.gz",
                             _keep(), heldout_fraction=fraction, heldout_max_seconds=max_seconds)
    assert sorted(again.heldout.ids) == sorted(written.heldout.ids)  # chosen by the ids alone, in any order


def _heap_peak(build) -> tuple[int, object]:
    """The peak growth of the traced Python heap while ``build()`` runs, in bytes, and what it built."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    built = build()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - before, built


# Tracing every allocation slows parsing about sixfold, so the test streams 20k utterances (a minute both ways):
# the lazy figure stays flat as the split grows (the same at 5k and 20k), the eager one grows with it.
MEMORY_CUTS = 20_000


@pytest.mark.slow
def test_a_lazy_stream_holds_a_small_fraction_of_the_eager_set(tmp_path, fake_audio):
    from lhotse import CutSet

    manifest = _fake_cuts(tmp_path / "cuts.jsonl.gz", MEMORY_CUTS, fake_audio)
    settings = dict(max_duration=60.0, num_buckets=10, seed=0)

    def lazy():
        written = write_lazy_split(CutSet.from_file(manifest), tmp_path / "lazy" / "unlabeled_cuts.jsonl.gz",
                                   _keep(), heldout_fraction=0.03, heldout_max_seconds=300.0)
        return BatchStream(written.cuts, "unlabeled", **settings)

    def eager():
        cuts, _ = loader.filter_cuts(CutSet.from_file(manifest).to_eager(), "unlabeled", min_seconds=0.3,
                                     max_seconds=30.0)
        return BatchStream(hold_out(cuts, 0.03, 300.0)[0], "unlabeled", **settings)

    lazy_bytes, stream = _heap_peak(lazy)
    assert stream.sampler.cuts[0].is_lazy
    stream.sampler.set_epoch(0)
    assert len(next(iter(stream.sampler))) > 0  # it samples (the fake audio itself is not loadable)
    del stream
    eager_bytes, _ = _heap_peak(eager)
    print(f"peak heap growth building the stream of {MEMORY_CUTS} utterances: lazy {lazy_bytes / 2**20:.1f} MiB, "
          f"eager {eager_bytes / 2**20:.1f} MiB")
    assert lazy_bytes < 3 * 2**20 and eager_bytes > 10 * lazy_bytes  # 0.9 MiB of it is the same at any size


def test_a_lazy_run_under_torchrun_shares_the_first_process_s_split(tiny_corpus, tmp_path):
    """The first process writes the split and the held-out choice; the other reads them (``Run._write_lazy``)."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    settings = ["data.lazy=true", "data.max_duration=10", "train.device=cpu", "train.amp=false", *STEPS["bljust"]]
    sets = [a for s in settings for a in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29523",
                        "-m", "bljust", "train", "--method", "bljust", "--data", str(tiny_corpus), "--out",
                        str(tmp_path / "run"), "--config", str(TINY), *sets],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    one = METHODS["bljust"](load_config(TINY, settings), tiny_corpus, tmp_path / "one")
    assert summary["dropped_utterances"] == one["dropped_utterances"] != {}
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x for x in records if x["kind"] == "dev" and "g_heldout" in x]  # both processes held the same cuts out


def test_compare_counts_a_lazy_runs_batches_by_streaming_and_as_the_eager_count(tiny_corpus, monkeypatch):
    from bljust.compare.budget import stream_batches

    settings = ["data.speed_perturb=[0.9,1.1]", "data.heldout_unlabeled_fraction=0.3"]
    eager = stream_batches(load_config(TINY, settings), tiny_corpus)
    # under data.lazy the held-out utterances are chosen while streaming, not by hold_out on a loaded split
    monkeypatch.setattr(loader, "hold_out", lambda *a, **k: pytest.fail("a split was loaded whole"))
    assert stream_batches(load_config(TINY, [*settings, "data.lazy=true"]), tiny_corpus) == eager
