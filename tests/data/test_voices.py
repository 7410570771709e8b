"""The demo corpus's synthetic speakers and the rendering of one utterance."""

from __future__ import annotations

from collections import Counter

from bljust.data import voices
from bljust.data.manifests import SPLITS
from bljust.data.voices import FAMILIES, make_speakers


def test_speaker_pool():
    pool = make_speakers(seed=0, labeled_speakers=4)
    assert [len(pool[s]) for s in SPLITS] == [4, voices.UNLABELED_SPEAKERS, voices.EVAL_SPEAKERS, voices.EVAL_SPEAKERS]
    ids = [spk.id for s in SPLITS for spk in pool[s]]
    assert len(ids) == len(set(ids))
    for split in SPLITS:
        families = Counter(spk.family for spk in pool[split])
        assert set(families) == set(FAMILIES), split
    assert len({spk.family for spk in pool["labeled"][:3]}) == 3  # the few labeled speakers mix families
    # Every espeak speaker is a distinct accent x variant.
    espeak = [spk.voice for s in SPLITS for spk in pool[s] if spk.family == "espeak"]
    assert len(espeak) == len(set(espeak))
    assert make_speakers(seed=0) == pool and make_speakers(seed=1) != pool


def test_engine_failure_does_not_raise():
    spk = make_speakers(0)["dev"][0]
    bad = voices.Speaker(**{**spk.__dict__, "voice": "xx-no-such-voice"})
    utt = voices.Utterance(id="u1", split="dev", speaker=bad.id, text="Hello there, said she.", words=4,
                          tempo=1.0, pitch=0.0, snr_db=20.0, noise_seed=1, path="/nonexistent/u1.flac")
    [(utt_id, samples, reason)] = voices.synthesize_task([(bad, utt)])
    assert utt_id == "u1" and samples is None and reason
