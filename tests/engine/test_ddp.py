"""DDP equivalence: the update 2 processes make on the halves of a global batch equals the update of
one process on the whole batch, for a supervised, an SSL and a BL-JUST joint step (plain, and with
PBGD's step scaling).

Each process runs the training code's own pieces: the model's ``Objectives`` under
``DistributedDataParallel`` (``wrap_ddp``: gradients summed during the backward pass), ``f_objective``
and ``g_objective`` (normalised by counts summed over processes), for a joint step f's backward under
``no_sync`` and then g's inside ``penalised_gradients``, ``clip_groups`` with a clip value that clips, and the
optimiser step.

The SSL loss draws its masks from a generator per process (``step_generator(seed, step, rank, 2)``),
and the contrastive losses draw their negatives from the process's own batch. The global batch's g
is therefore defined by the ranks: each half with its rank's generator (its masks, its negative
pool), ``Σ_r loss_sum_r / Σ_r count_r``. The single-process reference computes exactly that with
``model.ssl`` on each half, then takes the gradient of the whole with plain autograd, so the reference
relies neither on DDP nor on ``penalised_gradients``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp

from bljust.config import load_config
from bljust.engine.dist import Dist, wrap_ddp
from bljust.engine.objectives import Objectives, f_objective, g_objective, penalised_gradients, step_generator
from bljust.engine.optim import build_optimizer, clip_groups
from bljust.models.asr import ASRModel
from tests.conftest import TINY

CPU = torch.device("cpu")
GAMMA = 0.7
PBGD_SCALE = 0.5  # PBGD at γ = 2: θ ← s(∇f + γ∇g), φ ← s∇f, η ← sγ∇g with s = min(1, 1/γ)
CLIP = 0.05  # below every group's gradient norm here (asserted), so clipping acts on every step
STEPPING = {"supervised": ("theta", "phi"), "ssl": ("theta", "eta"), "joint": ("theta", "phi", "eta"),
            "pbgd": ("theta", "phi", "eta")}
# (f scale, θ's weight of ∇g, η's weight of ∇g) of each kind
WEIGHTS = {"supervised": (1.0, 0.0, 0.0), "ssl": (0.0, 1.0, 1.0), "joint": (1.0, GAMMA, 1.0),
           "pbgd": (PBGD_SCALE, PBGD_SCALE * 2.0, PBGD_SCALE * 2.0)}
# (step kind, ssl.loss, optim.name). SGD's update is linear in the gradient, so it shows any error in
# its scale; AdamW, the default, is all but sign(gradient) on a first step, which hides such errors.
CASES = [("supervised", "bestrq", "sgd"), ("supervised", "bestrq", "adamw"),
         ("ssl", "bestrq", "sgd"), ("ssl", "bestrq", "adamw"), ("ssl", "cpc", "sgd"), ("ssl", "wav2vec2", "sgd"),
         ("joint", "bestrq", "sgd"), ("joint", "bestrq", "adamw"), ("joint", "cpc", "sgd"), ("pbgd", "bestrq", "sgd")]
ATOL, RTOL = 2e-6, 1e-5


def _case_id(case) -> str:
    return "-".join(case)


def _model(loss: str, optim: str):
    torch.manual_seed(0)
    # SGD at lr 0.5 moves the parameters by about 1e-3 per element, far above the tolerance.
    lr = 0.5 if optim == "sgd" else 2e-3
    cfg = load_config(TINY, ["model.dropout=0.0", f"ssl.loss={loss}", f"optim.name={optim}", f"optim.lr={lr}",
                             f"optim.clip_grad_norm={CLIP}"])
    return cfg, ASRModel(cfg, 30, ssl=True)


def _batches():
    g = torch.Generator().manual_seed(0)
    lab_lens, unl_lens = torch.tensor([120, 90, 150, 60]), torch.tensor([240, 200, 180, 120])
    lab, unl = torch.randn(4, 150, 80, generator=g), torch.randn(4, 240, 80, generator=g)
    for feats, lens in ((lab, lab_lens), (unl, unl_lens)):
        for i, n in enumerate(lens):
            feats[i, n:] = 0
    # Unequal token counts (and, for g, masked positions) per half: the update must still be the
    # single-process one.
    targets = [[3, 4, 5, 6, 7, 8], [9, 10], [4, 4, 5], [11, 12, 13, 14]]
    return (lab, lab_lens), (unl, unl_lens), targets


def _half(t, rank: int):
    return t[2 * rank:2 * rank + 2]


def _ssl_generator(rank: int) -> torch.Generator:
    return step_generator(0, 0, rank, stream=2)  # what Run.ssl_loss uses at step 0 on this rank


def _groups(opt) -> dict[str, list[torch.Tensor]]:
    return {g["name"]: g["params"] for g in opt.param_groups}


def _finish(model, opt, cfg, kind: str, dist: Dist) -> dict:
    """Run.step: drop idle groups' gradients, clip each stepping group on its own, step."""
    stepping = {n: ps for n, ps in _groups(opt).items() if n in STEPPING[kind]}
    for name, params in _groups(opt).items():
        if name not in stepping:
            for p in params:
                p.grad = None
    norms = {n: float(v) for n, v in clip_groups(stepping, cfg.optim.clip_grad_norm).items()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "norms": norms, "grads": grads}


