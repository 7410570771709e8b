"""The training batch stream: worker processes never change which batches a run sees."""

from __future__ import annotations

import logging

import pytest
import soundfile as sf
import torch

from bljust.data.loader import BatchStream
from bljust.data.manifests import load_split


def _stream(cuts, workers: int) -> BatchStream:
    return BatchStream(cuts, "labeled", max_duration=20.0, num_buckets=2, seed=3, num_workers=workers)


def _ids(stream: BatchStream, n: int) -> list[tuple[str, ...]]:
    return [tuple(next(stream)["ids"]) for _ in range(n)]


@pytest.fixture(scope="module")
def labeled(tiny_corpus):
    return load_split(tiny_corpus, "labeled").to_eager()


def test_persistent_workers_yield_the_same_batches_as_the_main_process_across_epochs(labeled):
    plain = _stream(labeled, 0)
    n = 2 * plain.batches_per_epoch() + 3  # into the third epoch
    expected = _ids(plain, n)
    assert len(set(expected[: plain.batches_per_epoch()])) == plain.batches_per_epoch()
    assert expected[: plain.batches_per_epoch()] != expected[plain.batches_per_epoch(): 2 * plain.batches_per_epoch()]
    stream = _stream(labeled, 1)
    try:
        got = _ids(stream, n)
        assert got == expected
        assert stream.state_dict() == plain.state_dict() and stream.epoch == 2
    finally:
        stream.close()


def test_a_closed_stream_stops_its_workers_and_reopens_where_it_stopped(labeled):
    expected = _ids(_stream(labeled, 0), 8)
    stream = _stream(labeled, 1)
    got = _ids(stream, 3)
    workers = stream._loader._iterator._workers
    assert workers and all(w.is_alive() for w in workers)
    stream.close()
    assert not any(w.is_alive() for w in workers)
    got += _ids(stream, 5)  # prefetched batches were dropped, not skipped
    stream.close()
    assert got == expected


def test_a_resumed_stream_with_workers_continues_the_sequence(labeled):
    expected = _ids(_stream(labeled, 0), 10)
    first = _stream(labeled, 1)
    got = _ids(first, 4)
    state = first.state_dict()
    first.close()
    second = _stream(labeled, 1)
    second.load_state_dict(state)
    got += _ids(second, 6)
    second.close()
    assert got == expected


# ---------------------------------------------------------------- bad audio


@pytest.fixture(scope="module")
def broken(tiny_corpus, tmp_path_factory):
    from tests.broken import make_broken_corpus

    out = tmp_path_factory.mktemp("broken") / "data"
    return out, make_broken_corpus(tiny_corpus, out)


def test_every_kind_of_bad_audio_is_refused_with_its_reason(broken):
    from bljust.data.audio import BadAudio, load_checked
    from tests.broken import AUDIO_REASONS

    data, expected = broken
    for split in ("labeled", "dev"):
        cuts = load_split(data, split)
        for kind, reason in AUDIO_REASONS.items():
            with pytest.raises(BadAudio) as e:
                load_checked(cuts[f"{split}-broken-{kind}"])
            assert e.value.problem.reason == reason, (kind, e.value)
            assert e.value.problem.file.endswith(f"{split}-{kind}.wav")
        good = [c for c in cuts if "broken" not in c.id]
        assert all(load_checked(c).shape[1] > 0 for c in good[:5])
    short = load_split(data, "labeled")["labeled-broken-short"]
    with pytest.raises(BadAudio, match=f"declares {short.num_samples} samples at 16000 Hz, the file holds "
                                       f"{sf.info(short.recording.sources[0].source).frames} samples"):
        load_checked(short)


def test_a_batch_keeps_its_good_utterances_and_lists_the_bad(broken):
    from bljust.data.loader import AudioDataset

    data, _ = broken
    cuts = load_split(data, "dev")
    ids = ["dev-broken-nan", "dev-broken-garbage", next(c.id for c in cuts if "broken" not in c.id)]
    batch = AudioDataset()[cuts.subset(cut_ids=ids)]
    assert batch["ids"] == ids[2:]
    assert torch.isfinite(batch["wav"]).all()
    assert sorted(f["reason"] for f in batch["failed"]) == ["non-finite samples", "unreadable"]


def test_skipped_audio_logs_each_file_once_and_counts_every_hit(broken, caplog):
    from bljust.data.audio import SkippedAudio
    from bljust.data.loader import eval_batches

    data, _ = broken
    skipped = SkippedAudio()
    cuts = load_split(data, "dev")
    with caplog.at_level(logging.WARNING, logger="bljust"):
        for _ in range(2):
            list(eval_batches(cuts, 20.0, skipped=skipped))
    lines = [r.getMessage() for r in caplog.records if "skipping audio" in r.getMessage()]
    assert len(lines) == 5 and all(sum(f"dev-{k}.wav" in ln for ln in lines) == 1 for k in
                                   ("nan", "empty", "garbage", "short", "missing"))
    assert skipped.hits == 10
    assert skipped.counts() == {"empty file": 1, "missing file": 1, "non-finite samples": 1,
                                "sample count mismatch": 1, "unreadable": 1}
    restored = SkippedAudio()
    restored.load_state_dict(skipped.state_dict())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bljust"):
        list(eval_batches(cuts, 20.0, skipped=restored))
    assert not [r for r in caplog.records if "skipping audio" in r.getMessage()]


def test_the_filter_names_missing_and_empty_files_before_trusting_the_manifest(broken):
    from bljust.config import load_config
    from bljust.data.audio import SkippedAudio
    from bljust.data.loader import filter_cuts
    from bljust.data.manifests import cut_text
    from bljust.data.tokenizer import train_tokenizer
    from bljust.models.asr import ASRModel
    from tests.broken import INFEASIBLE
    from tests.conftest import TINY

    data, _ = broken
    cfg = load_config(TINY)
    cuts = load_split(data, "labeled")
    tok = train_tokenizer(cfg.tokenizer, [t for c in cuts if (t := cut_text(c))])
    model = ASRModel(cfg, tok.vocab_size)
    skipped = SkippedAudio()
    kept, report = filter_cuts(cuts, "labeled", min_seconds=0.3, max_seconds=20.0, tokenizer=tok,
                               output_frames=model.output_frames, skipped=skipped)
    assert skipped.counts() == {"empty file": 1, "missing file": 1}
    # "LL LL LL": 8 units fit the 9 frames of 0.4 s, but CTC needs a blank between the 3 repeats
    assert [(cid, r.split(":")[0]) for cid, r in report.dropped] == [(INFEASIBLE, "more tokens than encoder frames")]
    assert "3 repeats" in report.dropped[0][1]
    assert len(kept) == len(cuts) - 3


def test_ctc_needs_a_frame_between_repeated_units():
    from bljust.data.loader import ctc_frames_needed

    assert ctc_frames_needed([]) == 0
    assert ctc_frames_needed([3, 4, 5]) == 3
    assert ctc_frames_needed([3, 3, 3, 4, 4]) == 8
    assert ctc_frames_needed([3, 4, 3]) == 3


def test_a_stream_whose_audio_all_fails_stops_with_the_reasons(tmp_path, broken):
    from bljust.engine import TrainingFailed

    data, _ = broken
    cuts = load_split(data, "dev")
    bad = cuts.filter(lambda c: "broken" in c.id).to_eager()
    stream = BatchStream(bad, "dev", max_duration=20.0, num_buckets=1, seed=0)
    with pytest.raises(TrainingFailed, match="no audio of the 'dev' split could be loaded"):
        for _ in range(20):
            next(stream)
