"""Corpus-level WER and CER with jiwer, and decoding a split with a trained model.

Normalisation (stated in every report): both reference and hypothesis go through
``normalize_transcript``: upper case, letters A–Z and apostrophes only, single spaces.
WER = total word edits / total reference words; CER the same over characters, spaces included.
"""

from __future__ import annotations

from pathlib import Path

import jiwer
import torch

from bljust.data.loader import eval_batches
from bljust.data.text import normalize_transcript
from bljust.decode import greedy_ctc
from bljust.models.asr import ctc_loss_sum
from bljust.training import autocast

NORMALIZATION = "upper case; letters A-Z, apostrophes and single spaces kept, everything else removed"


def error_rates(refs: list[str], hyps: list[str]) -> dict:
    """Corpus-level WER and CER of hypotheses against references (utterances with empty references are skipped)."""
    pairs = [(normalize_transcript(r), normalize_transcript(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r]
    if not pairs:
        raise ValueError("no utterance with a non-empty reference to score")
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    words = jiwer.process_words(r, h)
    chars = jiwer.process_characters(r, h)
    num_words = sum(len(x.split()) for x in r)
    num_chars = sum(len(x) for x in r)
    return {
        "wer": words.wer, "cer": chars.cer, "num_utterances": len(pairs), "num_words": num_words,
        "num_chars": num_chars,
        "word_errors": {"sub": words.substitutions, "del": words.deletions, "ins": words.insertions},
    }


@torch.no_grad()
def decode_cuts(model, tokenizer, cuts, device: torch.device, max_duration: float = 120.0,
                with_loss: bool = True, num_workers: int = 0, keep_emissions: bool = False, amp: bool = True) -> dict:
    """Greedy-decode ``cuts``: hypotheses, references, confidences (mean log-posterior of the
    emitted units) and the mean CTC loss per token; with ``keep_emissions`` also each
    utterance's (T, V) log-posteriors on the CPU, for a later LM search. ``amp``: bf16 autocast
    where the device computes bf16 natively, as in training."""
    was_training = model.training
    model.eval()
    hyps: dict[str, str] = {}
    refs: dict[str, str | None] = {}
    confidence: dict[str, float] = {}
    emissions: dict[str, torch.Tensor] = {}
    loss_sum, loss_tokens = 0.0, 0
    for batch in eval_batches(cuts, max_duration, num_workers):
        if not batch["ids"]:
            continue
        wav, wav_lens = batch["wav"].to(device), batch["wav_lens"].to(device)
        feats, feat_lens = model.frontend(wav, wav_lens)
        with autocast(device, amp):
            log_probs, lens = model(feats, feat_lens)
        seqs, conf = greedy_ctc(log_probs, lens)
        for b, (cid, seq, c, text) in enumerate(zip(batch["ids"], seqs, conf, batch["texts"])):
            hyps[cid] = tokenizer.decode(seq)
            refs[cid] = text
            confidence[cid] = c
            if keep_emissions:
                emissions[cid] = log_probs[b, :int(lens[b])].float().cpu()
        if with_loss and all(batch["texts"]):
            targets = [tokenizer.encode(t) for t in batch["texts"]]
            loss = ctc_loss_sum(log_probs, lens, targets)
            if torch.isfinite(loss):
                loss_sum += float(loss)
                loss_tokens += sum(len(t) for t in targets)
    model.train(was_training)
    out = {"hyps": hyps, "refs": refs, "confidence": confidence,
           "loss": loss_sum / max(loss_tokens, 1) if loss_tokens else float("nan")}
    if keep_emissions:
        out["emissions"] = emissions
    return out


def lm_decode(decoder, decoded: dict, lm_weight: float, word_score: float) -> dict:
    """``decoded`` (from ``decode_cuts(..., keep_emissions=True)``) with its hypotheses replaced
    by the LM beam search's."""
    ids = list(decoded["emissions"])
    hyps = decoder.decode([decoded["emissions"][i] for i in ids], lm_weight, word_score)
    return {**decoded, "hyps": dict(zip(ids, hyps))}


def tune_lm(decoder, decoded: dict, lm_weights: list[float], word_scores: list[float]) -> dict:
    """Grid-search the LM weight and word score for the lowest WER (ties: lower CER) on
    ``decoded``, which must be a dev split: test is never used for choosing."""
    if not lm_weights or not word_scores:
        raise ValueError("tune_lm needs at least one LM weight and one word score")
    ids = [i for i, r in decoded["refs"].items() if r]
    best, grid = None, []
    for lw in lm_weights:
        for ws in word_scores:
            hyps = lm_decode(decoder, decoded, lw, ws)["hyps"]
            r = error_rates([decoded["refs"][i] for i in ids], [hyps[i] for i in ids])
            grid.append({"lm_weight": lw, "word_score": ws, "wer": r["wer"], "cer": r["cer"]})
            if best is None or (r["wer"], r["cer"]) < (best["wer"], best["cer"]):
                best = grid[-1]
    return {"lm_weight": best["lm_weight"], "word_score": best["word_score"], "grid": grid}


def score(decoded: dict) -> dict:
    ids = [i for i, r in decoded["refs"].items() if r]
    result = error_rates([decoded["refs"][i] for i in ids], [decoded["hyps"][i] for i in ids])
    result["loss"] = decoded["loss"]
    return result


def write_hypotheses(path: Path, decoded: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for cid, hyp in decoded["hyps"].items():
            f.write(f"{cid}\tREF: {decoded['refs'].get(cid) or ''}\n{cid}\tHYP: {hyp}\n")
