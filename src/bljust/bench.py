"""``bljust bench``: the cost of one training step of each kind, measured side by side.

Steps are timed interleaved (supervised, SSL, joint, supervised, ...) on the same model and
fixed batches, so machine load affects every kind alike; the report gives medians and the
ratio that matters for BL-JUST: joint step / (supervised step + SSL step).
"""

from __future__ import annotations

import statistics
import time

import torch

from bljust.config import Config, load_config
from bljust.methods.common import ctc_objective, joint_gradients
from bljust.models import count_parameters
from bljust.models.asr import CTCModel
from bljust.training import Dist, build_optimizer


def _batch(seconds: float, utt_seconds: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, int(seconds // utt_seconds))
    frames = int(utt_seconds * 100)
    return torch.randn(n, frames, 80, generator=gen), torch.full((n,), frames)


def step_costs(cfg: Config, repeats: int = 10, batch_seconds: float = 60.0, utt_seconds: float = 5.0) -> dict:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = CTCModel(cfg, 30, ssl=True)
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    theta, phi, eta = (g["params"] for g in model.param_groups(cfg.optim.lr))
    gen = torch.Generator().manual_seed(0)
    lab, unl = _batch(batch_seconds, utt_seconds, gen), _batch(batch_seconds, utt_seconds, gen)
    targets = [list(torch.randint(2, 29, (int(utt_seconds * 12),), generator=gen).tolist()) for _ in range(len(lab[0]))]
    dist = Dist()

    def f():
        return ctc_objective(model, *lab, targets, dist, device, amp=False)

    def g():
        s, c, _ = model.ssl(model.encoder, *unl, torch.Generator().manual_seed(1))
        return s / c

    def supervised():
        f().backward()

    def ssl():
        g().backward()

    def joint():
        joint_gradients(f(), g(), theta, phi, eta, weight=0.5, eta_weight=1.0)

    kinds = {"supervised": supervised, "ssl": ssl, "joint": joint}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(repeats + 1):
        for name, fn in kinds.items():
            start = time.perf_counter()
            fn()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:  # the first round warms up allocators and kernels
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"parameters": count_parameters(model), "batch_seconds": len(lab[0]) * utt_seconds,
            "threads": torch.get_num_threads(), "repeats": repeats,
            "median_seconds": med, "audio_s_per_s": {k: len(lab[0]) * utt_seconds / v for k, v in med.items()},
            "joint_over_sum": med["joint"] / (med["supervised"] + med["ssl"]), "ssl_loss": cfg.ssl.loss}


def main(config: str | None, overrides: list[str], repeats: int) -> str:
    cfg = load_config(config, overrides)
    r = step_costs(cfg, repeats=repeats)
    lines = [f"model: {cfg.model.arch} d{cfg.model.d_model}×{cfg.model.num_layers}, {r['parameters'] / 1e6:.2f} M "
             f"parameters (incl. the {r['ssl_loss']} head); batch {r['batch_seconds']:.0f} s of audio; "
             f"{r['threads']} thread(s); median of {r['repeats']} interleaved repeats",
             "| step | seconds | audio-s per s |", "|---|---|---|"]
    for k in ("supervised", "ssl", "joint"):
        lines.append(f"| {k} | {r['median_seconds'][k]:.3f} | {r['audio_s_per_s'][k]:.0f} |")
    lines.append(f"joint step / (supervised step + SSL step) = {r['joint_over_sum']:.3f}")
    return "\n".join(lines)