def _ddp_step(case, rank: int, dist: Dist) -> dict:
    """One training step of one process on its half of the global batch, as the methods take it."""
    kind, loss, optim = case
    cfg, model = _model(loss, optim)
    net = wrap_ddp(Objectives(model), dist, CPU)
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    (lf, ll), (uf, ul), targets = _batches()
    lab = (_half(lf, rank), _half(ll, rank), _half(targets, rank))
    unl = (_half(uf, rank), _half(ul, rank))
    groups = _groups(opt)
    f_scale, theta_weight, eta_weight = WEIGHTS[kind]
    if kind == "supervised":
        f_objective(net, *lab, dist, CPU, amp=False).backward()
    elif kind == "ssl":
        g_objective(net, *unl, _ssl_generator(rank), dist, CPU, amp=False)[0].backward()
    else:  # as BL-JUST's joint step: f's gradient stays local, g's backward sums both
        with net.no_sync():
            (f_scale * f_objective(net, *lab, dist, CPU, amp=False)).backward()
        with penalised_gradients(groups["theta"], groups["eta"], theta_weight=theta_weight, eta_weight=eta_weight,
                                 f_scale=f_scale):
            g_objective(net, *unl, _ssl_generator(rank), dist, CPU, amp=False)[0].backward()
    return _finish(model, opt, cfg, kind, dist)


def _reference_step(case) -> tuple[dict, dict]:
    """One process, the whole batch: θ ← ∇θ(s·f + w_θ·g), φ ← ∇φ s·f, η ← ∇η w_η·g (``WEIGHTS``), by plain
    autograd, then the same clip and optimiser step."""
    kind, loss, optim = case
    cfg, model = _model(loss, optim)
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    (lf, ll), (uf, ul), targets = _batches()
    groups = _groups(opt)
    zero = torch.zeros(())
    f = f_objective(Objectives(model), lf, ll, targets, Dist(), CPU, amp=False) if kind != "ssl" else zero
    g, counts = zero, []
    if kind != "supervised":
        sums = []
        for rank in (0, 1):
            loss_sum, count, _ = model.ssl(model.encoder, _half(uf, rank), _half(ul, rank), _ssl_generator(rank))
            sums.append(loss_sum)
            counts.append(float(count))
        g = (sums[0] + sums[1]) / sum(counts)
    f_scale, theta_weight, eta_weight = WEIGHTS[kind]
    upper = groups["theta"] + groups["phi"]
    for p, d in zip(upper, torch.autograd.grad(f_scale * f + theta_weight * g, upper, allow_unused=True,
                                               retain_graph=True)):
        p.grad = d
    if kind != "supervised":
        for p, d in zip(groups["eta"], torch.autograd.grad(eta_weight * g, groups["eta"], allow_unused=True)):
            p.grad = d
    return _finish(model, opt, cfg, kind, Dist()), {"ssl_counts": counts}


