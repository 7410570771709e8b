"""Corpus-level WER and CER with jiwer, decoding a split with a trained model, and evaluating a run.

Normalisation (stated in every report): both reference and hypothesis go through
``normalize_transcript``: upper case, letters A–Z and apostrophes only, single spaces.
WER = total word edits / total reference words; CER the same over characters, spaces included.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jiwer
import torch

from bljust.data.audio import SkippedAudio
from bljust.data.loader import eval_batches
from bljust.data.text import normalize_transcript
from bljust.decode import MAX_SYMBOLS_PER_FRAME
from bljust.engine.precision import autocast

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
                with_loss: bool = True, num_workers: int = 0, keep_emissions: bool = False, amp: bool = True,
                skipped: SkippedAudio | None = None, beam: int | None = None) -> dict:
    """Decode ``cuts`` greedily (or, for a transducer, with a ``beam`` search): hypotheses, references,
    confidences (mean log-probability of the emitted units) and the mean loss f per token (CTC or RNN-T);
    with ``keep_emissions`` (CTC models) also each utterance's (T, V) log-posteriors on the CPU, for a
    later LM search. ``amp``: bf16 autocast where the device computes bf16 natively, as in training.

    Audio that fails the loader's checks is not decoded (nor scored): it is logged once and counted
    in ``skipped`` (a fresh one when not given), whose counts are returned as ``skipped_audio``."""
    skipped = skipped if skipped is not None else SkippedAudio()
    was_training = model.training
    model.eval()
    hyps: dict[str, str] = {}
    refs: dict[str, str | None] = {}
    confidence: dict[str, float] = {}
    emissions: dict[str, torch.Tensor] = {}
    loss_sum, loss_tokens = 0.0, 0
    for batch in eval_batches(cuts, max_duration, num_workers, skipped=skipped):
        if not batch["ids"]:
            continue
        feats, feat_lens = model.frontend.from_batch(batch, device)
        with autocast(device, amp):
            hidden, lens = model.encode(feats, feat_lens)
            seqs, conf = model.decode(hidden, lens, beam)
            log_probs = model.log_probs(hidden) if keep_emissions else None
            targets = [tokenizer.encode(t) for t in batch["texts"]] if with_loss and all(batch["texts"]) else None
            loss = model.loss_sum(hidden, lens, targets) if targets else None
        for b, (cid, seq, c, text) in enumerate(zip(batch["ids"], seqs, conf, batch["texts"])):
            hyps[cid] = tokenizer.decode(seq)
            refs[cid] = text
            confidence[cid] = c
            if log_probs is not None:
                emissions[cid] = log_probs[b, :int(lens[b])].float().cpu()
        if loss is not None and torch.isfinite(loss):
            loss_sum += float(loss)
            loss_tokens += sum(len(t) for t in targets)
    model.train(was_training)
    out = {"hyps": hyps, "refs": refs, "confidence": confidence,
           "loss": loss_sum / max(loss_tokens, 1) if loss_tokens else float("nan"), "loss_sum": loss_sum,
           "loss_tokens": loss_tokens, "skipped_audio": skipped.counts()}
    if keep_emissions:
        out["emissions"] = emissions
    return out


def merge_decoded(parts: list[dict]) -> dict:
    """One ``decode_cuts`` result from the results of disjoint shards of a split (decoding sharded over
    processes): utterances united, the loss re-normalised by the summed token count, skips summed."""
    out: dict = {"hyps": {}, "refs": {}, "confidence": {}, "skipped_audio": {}}
    loss_sum, loss_tokens = 0.0, 0
    for part in parts:
        for key in ("hyps", "refs", "confidence", "emissions"):
            if key in part:
                out.setdefault(key, {}).update(part[key])
        loss_sum, loss_tokens = loss_sum + part["loss_sum"], loss_tokens + part["loss_tokens"]
        for reason, n in part["skipped_audio"].items():
            out["skipped_audio"][reason] = out["skipped_audio"].get(reason, 0) + n
    out.update(loss=loss_sum / loss_tokens if loss_tokens else float("nan"), loss_sum=loss_sum, loss_tokens=loss_tokens)
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


def scores_with_groups(decoded: dict, cuts) -> dict:
    """Corpus WER/CER of decoded hypotheses, overall and per voice family when the corpus has them."""
    from bljust.data.manifests import cut_group

    ids = [i for i, r in decoded["refs"].items() if r]
    overall = error_rates([decoded["refs"][i] for i in ids], [decoded["hyps"][i] for i in ids])
    by_group: dict[str, list[str]] = {}
    for cut in cuts:
        if (g := cut_group(cut)) is not None and decoded["refs"].get(cut.id):
            by_group.setdefault(g, []).append(cut.id)
    groups = {}
    for g, members in sorted(by_group.items()):
        r = error_rates([decoded["refs"][i] for i in members], [decoded["hyps"][i] for i in members])
        groups[g] = {"wer": r["wer"], "cer": r["cer"], "num_utterances": r["num_utterances"]}
    return {"wer": overall["wer"], "cer": overall["cer"], "num_utterances": overall["num_utterances"],
            "num_words": overall["num_words"], "num_chars": overall["num_chars"], "groups": groups}


def check_lm_decodable(cfg, model_file) -> None:
    """The word-LM beam search decodes CTC posteriors: refuse a transducer before anything is decoded."""
    if cfg.model.loss != "ctc":
        raise ValueError(f"{model_file} is a transducer model (model.loss={cfg.model.loss}); the word-LM lexicon "
                         f"beam search (--lm) decodes CTC models only: decode it without --lm (its own beam search)")


def decoding_name(cfg, beam: int | None = None) -> str:
    """How ``evaluate_run`` decodes a model of config ``cfg`` without an LM (a transducer: with ``beam``, by
    default its ``decode.rnnt_beam``), in words."""
    if cfg.model.loss == "ctc":
        return "greedy CTC"
    beam = cfg.decode.rnnt_beam if beam is None else beam
    if beam == 0:
        return f"greedy transducer (at most {MAX_SYMBOLS_PER_FRAME} units per frame)"
    return f"transducer modified beam search (beam {beam}, at most one unit per frame)"


def evaluate_run(run: str | Path, data: str | Path, splits: Sequence[str] = ("test",), device: str = "cpu", *,
                 lm: str | None = None, lm_weight: float | None = None, word_score: float | None = None,
                 lm_weights: Sequence[float] = (), word_scores: Sequence[float] = (), beam_size: int = 50,
                 max_duration: float = 120.0, rnnt_beam: int | None = None) -> dict:
    """Score a trained model (a run directory's best.pt, or a model file) on ``splits`` of ``data``.

    Every split is decoded greedily (a transducer: by its beam search, with ``rnnt_beam`` hypotheses, by
    default its config's ``decode.rnnt_beam``; 0: greedily); its hypotheses go to ``eval/<split>.hyp.txt``
    beside the model.
    With ``lm`` (an ARPA file; CTC models only) each split is also decoded by the lexicon beam search
    (``eval/<split>.lm.hyp.txt``): at ``lm_weight`` and ``word_score`` when both are given, else at the
    pair of the ``lm_weights`` × ``word_scores`` grid with the lowest WER on the first split (which must
    be dev: the grid is searched there, kept in its result, and the choice applied to the others once).

    Returns ``{split: {wer, cer, num_utterances, num_words, num_chars, groups, loss, decoding[, lm]}}``, where
    ``decoding`` names the decoding without the LM (``decoding_name``) and
    ``lm`` holds the beam search's scores with its ``lm_weight`` and ``word_score``.
    """
    from bljust.data.manifests import load_split
    from bljust.inference import load_trained

    if not splits:
        raise ValueError("evaluate_run needs at least one split")
    fixed = lm_weight is not None and word_score is not None
    if lm and not fixed and splits[0] != "dev":
        raise ValueError("the LM weight and word score are chosen on dev: list 'dev' first, or give both")
    run = Path(run)
    out_dir = (run if run.is_dir() else run.parent) / "eval"
    model, tokenizer, cfg = load_trained(run, device)
    if lm:
        check_lm_decodable(cfg, run)
    beam = cfg.decode.rnnt_beam if rnnt_beam is None else rnnt_beam  # a CTC model ignores it
    decoder = None
    if lm:
        from bljust.lm import WordDecoder

        decoder = WordDecoder(tokenizer, lm, beam_size=beam_size)
    out, chosen = {}, None
    for split in splits:
        cuts = load_split(data, split).to_eager()
        d = decode_cuts(model, tokenizer, cuts, torch.device(device), max_duration=max_duration,
                        keep_emissions=decoder is not None, amp=cfg.train.amp, beam=beam)
        write_hypotheses(out_dir / f"{split}.hyp.txt", d)
        out[split] = {**scores_with_groups(d, cuts), "loss": d["loss"], "skipped_audio": d["skipped_audio"],
                      "decoding": decoding_name(cfg, beam)}
        if decoder is None:
            continue
        if chosen is None:
            chosen = ({"lm_weight": lm_weight, "word_score": word_score} if fixed
                      else tune_lm(decoder, d, list(lm_weights), list(word_scores)))
        dl = lm_decode(decoder, d, chosen["lm_weight"], chosen["word_score"])
        del d, dl["emissions"]  # one split's posteriors at a time
        write_hypotheses(out_dir / f"{split}.lm.hyp.txt", dl)
        out[split]["lm"] = {**scores_with_groups(dl, cuts), "lm_weight": chosen["lm_weight"],
                            "word_score": chosen["word_score"]}
        if "grid" in chosen and split == splits[0]:
            out[split]["lm"]["grid"] = chosen["grid"]
    return out
