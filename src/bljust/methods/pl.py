"""Iterative pseudo-labeling: a seed model trained on the labeled split transcribes the
unlabeled split (greedily, or with the word LM's beam search, as Kahn et al. 2020 do); the most
confident hypotheses of plausible length join the labeled data, and training continues on the
union; R rounds, each re-labeling with the latest model; the learning rate restarts each round, or follows
one schedule over the run (``pl.lr_schedule``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import CutSet
from lhotse.utils import fastcopy

from bljust.config import Config, PLConfig
from bljust.data.manifests import cut_text, has_split, load_split
from bljust.engine.dist import barrier, broadcast, gather
from bljust.engine.optim import lr_factor
from bljust.engine.run import Run
from bljust.evaluate import error_rates, lm_decode, tune_lm
from bljust.lm import WordDecoder

log = logging.getLogger("bljust.train")


@dataclass
class PLState:
    pseudo_labels: dict = field(default_factory=dict)
    """Each round's pseudo-label statistics (kept, hours, label error rates), by round name."""


def select_pseudo_labels(cuts: CutSet, decoded: dict, cfg: PLConfig) -> tuple[CutSet, dict]:
    """Keep hypotheses with a plausible length, then the top ``keep_fraction`` of all by confidence."""
    conf, hyps = decoded["confidence"], decoded["hyps"]
    by_id = {c.id: c for c in cuts}
    plausible = [cid for cid, h in hyps.items()
                 if h and cfg.min_chars_per_second <= len(h) / by_id[cid].duration <= cfg.max_chars_per_second]
    n_keep = int(round(cfg.keep_fraction * len(hyps)))
    kept = sorted(plausible, key=lambda cid: conf[cid], reverse=True)[:n_keep]
    out = []
    for cid in sorted(kept):
        cut = by_id[cid]
        sup = fastcopy(cut.supervisions[0], text=hyps[cid])
        out.append(fastcopy(cut, supervisions=[sup]))
    stats = {"decoded": len(hyps), "plausible_length": len(plausible), "kept": len(out),
             "kept_hours": sum(c.duration for c in out) / 3600,
             "mean_confidence_kept": sum(conf[c] for c in kept) / max(len(kept), 1)}
    return CutSet.from_cuts(out), stats


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    if cfg.data.lazy:
        raise ValueError("pl decodes the whole unlabeled split and holds its pseudo-labels every round, so it cannot "
                         "read it lazily: data.lazy is for supervised, ptft, just and bljust")
    run = Run(cfg, data_dir, run_dir, method="pl", resume=resume, state=PLState)
    try:
        p, o, total = cfg.pl, cfg.optim, cfg.train.max_steps
        seed_steps = round(p.seed_fraction * total)
        per_round = (total - seed_steps) // p.rounds
        # stage 0 trains the seed model; stage r = 1..R trains on labeled + round-r pseudo-labels
        starts = [0, *(seed_steps + r * per_round for r in range(p.rounds))] + [total]
        unlabeled = run.load_unlabeled()
        run.add_stream("labeled", run.labeled)
        if p.decode == "lm" and not Path(cfg.decode.lm).is_file():
            raise FileNotFoundError(f"pl.decode=lm needs decode.lm to name an ARPA file (bljust lm); got "
                                    f"{cfg.decode.lm!r}")
        for r in range(1, p.rounds + 1):  # streams of rounds already under way (resume)
            if f"round{r}" in (run.ckpt or {}).get("streams", {}):
                run.add_stream(f"round{r}", run.labeled + _round_cuts(run, r), seed_offset=r)
        run.log_plan(f"seed model {seed_steps} steps on labeled data, then {p.rounds} round(s) of {per_round} steps "
                     f"on labeled + pseudo-labeled data (keep top {p.keep_fraction:.0%} by confidence; "
                     f"{'LM beam search' if p.decode == 'lm' else 'greedy'} labels; "
                     + ("one learning-rate schedule over the run)" if p.lr_schedule == "global" else
                        f"the schedule restarts each round, warm-up {p.round_warmup_steps} steps)"))
        run.start(total)
        run.model.train()
        while run.counters.step < total:
            step = run.counters.step
            stage = max(s for s in range(len(starts) - 1) if starts[s] <= step)
            name = "labeled" if stage == 0 else f"round{stage}"
            if name not in run.streams:
                run.close_streams()  # the previous stage's stream is never read again
                run.add_stream(name, run.labeled + pseudo_label(run, unlabeled, stage), seed_offset=stage)
            started = time.time()
            batches = run.next_batches(name)
            if batches is None:
                continue
            f = run.f_backward(batches)
            if p.lr_schedule == "global":
                lr = o.lr * lr_factor(step, total, o.warmup_steps, o.schedule, o.min_lr_ratio)
            else:
                span = starts[stage + 1] - starts[stage]
                lr = o.lr * lr_factor(step - starts[stage], span,
                                      o.warmup_steps if stage == 0 else p.round_warmup_steps, o.schedule, o.min_lr_ratio)
            _, norms = run.step(math.isfinite(f), {"theta": lr, "phi": lr})
            run.after_step({"f": f, "lr": lr, **norms, "round": stage},
                           phase="seed" if stage == 0 else f"round{stage}", started=started)
        return run.finish({"rounds": p.rounds, "seed_steps": seed_steps, "round_steps": per_round,
                           "pseudo_labels": run.method_state.pseudo_labels})
    finally:
        run.close()


