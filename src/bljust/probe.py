"""``bljust probe``: whether an encoder learned anything a linear read-out can turn into text.

The probe freezes a run's encoder, trains a fresh linear CTC head (encoder width → the run's units)
on the corpus's ``labeled`` split for a fixed number of steps, and decodes dev greedily. Every
encoder gets the same head, steps, batches, learning rate and seed, so the dev CER compares what
the encoders hold, whatever schedule, head and budget trained them. ``random_init`` probes the same
architecture with random weights: the floor every trained encoder is measured against.

It is cheap and deterministic: the frozen encoder runs once over the labeled split and over dev, in
eval mode (no dropout, no SpecAugment); its outputs are kept in memory and the head trains on them,
so a step costs a linear layer and a CTC loss, not an encoder pass.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from lhotse import CutSet
from torch import nn

from bljust.checkpoint import UnsafeFileError, load
from bljust.config import ConfigError, config_from_dict
from bljust.data.audio import SkippedAudio
from bljust.data.loader import eval_batches, filter_cuts
from bljust.data.manifests import cut_text, load_split
from bljust.data.tokenizer import tokenizer_from_state
from bljust.decode import greedy_ctc
from bljust.evaluate import error_rates
from bljust.inference import model_path
from bljust.models.asr import ASRModel, ctc_loss_sum
from bljust.engine.precision import autocast

PROBE_SPLIT = "labeled"
"""The split every probe head trains on, whatever the run trained on (the topline's extra transcripts
included), so that every encoder is read out from the same data."""


@dataclass
class ProbeConfig:
    """The probe's settings (``bljust probe`` sets a few from the command line; ``bljust compare`` uses these
    defaults for every encoder)."""

    steps: int = 300
    """Optimiser steps of the linear head."""
    batch_utterances: int = 16
    """Cached utterances per step, in a seeded order (a fresh permutation for every pass over the cache)."""
    lr: float = 0.01
    """AdamW learning rate of the head, constant: the probe has no schedule of its own to tune per encoder."""
    weight_decay: float = 0.0
    """AdamW weight decay of the head."""
    seed: int = 0
    """Seeds the head's initial weights, the batch order, the cap's choice of utterances and, with
    ``random_init``, the encoder's weights."""
    layer: int = -1
    """Encoder block whose output the head reads (0-based, negative from the end; -1: the final output,
    the one the run's own CTC head reads)."""
    random_init: bool = False
    """Probe the run's architecture with randomly initialised weights instead of its trained ones (its
    feature normalisation statistics are kept: they are measured on the data, not learned)."""
    max_train_utterances: int = 4000
    """Cap on the labeled utterances encoded and trained on (a seeded choice); bounds the cache's memory
    on large labeled sets, where the head sees at most steps × batch_utterances utterances anyway."""
    max_duration: float = 120.0
    """Seconds of audio per batch while the encoder runs over a split."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_utterances", "max_train_utterances"):
            if getattr(self, name) < 1:
                raise ConfigError(f"probe {name} must be at least 1, not {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_duration <= 0:
            raise ConfigError("probe lr and max_duration must be > 0 and weight_decay >= 0")


@dataclass
class Cached:
    """One utterance's frozen encoder output."""

    cut_id: str
    hidden: torch.Tensor
    """(T', encoder width), the encoder's dtype (bf16 under autocast)."""
    text: str | None