def _skip_step(rank: int) -> list[dict]:
    """Run.skip_step on each rank, as ``Run.step`` calls it when any rank's step is non-finite."""
    from types import SimpleNamespace

    from bljust.engine.run import Counters, Run

    run = SimpleNamespace(counters=Counters(step=6), cfg=load_config(TINY), total_steps=100, dist=Dist(rank, 2, rank),
                          _step_ids=[f"cut-{rank}-a", f"cut-{rank}-b"], bad_batches=[])
    Run.skip_step(run)
    return run.bad_batches


def _ddp_worker(rank: int, init_file: str, out: str):
    import torch.distributed as td

    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    results = {_case_id(case): _ddp_step(case, rank, Dist(rank, 2, rank)) for case in CASES}
    results["skip"] = _skip_step(rank)
    torch.save(results, f"{out}.{rank}")
    td.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    """Every case's step on 2 gloo processes (one spawn for all), per rank."""
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(str(tmp / "init"), str(tmp / "ddp")), nprocs=2, join=True)
    return [torch.load(tmp / f"ddp.{rank}") for rank in (0, 1)]


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_two_process_update_equals_one_process(ddp_results, case):
    ref, info = _reference_step(case)
    kind = case[0]
    if kind != "supervised":  # the halves' counts differ, so normalising by the global count matters
        assert info["ssl_counts"][0] != info["ssl_counts"][1], info
    assert set(ref["norms"]) == set(STEPPING[kind])
    assert all(n > CLIP for n in ref["norms"].values()), ref["norms"]  # clipping acts
    for rank, got in enumerate(ddp_results):
        got = got[_case_id(case)]
        assert set(got["norms"]) == set(ref["norms"]), rank
        for name, n in ref["norms"].items():
            assert got["norms"][name] == pytest.approx(n, rel=RTOL), (rank, name)
        assert set(got["grads"]) == set(ref["grads"]), rank
        for k, v in ref["grads"].items():
            torch.testing.assert_close(got["grads"][k], v, atol=ATOL, rtol=RTOL, msg=f"rank {rank} grad {k}")
        for k, v in ref["state"].items():
            torch.testing.assert_close(got["state"][k], v, atol=ATOL, rtol=RTOL, msg=f"rank {rank} {k}")


def test_the_update_moves_the_parameters_well_above_the_tolerance():
    """Otherwise the equality above would hold for any gradient."""
    for case in CASES:
        if case[2] != "sgd":
            continue
        cfg, before = _model(*case[1:])
        after, _ = _reference_step(case)
        moved = [(after["state"][k] - v).abs().max() for k, v in before.state_dict().items()
                 if k in after["grads"]]
        assert max(moved) > 100 * ATOL, case


def test_a_skipped_step_names_the_batches_of_every_rank(ddp_results):
    expected = [{"step": 7, "ids": ["cut-0-a", "cut-0-b", "cut-1-a", "cut-1-b"]}]
    assert ddp_results[0]["skip"] == expected and ddp_results[1]["skip"] == expected


TORCHRUN = {
    # with two micro-batches per step and an averaged model, which validation decodes
    "bljust": ["train.max_steps=8", "bljust.outer_epochs=1", "bljust.explore_steps=2", "bljust.joint_steps=4",
               "bljust.finetune_steps=2", "train.accum_steps=2", "train.ema_decay=0.5"],
    "pl": ["train.max_steps=6", "pl.rounds=1", "pl.seed_fraction=0.5", "pl.min_chars_per_second=0", "pl.decode=lm",
           "decode.lm_weights=[0.5, 1.0]", "decode.word_scores=[4.0]"],
}


