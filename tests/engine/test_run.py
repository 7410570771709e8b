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
