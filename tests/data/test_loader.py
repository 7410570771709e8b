"""The training batch stream: worker processes never change which batches a run sees."""

from __future__ import annotations

import pytest

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
