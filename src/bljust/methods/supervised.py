"""Supervised-only CTC training on the labeled split: the baseline every method builds on.

``train`` owns its loop and reads top to bottom: processes and devices, data, tokenizer,
model, optimiser, resume, then steps with validation and checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP

from bljust.checkpoint import CheckpointManager, atomic_save, rng_state, set_rng_state
from bljust.config import Config, to_dict
from bljust.data.loader import BatchStream, eval_batches, filter_cuts
from bljust.data.manifests import cut_text, load_split
from bljust.data.tokenizer import Tokenizer, tokenizer_from_state, train_tokenizer
from bljust.evaluate import decode_cuts, score
from bljust.models import count_parameters
from bljust.models.asr import CTCModel, ctc_loss_sum
from bljust.training import (
    Dist, MetricsLogger, all_reduce_sum, any_rank, autocast, barrier, build_optimizer, build_scheduler,
    cleanup_distributed, guarded_step, make_features, pick_device, progress_bar, seed_everything,
    setup_distributed, setup_run_dir, step_generator,
)

log = logging.getLogger("bljust.train")

# Test hook: exit abruptly right after this step, as a killed process would.
FAULT_ENV = "BLJUST_FAULT_AFTER_STEP"


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path, resume: bool = False) -> dict:
    """Train a CTC model on ``data_dir``'s labeled split, validating on dev; returns the run summary."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    dist = setup_distributed(cfg.train.device)
    device = pick_device(cfg.train.device, dist)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    ckpts = CheckpointManager(run_dir, cfg.train.keep_last)
    state = ckpts.load_latest() if resume else None
    if resume and state is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
    log_handler = setup_run_dir(run_dir, cfg, dist, resume=state is not None)
    try:
        return _train(cfg, data_dir, run_dir, dist, device, ckpts, state)
    finally:
        if log_handler is not None:
            logging.getLogger("bljust").removeHandler(log_handler)
            log_handler.close()
        cleanup_distributed(dist)


