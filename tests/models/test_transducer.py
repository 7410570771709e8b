"""The transducer head: the RNN-T loss against a brute-force sum over alignments, its gradients, chunking,
bf16 autocast, the predictors' step-by-step decoding against their training pass, and the greedy and
beam-search decoders against plain per-utterance versions."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bljust.config import ModelConfig, load_config
from bljust.decode import beam_search_transducer, greedy_transducer
from bljust.models.asr import ASRModel
from bljust.models.rnnt_loss import lattice_log_probs, rnnt_loss_sum
from bljust.models.transducer import Transducer
from tests.conftest import TINY


def brute_force_nll(logits: torch.Tensor, labels: list[int], frames: int) -> torch.Tensor:
    """−log Σ over every monotonic alignment: every order of ``frames`` blanks and the units, the last move
    a blank out of (T−1, U)."""
    lp = logits.log_softmax(-1)
    units = len(labels)
    paths = []
    for label_moves in itertools.combinations(range(frames + units - 1), units):
        t = u = 0
        score = lp.new_zeros(())
        for move in range(frames + units - 1):
            if move in label_moves:
                score = score + lp[t, u, labels[u]]
                u += 1
            else:
                score = score + lp[t, u, 0]
                t += 1
        paths.append(score + lp[frames - 1, units, 0])
    return -torch.logsumexp(torch.stack(paths), dim=0)


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, frames: list[int], units: list[int]) -> torch.Tensor:
    blank_lp, label_lp = lattice_log_probs(logits, labels)
    return rnnt_loss_sum(blank_lp, label_lp, torch.tensor(frames), torch.tensor(units))


@pytest.mark.parametrize("frames,units", [([1], [0]), ([3], [0]), ([1], [3]), ([4], [2]), ([5], [4]),
                                          ([4, 2, 3, 1], [3, 0, 2, 1])])
def test_loss_is_the_sum_over_every_alignment(frames, units):
    """In float64, for U = 0, T = 1, and a batch whose utterances differ in both lengths (padding ignored)."""
    gen = torch.Generator().manual_seed(sum(frames) * 10 + sum(units))
    vocab = 5
    logits = torch.randn(len(frames), max(frames), max(units) + 1, vocab, generator=gen, dtype=torch.float64)
    labels = torch.randint(1, vocab, (len(frames), max(units)), generator=gen)
    expected = sum(brute_force_nll(logits[b, :frames[b], :units[b] + 1], labels[b, :units[b]].tolist(), frames[b])
                   for b in range(len(frames)))
    assert torch.allclose(batch_loss(logits, labels, frames, units), expected, rtol=1e-12, atol=1e-12)


def test_gradients_pass_gradcheck():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, 3], [2, 0]])
    assert torch.autograd.gradcheck(lambda x: batch_loss(x, labels, [3, 2], [2, 1]), (logits,))


def head(predictor: str = "stateless", chunk: int = 8, vocab: int = 7, dim: int = 6) -> Transducer:
    torch.manual_seed(0)
    cfg = ModelConfig(loss="rnnt", predictor=predictor, predictor_dim=8, joiner_dim=12, rnnt_chunk=chunk)
    return Transducer(cfg, dim, vocab)


def inputs(bsz: int = 5, frames: int = 9, dim: int = 6, vocab: int = 7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(bsz, frames, dim, generator=gen)
    lens = torch.tensor([frames - b % 3 for b in range(bsz)])
    targets = [torch.randint(1, vocab, (b % 4,), generator=gen).tolist() for b in range(bsz)]
    return hidden, lens, targets


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_chunked_loss_and_gradients_equal_unchunked(predictor):
    """Chunks of 2 utterances (checkpointed, their joint recomputed in backward) against the whole batch at once."""
    hidden, lens, targets = inputs()
    results = []
    for chunk in (100, 2):
        model = head(predictor, chunk).double()
        x = hidden.double().requires_grad_()
        loss = model.loss_sum(x, lens, targets)
        loss.backward()
        results.append((loss.detach(), x.grad, [p.grad for p in model.parameters()]))
    (l1, gx1, gp1), (l2, gx2, gp2) = results
    assert torch.allclose(l1, l2, rtol=1e-12) and torch.allclose(gx1, gx2, rtol=1e-10, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-12) for a, b in zip(gp1, gp2))


def test_loss_of_the_head_matches_the_brute_force_through_predictor_and_joiner():
    """What the engine trains on is the sum over alignments of the head's own joint."""
    model = head().double()
    hidden, lens, targets = inputs(bsz=3, frames=4)
    hidden = hidden.double()
    expected = 0.0
    for b, target in enumerate(targets):
        units = torch.tensor([[0, *target]])
        joint = model.joiner(model.joiner.enc_proj(hidden[b:b + 1, :int(lens[b]), None]),
                             model.joiner.pred_proj(model.predictor(units))[:, None])
        expected += brute_force_nll(joint[0], target, int(lens[b]))
    assert torch.allclose(model.loss_sum(hidden, lens, targets), expected, rtol=1e-10)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_bf16_autocast_trains_in_float32(predictor):
    """Under bf16 autocast the joiner (and the stateless predictor) run in bf16, the LSTM predictor in float32 (CPUs
    without AVX512 have no bf16 LSTM), and the loss (and its recursion) is float32 and close to the float32 one;
    both decoders run there too."""
    model = head(predictor)
    hidden, lens, targets = inputs()
    exact = model.loss_sum(hidden, lens, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss_sum(hidden, lens, targets)
        with torch.no_grad():
            decoded = [greedy_transducer(model, hidden, lens), beam_search_transducer(model, hidden, lens, 3)]
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert abs(loss.item() - exact.item()) < 0.02 * exact.item()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(len(seqs) == len(conf) == 5 and all(math.isfinite(c) for c in conf) for seqs, conf in decoded)


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_predictor_steps_reproduce_its_training_pass(predictor):
    model = head(predictor)
    units = torch.tensor([[0, 3, 3, 1, 5], [0, 2, 6, 4, 4]])
    whole = model.predictor(units)
    state = model.predictor.init_state(2, torch.device("cpu"))
    for i in range(units.shape[1]):
        out, state = model.predictor.step(units[:, i], state)
        assert torch.allclose(out, whole[:, i], atol=1e-6)


def _joint_log_probs(model, enc_t, context_out):
    return model.joiner(enc_t, model.joiner.pred_proj(context_out)).log_softmax(-1)


def reference_greedy(model, hidden, frames, max_symbols=3):
    """One utterance, no batching: the definition of greedy transducer decoding."""
    enc = model.joiner.enc_proj(hidden)
    state = model.predictor.init_state(1, hidden.device)
    out, state = model.predictor.step(torch.zeros(1, dtype=torch.long), state)
    units, scores = [], []
    for t in range(frames):
        for _ in range(max_symbols):
            lp = _joint_log_probs(model, enc[t:t + 1], out)[0]
            best = int(lp.argmax())
            if best == 0:
                break
            units.append(best)
            scores.append(float(lp[best]))
            out, state = model.predictor.step(torch.tensor([best]), state)
    return units, (sum(scores) / len(scores) if scores else 0.0)


def reference_beam_search(model, hidden, frames, beam):
    """One utterance, hypotheses in a dict keyed by their units (icefall's HypothesisList): at every frame each
    hypothesis extends by blank or one unit, equal unit sequences add their probabilities, the best ``beam`` stay."""
    enc = model.joiner.enc_proj(hidden)

    def predict(units):
        state = model.predictor.init_state(1, hidden.device)
        out, state = model.predictor.step(torch.zeros(1, dtype=torch.long), state)
        for u in units:
            out, state = model.predictor.step(torch.tensor([u]), state)
        return out

    hyps = {(): 0.0}
    for t in range(frames):
        new: dict[tuple, float] = {}
        for units, score in hyps.items():
            lp = _joint_log_probs(model, enc[t:t + 1], predict(units))[0]
            for v in range(lp.shape[0]):
                key = units if v == 0 else units + (v,)
                value = score + float(lp[v])
                new[key] = value if key not in new else float(torch.logaddexp(torch.tensor(new[key]),
                                                                               torch.tensor(value)))
        hyps = dict(sorted(new.items(), key=lambda kv: kv[1], reverse=True)[:beam])
    units, score = max(hyps.items(), key=lambda kv: kv[1])
    return list(units), score


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
def test_greedy_decoding_matches_the_per_utterance_definition(predictor):
    """Batched over utterances of different lengths; the joiner's output scaled up so that units get emitted."""
    model = head(predictor)
    with torch.no_grad():
        model.joiner.out.weight.mul_(8)
        hidden, lens, _ = inputs(bsz=4)
        seqs, conf = greedy_transducer(model, hidden, lens)
        assert any(seqs)
        for b in range(4):
            units, c = reference_greedy(model, hidden[b], int(lens[b]))
            assert seqs[b] == units and math.isclose(conf[b], c, rel_tol=1e-5, abs_tol=1e-6)
            assert len(units) <= 3 * int(lens[b])


@pytest.mark.parametrize("predictor", ["stateless", "lstm"])
@pytest.mark.parametrize("beam", [1, 4])
def test_beam_search_matches_the_per_utterance_definition(predictor, beam):
    model = head(predictor)
    with torch.no_grad():
        model.joiner.out.weight.mul_(3)
        hidden, lens, _ = inputs(bsz=4, frames=6)
        seqs, conf = beam_search_transducer(model, hidden, lens, beam)
        assert any(seqs)
        for b in range(4):
            units, score = reference_beam_search(model, hidden[b], int(lens[b]), beam)
            assert seqs[b] == units
            assert math.isclose(conf[b], score / len(units) if units else 0.0, rel_tol=1e-4, abs_tol=1e-5)


@pytest.mark.parametrize("loss", ["ctc", "rnnt"])
def test_theta_phi_eta_partition_the_parameters(loss):
    """φ is the CTC layer, or the predictor and the joiner; θ and η are the same modules either way."""
    model = ASRModel(load_config(TINY, [f"model.loss={loss}"]), 30, ssl=True)
    groups = {g["name"]: [id(p) for p in g["params"]] for g in model.param_groups(1e-3)}
    every = [i for ids in groups.values() for i in ids]
    assert len(every) == len(set(every)) and set(every) == {id(p) for p in model.parameters() if p.requires_grad}
    assert set(groups["theta"]) == {id(p) for p in model.encoder.parameters()}
    phi = model.ctc_head if loss == "ctc" else model.transducer
    assert set(groups["phi"]) == {id(p) for p in phi.parameters()}
    keys = model.inference_state_dict()
    if loss == "ctc":  # the keys every CTC checkpoint holds
        assert {"ctc_head.weight", "ctc_head.bias"} <= set(keys) and not any(k.startswith("transducer.") for k in keys)
    else:
        assert any(k.startswith("transducer.predictor.") for k in keys)
        assert any(k.startswith("transducer.joiner.") for k in keys) and "ctc_head.weight" not in keys