@pytest.mark.parametrize("method", sorted(TORCHRUN))
def test_torchrun_trains_every_step_kind_and_decodes_sharded(method, tiny_corpus, tmp_path):
    """Two processes under torchrun: BL-JUST's exploration, joint (f under no_sync, then g) and fine-tuning
    steps, and PL's LM-decoded pseudo-labels; validation and pseudo-labeling decode a share per process.
    The gathered dev score is one process's on the whole of dev, and PL labels every unlabeled utterance,
    as one process does."""
    import json
    import os
    import subprocess
    import sys

    from bljust.config import load_config
    from bljust.evaluate import evaluate_run
    from bljust.lm import read_text, write_arpa
    from bljust.methods import METHODS
    from tests.conftest import REPO

    arpa = tmp_path / "2gram.arpa"
    write_arpa(read_text(tiny_corpus / "lm_text.txt"), arpa, 2)
    settings = [*TORCHRUN[method], "train.device=cpu", "train.amp=false", "train.valid_every=4",
                "data.max_duration=10", f"decode.lm={arpa}"]
    sets = [a for s in settings for a in ("--set", s)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
                        "-m", "bljust", "train", "--method", method, "--data", str(tiny_corpus), "--out",
                        str(tmp_path / "run"), "--config", str(TINY), *sets],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [x for x in records if x["kind"] == "dev"]
    assert [x["step"] for x in dev if "cer" in x] == [4, 8] if method == "bljust" else [4, 6]
    if method == "bljust":
        assert {x["phase"] for x in records if x["kind"] == "train"} == {"explore", "joint", "finetune"}
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["labeled_batches"] == 2 * (4 + 2) and summary["unlabeled_batches"] == 2 * (2 + 4)
        # best.pt holds the averaged weights of its step, not the trained ones
        best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
        then = torch.load(tmp_path / "run" / "checkpoints" / f"step-{best['step']:07d}.pt", weights_only=True)
        averaged = {k.removeprefix("module."): v for k, v in then["ema"].items() if k.startswith("module.")}
        assert all(torch.equal(v, averaged[k]) for k, v in best["model"].items())
        assert any(not torch.equal(v, then["model"][k]) for k, v in best["model"].items())
        assert all(math.isfinite(x["g_heldout"]) for x in dev)
        assert all("grad_cos" in x for x in records if x["kind"] == "train" and x["phase"] == "joint")
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    whole = evaluate_run(tmp_path / "run", tiny_corpus, splits=("dev",))["dev"]
    # the loss per token of all of dev, gathered (a shard's would differ); a barely trained model's greedy
    # output sits near ties, which other batch shapes can flip, so its CER agrees only closely
    assert best["dev"]["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    assert best["dev"]["cer"] == pytest.approx(whole["cer"], abs=0.02)
    if method == "pl":
        two = json.loads((tmp_path / "run" / "summary.json").read_text())["pseudo_labels"]["round1"]
        one = METHODS["pl"](load_config(TINY, settings), tiny_corpus, tmp_path / "one")["pseudo_labels"]["round1"]
        assert two["decoded"] == one["decoded"] > 0
        assert two["lm_weight"] in (0.5, 1.0)


def _accum_run(model, net, cfg, dist: Dist):
    """The parts of a ``Run`` that ``Run.f_backward`` and ``Run.g_backward`` use, on fixed micro-batches."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from bljust.engine.run import Run

    run = SimpleNamespace(cfg=cfg, dist=dist, device=CPU, net=net,
                          tokenizer=SimpleNamespace(encode=lambda text: [int(x) for x in text.split()]))
    run.features = lambda batch, stream=0, augment=True, micro=0: (batch["feats"], batch["lens"])
    run.no_sync = lambda: net.no_sync() if dist.enabled else nullcontext()
    run._micro = lambda i, n: Run._micro(run, i, n)
    run.backward = lambda loss: loss.backward()
    run._g_loss = lambda batch, micro=0, step_batches=1: g_objective(
        net, batch["feats"], batch["lens"], step_generator(0, 0, dist.rank, 2 + 8 * micro), dist, CPU, amp=False)
    return run


def _micro_batches(rank: int) -> tuple[list[dict], list[dict]]:
    """Rank ``rank``'s two labeled and two unlabeled micro-batches: one utterance each of its half."""
    (lf, ll), (uf, ul), targets = _batches()
    lab = [{"feats": lf[k:k + 1], "lens": ll[k:k + 1], "texts": [" ".join(map(str, targets[k]))]}
           for k in (2 * rank, 2 * rank + 1)]
    unl = [{"feats": uf[k:k + 1], "lens": ul[k:k + 1]} for k in (2 * rank, 2 * rank + 1)]
    return lab, unl


def _accum_worker(rank: int, init_file: str, out: str):
    import torch.distributed as td

    from bljust.engine.run import Run

    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    dist = Dist(rank, 2, rank)
    cfg, model = _model("bestrq", "sgd")
    cfg.train.amp = False  # float32, as the reference
    net = wrap_ddp(Objectives(model), dist, CPU)
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    groups = _groups(opt)
    run = _accum_run(model, net, cfg, dist)
    lab, unl = _micro_batches(rank)
    with run.no_sync():  # BL-JUST's joint step, each stream's step in two micro-batches per process
        f = Run.f_backward(run, lab)
    with penalised_gradients(groups["theta"], groups["eta"], theta_weight=GAMMA, eta_weight=1.0):
        g, _ = Run.g_backward(run, unl)
    result = _finish(model, opt, cfg, "joint", dist)
    torch.save({**result, "f": f, "g": g}, f"{out}.{rank}")
    td.destroy_process_group()


def test_accumulated_joint_step_on_two_processes_equals_one_process_on_the_whole_batch(tmp_path):
    """train.accum_steps=2 on 2 processes: f is per token of all 4 utterances (exact: the step of one batch
    holding them all), g the mean over the 2 micro-steps of each one's g over both processes."""
    mp.spawn(_accum_worker, args=(str(tmp_path / "init"), str(tmp_path / "acc")), nprocs=2, join=True)
    cfg, model = _model("bestrq", "sgd")
    opt = build_optimizer(model.param_groups(cfg.optim.lr), cfg.optim)
    groups = _groups(opt)
    (lf, ll), (uf, ul), targets = _batches()
    f = f_objective(Objectives(model), lf, ll, targets, Dist(), CPU, amp=False)
    g = 0.0
    for micro in (0, 1):  # micro-step i takes utterance 2r + i of each rank r
        sums, counts = [], []
        for rank in (0, 1):
            k = 2 * rank + micro
            s, c, _ = model.ssl(model.encoder, uf[k:k + 1], ul[k:k + 1], step_generator(0, 0, rank, 2 + 8 * micro))
            sums.append(s)
            counts.append(float(c))
        g = g + (sums[0] + sums[1]) / sum(counts) / 2
    upper = groups["theta"] + groups["phi"]
    for p, d in zip(upper, torch.autograd.grad(f + GAMMA * g, upper, allow_unused=True, retain_graph=True)):
        p.grad = d
    for p, d in zip(groups["eta"], torch.autograd.grad(g, groups["eta"], allow_unused=True)):
        p.grad = d
    ref = _finish(model, opt, cfg, "joint", Dist())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"acc.{rank}")
        assert got["f"] == pytest.approx(f.item(), rel=1e-5) and got["g"] == pytest.approx(g.item(), rel=1e-5)
        assert set(got["grads"]) == set(ref["grads"])
        for k, v in ref["grads"].items():
            torch.testing.assert_close(got["grads"][k], v, atol=ATOL, rtol=RTOL, msg=f"rank {rank} grad {k}")
        for k, v in ref["state"].items():
            torch.testing.assert_close(got["state"][k], v, atol=ATOL, rtol=RTOL, msg=f"rank {rank} {k}")