def _train(cfg: Config, data_dir: Path, run_dir: Path, dist: Dist, device: torch.device,
           ckpts: CheckpointManager, state: dict | None) -> dict:
    seed_everything(cfg.train.seed)

    # Data and units. The tokenizer comes from the checkpoint on resume: retraining
    # SentencePiece could renumber the units under the trained head.
    labeled, dev = load_split(data_dir, "labeled"), load_split(data_dir, "dev")
    if state is not None:
        tokenizer = tokenizer_from_state(state["tokenizer"])
    else:
        tokenizer = train_tokenizer(cfg.tokenizer, [t for c in labeled if (t := cut_text(c))])
    model = CTCModel(cfg, tokenizer.vocab_size).to(device)
    labeled, _ = filter_cuts(labeled, "labeled", min_seconds=cfg.data.min_utterance_seconds,
                             max_seconds=min(cfg.data.max_utterance_seconds, cfg.data.max_duration), tokenizer=tokenizer,
                             output_frames=model.output_frames)
    dev = dev.filter(lambda c: bool(cut_text(c))).to_eager()
    if cfg.features.normalize == "global" and state is None:
        model.frontend.set_global_stats(b for b, _ in zip(
            ((x["wav"], x["wav_lens"]) for x in eval_batches(labeled.subset(first=min(len(labeled), 500)), 120.0)),
            range(10_000)))

    optimizer = build_optimizer([{"params": list(model.parameters()), "name": "all"}], cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps)
    stream = BatchStream(labeled, "labeled", max_duration=cfg.data.max_duration, num_buckets=cfg.data.num_buckets,
                         seed=cfg.train.seed, world_size=dist.world_size, rank=dist.rank,
                         num_workers=cfg.data.num_workers, buffer_size=cfg.data.buffer_size)
    counters = {"step": 0, "best": math.inf, "best_step": 0, "bad_steps": 0, "audio_seconds": 0.0,
                "elapsed": 0.0, "failed_audio": 0}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["streams"]["labeled"])
        set_rng_state(state["rng"][dist.rank])
        counters.update(state["counters"])
        log.info("resumed from step %d (epoch %d)", counters["step"], stream.epoch)
    ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if dist.enabled else model

    n_params = count_parameters(model)
    if dist.is_main:
        log.info("model: %s, %.2f M parameters; labeled: %d utterances, %.2f h; dev: %d utterances; "
                 "%d process(es), %.0f s of audio per step and process",
                 cfg.model.arch, n_params / 1e6, len(labeled), sum(c.duration for c in labeled) / 3600,
                 len(dev), dist.world_size, cfg.data.max_duration)
    metrics = MetricsLogger(run_dir, dist.is_main, resume_step=counters["step"])

    def checkpoint() -> None:
        rngs = [None] * dist.world_size
        if dist.enabled:
            torch_dist.all_gather_object(rngs, rng_state())
        else:
            rngs = [rng_state()]
        if dist.is_main:
            ckpts.save(counters["step"], {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "streams": {"labeled": stream.state_dict()},
                "rng": rngs, "counters": dict(counters), "config": to_dict(cfg),
                "tokenizer": tokenizer.state_dict(), "method": "supervised"})
        barrier(dist)

    def validate() -> None:
        if dist.is_main:
            result = score(decode_cuts(model, tokenizer, dev, device, max_duration=cfg.data.max_duration * 2))
            value = result[cfg.train.best_metric]
            metrics.log(counters["step"], "dev", {k: result[k] for k in ("loss", "wer", "cer")})
            log.info("step %d dev: loss %.3f WER %.2f%% CER %.2f%%", counters["step"], result["loss"],
                     100 * result["wer"], 100 * result["cer"])
            if value < counters["best"]:
                counters["best"], counters["best_step"] = value, counters["step"]
                save_model(run_dir / "best.pt", model, cfg, tokenizer, counters["step"], result)
        best = torch.tensor([counters["best"], counters["best_step"]], dtype=torch.float64, device=device)
        if dist.enabled:  # every rank carries the same counters into its checkpoint state
            torch_dist.broadcast(best, 0)
        counters["best"], counters["best_step"] = float(best[0]), int(best[1])

    bar = progress_bar(cfg.train.max_steps, counters["step"], dist.is_main, "supervised")
    fault_step = int(os.environ.get(FAULT_ENV, "0"))
    window_seconds, window_start = 0.0, time.time()
    model.train()
    while counters["step"] < cfg.train.max_steps:
        step_start = time.time()
        batch = next(stream)
        counters["failed_audio"] += len(batch["failed"])
        if any_rank(not batch["ids"], dist, device):  # every file of a batch failed to load
            continue
        feats, lens = make_features(model, batch, device, train=True, cfg=cfg,
                                    generator=step_generator(cfg.train.seed, counters["step"], dist.rank))
        targets = [tokenizer.encode(t) for t in batch["texts"]]
        loss = ctc_objective(ddp_model, feats, lens, targets, dist, device, cfg.train.amp)
        loss_ok = bool(torch.isfinite(loss))
        loss.backward()
        ok, grad_norm = guarded_step(list(model.parameters()), optimizer, scheduler, cfg.optim.clip_grad_norm,
                                     loss_ok, dist, device)
        counters["step"] += 1
        counters["elapsed"] += time.time() - step_start
        counters["audio_seconds"] += batch["seconds"]
        window_seconds += batch["seconds"]
        if not ok:
            counters["bad_steps"] += 1
            log.warning("step %d skipped: non-finite loss or gradient (batch %s)", counters["step"],
                        ", ".join(batch["ids"][:5]))
            if counters["bad_steps"] > cfg.train.max_bad_steps:
                raise RuntimeError(f"more than {cfg.train.max_bad_steps} non-finite steps; the data or the "
                                   f"learning rate is broken (see {run_dir / 'train.log'})")
        step = counters["step"]
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
            audio = all_reduce_sum(window_seconds, dist, device)
            speed = audio / max(time.time() - window_start, 1e-9)
            window_seconds, window_start = 0.0, time.time()
            loss_value = float(loss.detach()) / dist.world_size if loss_ok else float("nan")
            metrics.log(step, "train", {"loss": loss_value, "lr": scheduler.get_last_lr()[0],
                                        "grad_norm": grad_norm, "audio_s_per_s": speed, "epoch": stream.epoch,
                                        "bad_steps": counters["bad_steps"]})
            bar.set_postfix(loss=f"{loss_value:.3f}", audio_s_per_s=f"{speed:.0f}", epoch=stream.epoch)
        validated = step % cfg.train.valid_every == 0 or step == cfg.train.max_steps
        if validated:
            validate()
        if validated or step % cfg.train.checkpoint_every == 0:
            checkpoint()
        if fault_step and step == fault_step:
            os._exit(17)
    bar.close()

    summary = {"method": "supervised", "steps": counters["step"], "best_step": counters["best_step"],
               f"best_dev_{cfg.train.best_metric}": counters["best"], "bad_steps": counters["bad_steps"],
               "failed_audio": counters["failed_audio"], "parameters": n_params,
               "train_seconds": counters["elapsed"],
               "audio_hours_processed": counters["audio_seconds"] * dist.world_size / 3600,
               "labeled_passes": counters["audio_seconds"] * dist.world_size / sum(c.duration for c in labeled)}
    if dist.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("done: %s", summary)
    metrics.close()
    return summary


def ctc_objective(ddp_model, feats, lens, targets: list[list[int]], dist: Dist, device: torch.device,
                  amp: bool) -> torch.Tensor:
    """f: CTC loss per target token of the global batch, scaled for DDP's gradient averaging.

    Normalising by the token count of all processes makes N processes take the same step as
    one process on the union of their batches, whatever each process's share.
    """
    tokens = all_reduce_sum(float(sum(len(t) for t in targets)), dist, device)
    with autocast(device, amp):
        log_probs, out_lens = ddp_model(feats, lens)
    return ctc_loss_sum(log_probs, out_lens, targets) * dist.world_size / tokens


def save_model(path: Path, model: CTCModel, cfg: Config, tokenizer: Tokenizer, step: int, dev: dict) -> None:
    """A self-contained model file for evaluation and transcription (no optimiser state)."""
    atomic_save({"model": model.state_dict(), "config": to_dict(cfg), "tokenizer": tokenizer.state_dict(),
                 "step": step, "dev": {k: dev[k] for k in ("loss", "wer", "cer")}}, path)