def pseudo_label(run: Run, unlabeled: CutSet, stage: int) -> CutSet:
    """Decode the unlabeled split with the current model (sharded over the processes), filter and save the
    manifest (rank 0)."""
    path = run.run_dir / "pseudo" / f"round{stage}_cuts.jsonl.gz"
    decoded = transcribe_unlabeled(run, unlabeled)
    if run.dist.is_main:
        cuts, stats = select_pseudo_labels(unlabeled, decoded, run.cfg.pl)
        stats.update(label_errors(run.data_dir, unlabeled, decoded["hyps"], cuts))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.jsonl.gz")
        cuts.to_file(tmp)
        tmp.replace(path)
        stats.update({k: decoded[k] for k in ("lm_weight", "word_score") if k in decoded})
        run.method_state.pseudo_labels[f"round{stage}"] = stats
        run.metrics.log(run.counters.step, "pseudo_labels", {"round": stage, **stats})
        log.info("round %d pseudo-labels: %s", stage, stats)
    barrier(run.dist)
    return _round_cuts(run, stage)


def label_errors(data_dir: Path, unlabeled: CutSet, hyps: dict[str, str], kept: CutSet) -> dict:
    """The pseudo-labels' WER and CER (``hyps``: of ``unlabeled``'s cuts), of all decoded utterances and of
    those kept, when the data directory also holds the unlabeled audio's transcripts (the ``unlabeled_text``
    split the topline trains on); a diagnostic only: training never reads them."""
    if not has_split(data_dir, "unlabeled_text"):
        return {}
    truth = {c.recording_id: cut_text(c) for c in load_split(data_dir, "unlabeled_text")}
    by_recording = {c.id: c.recording_id for c in unlabeled}

    def rates(ids) -> dict:
        pairs = [(truth.get(by_recording.get(cid)), hyps[cid]) for cid in ids]
        pairs = [(r, h) for r, h in pairs if r]
        return error_rates(*map(list, zip(*pairs))) if pairs else {}

    every, chosen = rates(hyps), rates(c.id for c in kept)
    return {k: v for k, v in {"label_wer_all": every.get("wer"), "label_cer_all": every.get("cer"),
                              "label_wer_kept": chosen.get("wer"), "label_cer_kept": chosen.get("cer")}.items()
            if v is not None}


def transcribe_unlabeled(run: Run, unlabeled: CutSet, chunk: int = 500) -> dict:
    """Hypotheses and acoustic confidences for the unlabeled split, decoded sharded over the processes and
    gathered on every rank: greedy, or (``pl.decode: lm``) the LM beam search with its weight and word score
    chosen on dev for the current model (by rank 0, from every rank's dev emissions)."""
    cfg = run.cfg

    def decode(cuts, emissions: bool, local: bool = False) -> dict:
        return run.decode(cuts, local=local, with_loss=False, keep_emissions=emissions)

    if cfg.pl.decode == "greedy":
        return decode(unlabeled, False)
    decoder = WordDecoder(run.tokenizer, cfg.decode.lm, beam_size=cfg.decode.beam_size)
    dev = decode(run.dev, True)
    tuned = broadcast(tune_lm(decoder, dev, cfg.decode.lm_weights, cfg.decode.word_scores)
                      if run.dist.is_main else None, run.dist)
    hyps, confidence = {}, {}
    cuts = list(unlabeled)
    for i in range(0, len(cuts), chunk):  # emissions of this process's share of a chunk at a time
        d = decode(CutSet.from_cuts(cuts[i:i + chunk]), True, local=True)
        hyps.update(lm_decode(decoder, d, tuned["lm_weight"], tuned["word_score"])["hyps"])
        confidence.update(d["confidence"])
    out = {"hyps": {}, "confidence": {}, "lm_weight": tuned["lm_weight"], "word_score": tuned["word_score"]}
    for part in gather({"hyps": hyps, "confidence": confidence}, run.dist):
        out["hyps"].update(part["hyps"])
        out["confidence"].update(part["confidence"])
    return out


def _round_cuts(run: Run, stage: int) -> CutSet:
    """Round ``stage``'s saved pseudo-labeled cuts, through the same filter as any labeled data."""
    cuts = CutSet.from_file(run.run_dir / "pseudo" / f"round{stage}_cuts.jsonl.gz")
    cuts = cuts.to_eager() if cuts is not None else CutSet.from_cuts([])  # lhotse reads an empty manifest as None
    if len(cuts) == 0:
        log.warning("round %d: no pseudo-label passed the filters; this round trains on labeled data only", stage)
        return cuts
    return run.filter(cuts, f"round{stage} pseudo-labeled", labeled=True)