def load_encoder(run_or_file: str | Path, device: torch.device, *, random_init: bool = False,
                 seed: int = 0) -> tuple[ASRModel, object, object, Path, dict]:
    """The model of a run (its best.pt, else its newest checkpoint, or a model file), its tokenizer, its
    config, the file read and the file's other entries (method, step). With ``random_init`` the same
    architecture with weights drawn from ``seed``, keeping the run's feature normalisation statistics.

    Raises ValueError naming the file when it is not a bljust run's model (UnsafeFileError when it would
    run code)."""
    path = model_path(run_or_file)
    try:
        state = load(path)
    except UnsafeFileError:
        raise
    except RuntimeError as e:  # unreadable: the message names the file and the reason
        raise ValueError(str(e)) from e
    missing = [k for k in ("model", "config", "tokenizer") if k not in state] if isinstance(state, dict) else None
    if missing is None or missing:
        raise ValueError(f"{path} is not a bljust model file: it lacks "
                         f"{', '.join(missing) if missing else 'the model, config and tokenizer entries'} "
                         f"(give a run directory, its best.pt or one of its checkpoints/step-*.pt)")
    cfg = config_from_dict(state["config"])
    tokenizer = tokenizer_from_state(state["tokenizer"])
    weights = {k: v for k, v in state["model"].items() if not k.startswith("ssl.")}
    with torch.random.fork_rng(devices=[]):  # the weights drawn here must not depend on, or move, the caller's RNG
        torch.manual_seed(seed)
        model = ASRModel(cfg, tokenizer.vocab_size)
    try:
        if random_init:
            model.frontend.load_state_dict({k.removeprefix("frontend."): v for k, v in weights.items()
                                            if k.startswith("frontend.")})
        else:
            model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: its weights do not fit the model its config describes ({e})") from e
    model.requires_grad_(False)
    return model.to(device).eval(), tokenizer, cfg, path, {k: state.get(k) for k in ("method", "step")}


@torch.no_grad()
def encode(model: ASRModel, cuts, device: torch.device, *, layer: int, amp: bool, max_duration: float,
           skipped: SkippedAudio) -> list[Cached]:
    """Run the frozen encoder once over ``cuts`` (eval mode, no augmentation); bad audio goes to ``skipped``."""
    out = []
    for batch in eval_batches(cuts, max_duration, skipped=skipped):
        if not batch["ids"]:
            continue
        feats, lens = model.frontend.from_batch(batch, device)
        with autocast(device, amp):
            hidden, hidden_lens = model.encoder(feats, lens, layer=layer)
        for b, (cid, text) in enumerate(zip(batch["ids"], batch["texts"])):
            # a copy, not a view: a view would keep the whole padded batch alive in the cache
            out.append(Cached(cid, hidden[b, :int(hidden_lens[b])].clone(), text))
    return out


def _padded(items: list[Cached]) -> tuple[torch.Tensor, torch.Tensor]:
    x = nn.utils.rnn.pad_sequence([c.hidden for c in items], batch_first=True).float()
    return x, torch.tensor([c.hidden.shape[0] for c in items], device=x.device)


@torch.no_grad()
def _mean_loss(head: nn.Linear, items: list[Cached], targets: list[list[int]], chunk: int = 64) -> float:
    """CTC loss per target token of ``head`` over all of ``items``."""
    total = 0.0
    for i in range(0, len(items), chunk):
        x, lens = _padded(items[i:i + chunk])
        total += float(ctc_loss_sum(F.log_softmax(head(x), dim=-1), lens, targets[i:i + chunk]))
    return total / sum(len(t) for t in targets)


@torch.no_grad()
def _decode(head: nn.Linear, items: list[Cached], tokenizer, chunk: int = 64) -> list[str]:
    hyps = []
    for i in range(0, len(items), chunk):
        x, lens = _padded(items[i:i + chunk])
        hyps += [tokenizer.decode(s) for s in greedy_ctc(F.log_softmax(head(x), dim=-1), lens)[0]]
    return hyps


