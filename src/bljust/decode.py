"""Decoding without a language model: greedy CTC, and greedy and beam-search transducer decoding.

Each returns, per utterance, the units and a confidence (what pseudo-labeling ranks by). The
transducer decoders take the ``bljust.models.transducer.Transducer`` head and the encoder output, and
are batched over utterances: their Python loops run over frames (and a few symbols per frame), never
over utterances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from bljust.models.transducer import select_state, where_state

MAX_SYMBOLS_PER_FRAME = 3
"""Greedy transducer decoding emits at most this many units per encoder frame (40 ms), icefall's bound:
an untrained joiner that never picks blank would otherwise never leave its first frame."""


def greedy_ctc(log_probs: Tensor, lens: Tensor, blank: int = 0) -> tuple[list[list[int]], list[float]]:
    """Best path: argmax per frame, repeats merged, blanks removed.

    Also returns a confidence per utterance: the mean log-posterior of the emitted frames'
    best units (0 for an empty hypothesis), as pseudo-labeling filters use.
    """
    best, ids = log_probs.max(dim=-1)
    out, conf = [], []
    for b in range(ids.shape[0]):
        n = int(lens[b])
        seq = ids[b, :n]
        keep = torch.ones_like(seq, dtype=torch.bool)
        keep[1:] = seq[1:] != seq[:-1]
        keep &= seq != blank
        out.append(seq[keep].tolist())
        conf.append(float(best[b, :n][keep].mean()) if bool(keep.any()) else 0.0)
    return out, conf


def _unpad(units: Tensor, counts: Tensor, scores: Tensor) -> tuple[list[list[int]], list[float]]:
    """Per utterance: its first counts[b] units, and scores[b] / counts[b] (0 for an empty hypothesis);
    one transfer to the host for the whole batch."""
    units, counts, scores = units.cpu(), counts.cpu().tolist(), scores.float().cpu().tolist()
    return [units[b, :n].tolist() for b, n in enumerate(counts)], [s / n if n else 0.0 for s, n in zip(scores, counts)]


def greedy_transducer(head, hidden: Tensor, lens: Tensor,
                      max_symbols: int = MAX_SYMBOLS_PER_FRAME) -> tuple[list[list[int]], list[float]]:
    """At each frame, emit the joiner's best unit and feed it to the predictor, until blank is best or
    ``max_symbols`` units were emitted at that frame; then move to the next frame.

    The confidence is the mean log-probability of the emitted units (0 for an empty hypothesis)."""
    bsz, frames = hidden.shape[:2]
    device, rows = hidden.device, torch.arange(hidden.shape[0], device=hidden.device)
    enc = head.joiner.enc_proj(hidden)
    state = head.predictor.init_state(bsz, device)
    out, state = head.predictor.step(torch.zeros(bsz, dtype=torch.long, device=device), state)
    pred = head.joiner.pred_proj(out)
    units = torch.zeros(bsz, frames * max_symbols, dtype=torch.long, device=device)
    counts = torch.zeros(bsz, dtype=torch.long, device=device)
    total = torch.zeros(bsz, dtype=torch.float32, device=device)
    for t in range(frames):
        active = lens > t
        for _ in range(max_symbols):
            best_lp, best = F.log_softmax(head.joiner(enc[:, t], pred).float(), dim=-1).max(dim=-1)
            emit = active & (best != 0)
            if not bool(emit.any()):
                break
            units[rows, counts] = torch.where(emit, best, units[rows, counts])
            counts += emit
            total += torch.where(emit, best_lp, 0.0)
            out, new_state = head.predictor.step(best, state)
            state = where_state(emit, new_state, state)
            pred = torch.where(emit[:, None], head.joiner.pred_proj(out), pred)
    return _unpad(units, counts, total)


def beam_search_transducer(head, hidden: Tensor, lens: Tensor, beam: int = 4) -> tuple[list[list[int]], list[float]]:
    """icefall's modified beam search: at most one unit per frame, ``beam`` hypotheses per utterance.

    At each frame every hypothesis extends by blank (same units) or by one unit; of all extensions the
    ``beam`` most probable survive, after extensions that spell the same units are merged (their
    probabilities added): hypothesis h + blank and hypothesis h[:-1] + h's last unit. Returns the most
    probable hypothesis of each utterance, with its log-probability per unit as confidence (0 if empty).
    """
    bsz, frames = hidden.shape[:2]
    k, device = beam, hidden.device
    enc = head.joiner.enc_proj(hidden)
    neg_inf = float("-inf")
    score = torch.full((bsz, k), neg_inf, device=device)
    score[:, 0] = 0.0  # one live hypothesis (nothing emitted); the others are empty slots
    history = torch.zeros(bsz, k, max(frames, 1), dtype=torch.long, device=device)  # units, padded with 0
    length = torch.zeros(bsz, k, dtype=torch.long, device=device)
    state = head.predictor.init_state(bsz * k, device)
    out, state = head.predictor.step(torch.zeros(bsz * k, dtype=torch.long, device=device), state)
    pred = head.joiner.pred_proj(out).view(bsz, k, -1)
    position = torch.arange(history.shape[2], device=device)
    vocab = head.joiner.out.out_features
    slot_blank = torch.arange(k, device=device) * vocab  # each hypothesis's blank extension in (K × V)
    for t in range(frames):
        log_probs = F.log_softmax(head.joiner(enc[:, t, None], pred).float(), dim=-1)  # (B, K, V)
        cand = (score[:, :, None] + log_probs).view(bsz, k * vocab)
        # Merge h + blank with p + last(h) where p spells h without its last unit: p is at most one
        # live hypothesis, since live hypotheses spell different units.
        live = torch.isfinite(score)
        seen = history[..., :t]  # no hypothesis holds more than t units before frame t
        prefix = ((seen[:, :, None] == seen[:, None]) | (position[:t] >= length[:, None, :, None])).all(-1)
        parent = (prefix & (length[:, :, None] == length[:, None] + 1) & live[:, :, None] & live[:, None])
        has = parent.any(-1)
        last = history.gather(2, (length - 1).clamp(min=0)[..., None])[..., 0]
        twin = parent.int().argmax(-1) * vocab + last  # (B, K): the extension p + last(h)
        merged = torch.logaddexp(cand[:, slot_blank], cand.gather(1, twin))
        cand = cand.clone()
        cand[:, slot_blank] = torch.where(has, merged, cand[:, slot_blank])
        cand = cand.scatter(1, twin, torch.where(has, neg_inf, cand.gather(1, twin)))
        new_score, index = cand.topk(k, dim=1)
        origin, unit = index // vocab, index % vocab
        emit = unit != 0
        new_history = history.gather(1, origin[..., None].expand_as(history))
        new_length = length.gather(1, origin)
        at = new_length.clamp(max=history.shape[2] - 1)[..., None]
        new_history.scatter_(2, at, torch.where(emit[..., None], unit[..., None], new_history.gather(2, at)))
        new_length = new_length + emit
        flat_origin = (origin + torch.arange(bsz, device=device)[:, None] * k).view(-1)
        origin_state = select_state(state, flat_origin)
        origin_pred = pred.view(bsz * k, -1)[flat_origin]
        out, stepped = head.predictor.step(unit.view(-1), origin_state)
        flat_emit = emit.view(-1)
        new_state = where_state(flat_emit, stepped, origin_state)
        new_pred = torch.where(flat_emit[:, None], head.joiner.pred_proj(out), origin_pred).view(bsz, k, -1)
        active = lens > t  # utterances already past their last frame keep their hypotheses
        score = torch.where(active[:, None], new_score, score)
        history = torch.where(active[:, None, None], new_history, history)
        length = torch.where(active[:, None], new_length, length)
        pred = torch.where(active[:, None, None], new_pred, pred)
        state = where_state(active.repeat_interleave(k), new_state, state)
    best = score.argmax(dim=1)
    rows = torch.arange(bsz, device=device)
    return _unpad(history[rows, best], length[rows, best], score[rows, best])
