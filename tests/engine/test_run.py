"""Pieces of ``engine.run`` that the method tests do not reach: typed state restore, block compilation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bljust.config import load_config
from bljust.engine.objectives import PenaltyGap
from bljust.engine.run import compile_encoder, restore_state
from bljust.models.asr import ASRModel
from tests.conftest import TINY


@dataclass
class _State:
    started: bool = False
    gap: PenaltyGap = field(default_factory=PenaltyGap)
    rounds: dict = field(default_factory=dict)


def test_a_method_state_round_trips_through_its_checkpointed_form():
    from dataclasses import asdict

    state = _State(started=True, rounds={"round1": {"kept": 3}})
    state.gap.update(2.0)
    state.gap.update(1.0)
    saved = asdict(state)
    restored = restore_state(_State(), saved)
    assert restored == state and isinstance(restored.gap, PenaltyGap)
    assert restored.gap.update(1.0) == state.gap.update(1.0)  # the smoothed g carries on where it stopped
    assert restore_state(_State(), {}) == _State() and math.isinf(_State().gap.g_min)  # a state saved before a field


def test_compiled_blocks_compute_what_eager_ones_do_and_keep_their_names():
    cfg = load_config(TINY, ["model.dropout=0.0"])
    torch.manual_seed(0)
    eager = ASRModel(cfg, 30)
    compiled = ASRModel(cfg, 30)
    compiled.load_state_dict(eager.state_dict())
    compile_encoder(compiled.encoder, "eager")  # dynamo's graph capture, without code generation
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    for frames in (120, 97):  # batches of two lengths, as training has
        x = torch.randn(2, frames, 80, generator=torch.Generator().manual_seed(frames))
        lens = torch.tensor([frames, 60])
        out = [m.encode(x, lens)[0] for m in (eager, compiled)]
        torch.testing.assert_close(out[1], out[0])
        grads = [torch.autograd.grad(o.square().sum(), list(m.encoder.parameters()))
                 for o, m in zip(out, (eager, compiled))]
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a)


def test_a_run_resumed_in_another_precision_says_so(tiny_corpus, tmp_path, caplog):
    """train.amp's default resolves per machine, so a run resumed on another machine type can change precision:
    the checkpoint records it and the resumed run warns (simulated here by forcing bf16 on resume)."""
    import logging

    from bljust.checkpoint import load
    from bljust.methods import METHODS

    settings = ["train.checkpoint_every=2", "train.valid_every=2", "data.max_duration=10"]
    out = tmp_path / "run"
    METHODS["supervised"](load_config(TINY, [*settings, "train.max_steps=2", "train.amp=false"]), tiny_corpus, out)
    assert load(out / "checkpoints" / "step-0000002.pt")["precision"] == "float32"
    with caplog.at_level(logging.WARNING, logger="bljust"):
        summary = METHODS["supervised"](load_config(TINY, [*settings, "train.max_steps=4", "train.amp_dtype=bf16"]),
                                        tiny_corpus, out, resume=True)
    assert "trained in float32 up to step 2; it goes on in bfloat16" in caplog.text
    assert summary["steps"] == 4 and summary["precision"] == "bfloat16"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bljust"):  # the same precision again: nothing to say
        METHODS["supervised"](load_config(TINY, [*settings, "train.max_steps=6", "train.amp_dtype=bf16"]),
                              tiny_corpus, out, resume=True)
    assert "goes on in" not in caplog.text