def new_head(width: int, vocab_size: int, seed: int, device: torch.device) -> nn.Linear:
    """The probe's linear CTC head, its initial weights drawn from ``seed`` alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Linear(width, vocab_size).to(device)


def train_head(head: nn.Linear, items: list[Cached], targets: list[list[int]], cfg: ProbeConfig) -> list[float]:
    """Train ``head`` on cached encoder outputs for ``cfg.steps`` steps; returns its loss per token at every step."""
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    queue: list[int] = []
    size = min(cfg.batch_utterances, len(items))
    losses = []
    for _ in range(cfg.steps):
        if len(queue) < size:
            queue += torch.randperm(len(items), generator=order).tolist()
        idx, queue = queue[:size], queue[size:]
        x, lens = _padded([items[i] for i in idx])
        batch_targets = [targets[i] for i in idx]
        loss = ctc_loss_sum(F.log_softmax(head(x), dim=-1), lens, batch_targets) / sum(map(len, batch_targets))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def probe_run(run_or_file: str | Path, data: str | Path, cfg: ProbeConfig | None = None,
              device: str | torch.device = "cpu") -> dict:
    """Probe a run's encoder (see the module's docstring); returns the result that ``bljust probe`` writes.

    ``dev``: greedy WER and CER of the probe head on dev; ``train``: its CTC loss per token over all the
    cached labeled utterances before (``loss_start``) and after training (``loss_end``)."""
    cfg = cfg or ProbeConfig()
    device = torch.device(device)
    started = time.time()
    model, tokenizer, run_cfg, path, info = load_encoder(run_or_file, device, random_init=cfg.random_init,
                                                         seed=cfg.seed)
    d = run_cfg.data
    skipped = SkippedAudio()
    # Only utterances CTC can align (a transcript in the run's units, enough encoder frames): an
    # infeasible one has an infinite loss.
    labeled, report = filter_cuts(load_split(data, PROBE_SPLIT), PROBE_SPLIT, min_seconds=d.min_utterance_seconds,
                                  max_seconds=min(d.max_utterance_seconds, cfg.max_duration), tokenizer=tokenizer,
                                  output_frames=model.output_frames, skipped=skipped)
    if len(labeled) > cfg.max_train_utterances:
        labeled = CutSet.from_cuts(random.Random(cfg.seed).sample(list(labeled), cfg.max_train_utterances))
    dev = load_split(data, "dev").filter(lambda c: bool(cut_text(c))).to_eager()
    if len(dev) == 0:
        raise ValueError(f"{data}: the dev split has no transcribed utterance to score the probe on")
    kw = {"layer": cfg.layer, "amp": run_cfg.train.amp, "max_duration": cfg.max_duration, "skipped": skipped}
    train_items, dev_items = encode(model, labeled, device, **kw), encode(model, dev, device, **kw)
    if not train_items:
        raise ValueError(f"{data}: no labeled utterance could be loaded for the probe (skipped audio: "
                         f"{skipped.counts()})")
    encoded = time.time()
    targets = [tokenizer.encode(c.text) for c in train_items]
    seconds = {c.id: c.duration for c in labeled}
    width = train_items[0].hidden.shape[-1]
    head = new_head(width, tokenizer.vocab_size, cfg.seed, device)
    loss_start = _mean_loss(head, train_items, targets)
    train_head(head, train_items, targets, cfg)
    loss_end = _mean_loss(head, train_items, targets)
    trained = time.time()
    rates = error_rates([c.text for c in dev_items], _decode(head, dev_items, tokenizer))
    return {
        "model": str(path), "method": info["method"], "step": info["step"], "data": str(data),
        "encoder": "random init" if cfg.random_init else "trained", "arch": run_cfg.model.arch,
        "encoder_width": width, "vocab_size": tokenizer.vocab_size, "settings": dataclasses.asdict(cfg),
        "dev": {"cer": rates["cer"], "wer": rates["wer"], "num_utterances": rates["num_utterances"],
                "num_chars": rates["num_chars"]},
        "train": {"split": PROBE_SPLIT, "utterances": len(train_items),
                  "hours": sum(seconds[c.cut_id] for c in train_items) / 3600,
                  "dropped_utterances": len(report.dropped), "loss_start": loss_start, "loss_end": loss_end},
        "skipped_audio": skipped.counts(),
        "seconds": {"encode": encoded - started, "train": trained - encoded, "total": time.time() - started},
    }


def default_output(run_or_file: str | Path, cfg: ProbeConfig) -> Path:
    """``eval/probe[-random-init][-layerL].json`` beside the model, where ``bljust evaluate`` writes its JSON."""
    run = Path(run_or_file)
    name = "probe" + ("-random-init" if cfg.random_init else "") + (f"-layer{cfg.layer}" if cfg.layer != -1 else "")
    return (run if run.is_dir() else run.parent) / "eval" / f"{name}.json"


def summary_line(result: dict) -> str:
    s = result["settings"]
    return (f"probe {result['model']} ({result['encoder']} encoder, layer {s['layer']}): dev CER "
            f"{100 * result['dev']['cer']:.2f}%  WER {100 * result['dev']['wer']:.2f}%  "
            f"({result['dev']['num_utterances']} utterances; linear CTC head, {s['steps']} steps on "
            f"{result['train']['utterances']} labeled utterances, train loss {result['train']['loss_start']:.3f} → "
            f"{result['train']['loss_end']:.3f}; {result['seconds']['total']:.1f} s)")
