"""HuBERT targets: k-means cluster ids per encoder frame of every unlabeled utterance.

Two iterations, as in HuBERT (Hsu et al., 2021):

- iteration 1 (``source="mfcc"`` or ``"fbank"``): clusters of per-utterance mean/variance
  normalised MFCC (13 cepstra + deltas + delta-deltas) or log-mel frames. Per-utterance
  normalisation removes most of a voice's and a channel's constant offset, so the clusters
  follow sounds rather than speakers;
- iteration 2 (``source=RUN``): clusters of a trained run's encoder block ``layer``, e.g. the
  supervised model trained on the labeled split (supervision-guided targets).

Targets live at the encoder's frame rate (one id per 40 ms output frame of the ×4 front-end):
an iteration-1 frame ``t`` is the mean of input frames ``4t+1 .. 4t+4`` (the frames BEST-RQ
stacks for the same output frame). They are computed once per unlabeled split and settings,
written next to the manifests (``DATA/ssl_targets/<name>.pt``, loadable with
``weights_only=True``) and looked up by cut id; a speed-perturbed copy (lhotse's id
``<id>_sp<factor>``) gets its original's ids resampled to its own length, so perturbation
keeps targets aligned, and a resumed run reloads the same file (its key is checkpointed).

k-means is faiss-cpu's (measured against scikit-learn's MiniBatchKMeans on this CPU: 3.6–5.4×
faster at equal or lower inertia; ``../shared/docs/stack.md``). It is fitted on at most
``fit_frames`` frames from utterances chosen by a hash of their ids, then every frame is
assigned in a second streaming pass, so memory does not grow with the corpus.

Health, stored in the file and logged by the run that uses it: ``code_usage`` (share of the
clusters that label at least one frame), ``code_perplexity`` (of the cluster frequencies), and
with an aligner (a trained CTC run), cluster purity against its units (characters in the demo)
on the labeled split: ``pnmi`` = I(unit; cluster) / H(unit) as in HuBERT's phone-normalised
mutual information, ``cluster_purity`` = E over frames of max_u p(u | cluster). A frame's unit is
the last unit CTC emitted at or before it (the blank frames after an emission belong to it;
frames before the first emission count as a unit of their own, silence).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bljust.checkpoint import atomic_save, load
from bljust.config import FeatureConfig, SSLConfig
from bljust.data.audio import SkippedAudio
from bljust.data.features import LogMel
from bljust.data.loader import ctc_frames_needed, eval_batches
from bljust.data.manifests import load_split
from bljust.models.subsampling import subsampled_lengths

log = logging.getLogger("bljust.ssl_targets")

FORMAT = "bljust-ssl-targets"
VERSION = 1
TARGETS_DIR = "ssl_targets"
NUM_CEPS = 13
STACK, STACK_OFFSET = 4, 1
"""Output frame t of the ×4 front-end gets the mean of input frames 4t+1 .. 4t+4."""
_PERTURBED = re.compile(r"^(?P<base>.+)_sp(?P<factor>\d+(?:\.\d+)?)$")


class TargetsError(ValueError):
    """A targets file that is missing, malformed or does not cover the utterances asked for."""


@dataclass
class Targets:
    """Cluster ids per encoder frame of each utterance, and where they came from."""

    path: Path
    """The file they were loaded from."""
    rows: dict[str, int]
    """Cut id → row."""
    offsets: Tensor
    """(N + 1,) long: row i's ids are labels[offsets[i]:offsets[i+1]]."""
    labels: Tensor
    """(total frames,) long cluster ids."""
    clusters: int
    """Number of clusters (classes predicted)."""
    meta: dict = field(default_factory=dict)
    """Settings (``spec``), ``key`` and ``health`` as written."""

    @property
    def key(self) -> str:
        return self.meta["key"]

    def sequence(self, cut_id: str) -> Tensor:
        """The ids of one utterance at its own length (a perturbed copy maps to its original)."""
        row = self.rows.get(cut_id)
        if row is None and (m := _PERTURBED.match(cut_id)):
            row = self.rows.get(m.group("base"))
        if row is None:
            raise TargetsError(f"{self.path}: no targets for utterance {cut_id!r}; the file was made for another "
                               "unlabeled split (recompute it: bljust ssl-targets)")
        return self.labels[self.offsets[row]:self.offsets[row + 1]]

    def lookup(self, cut_id: str, frames: int) -> Tensor:
        """(frames,) long ids of ``cut_id`` resampled (nearest frame) to ``frames`` encoder frames: the identity
        for the utterance itself, a time-stretch for a speed-perturbed copy."""
        seq = self.sequence(cut_id)
        n = seq.numel()
        if n == frames:
            return seq
        if n == 0:
            return torch.full((frames,), -1, dtype=torch.long)
        idx = ((torch.arange(frames, dtype=torch.float64) + 0.5) * (n / max(frames, 1))).long().clamp(max=n - 1)
        return seq[idx]

    def batch(self, ids: list[str], lens: Tensor, frames: int) -> Tensor:
        """(B, frames) long ids for a batch, -1 beyond each utterance's ``lens``."""
        out = torch.full((len(ids), frames), -1, dtype=torch.long)
        for i, (cut_id, n) in enumerate(zip(ids, lens.tolist())):
            n = min(int(n), frames)
            out[i, :n] = self.lookup(cut_id, n)
        return out

    def missing(self, cut_ids) -> list[str]:
        """The ids (perturbed copies mapped to their originals) that have no targets, less those whose audio
        could not be read when the targets were made (training skips them before any loss)."""
        out, unreadable = [], set(self.meta.get("unreadable", ()))
        for cut_id in cut_ids:
            if cut_id not in self.rows and cut_id not in unreadable:
                m = _PERTURBED.match(cut_id)
                if m is None or m.group("base") not in self.rows:
                    out.append(cut_id)
        return out


def load_targets(path: str | Path) -> Targets:
    path = Path(path)
    if not path.is_file():
        raise TargetsError(f"{path}: no such targets file (make one with: bljust ssl-targets DATA ...)")
    state = load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TargetsError(f"{path}: not a bljust targets file")
    if state.get("version") != VERSION:
        raise TargetsError(f"{path}: targets format version {state.get('version')}, this bljust reads {VERSION}")
    meta = json.loads(state["meta"])
    return Targets(path=path, rows={c: i for i, c in enumerate(state["ids"])}, offsets=state["offsets"].long(),
                   labels=state["labels"].long(), clusters=int(meta["clusters"]), meta=meta)


# ---------------------------------------------------------------- frame features


def dct_matrix(n_in: int, n_out: int) -> Tensor:
    """Orthonormal DCT-II (n_in → n_out), as Kaldi and librosa use for MFCCs."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)[:, None]
    m = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    m[0] /= math.sqrt(2.0)
    return m.t().float()  # (n_in, n_out)


def deltas(x: Tensor, window: int = 2) -> Tensor:
    """Regression deltas over time of (T, D), edges replicated (the HTK formula)."""
    t = x.size(0)
    padded = torch.cat((x[:1].expand(window, -1), x, x[-1:].expand(window, -1)))
    num = sum(k * (padded[window + k:window + k + t] - padded[window - k:window - k + t]) for k in range(1, window + 1))
    return num / (2 * sum(k * k for k in range(1, window + 1)))


def pool_frames(x: Tensor, t_out: int) -> Tensor:
    """(T, D) input frames → (t_out, D): the mean of input frames 4t+1 .. 4t+4 for output frame t."""
    end = STACK_OFFSET + STACK * t_out
    y = x[STACK_OFFSET:end]
    if y.size(0) < STACK * t_out:
        y = F.pad(y, (0, 0, 0, STACK * t_out - y.size(0)), mode="replicate") if y.size(0) else \
            torch.zeros((STACK * t_out, x.size(1)))
    return y.reshape(t_out, STACK, -1).mean(dim=1)


class AcousticFrames:
    """Iteration-1 frame vectors: per-utterance normalised MFCC (+Δ, ΔΔ) or log-mel, pooled to 40 ms."""

    def __init__(self, kind: str, features: FeatureConfig | None = None):
        if kind not in ("mfcc", "fbank"):
            raise ValueError(f"unknown target features {kind!r}: mfcc or fbank")
        self.kind = kind
        self.logmel = LogMel(features or FeatureConfig())
        self.dct = dct_matrix(self.logmel.num_mel_bins, NUM_CEPS)

    @torch.no_grad()
    def __call__(self, batch: dict) -> list[Tensor]:
        feats, lens = self.logmel.raw_batch(batch)
        out_lens = subsampled_lengths(lens)
        vectors = []
        for i in range(feats.size(0)):
            x = feats[i, :int(lens[i])]
            if self.kind == "mfcc":
                c = x @ self.dct
                d = deltas(c)
                x = torch.cat((c, d, deltas(d)), dim=1)
            x = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5)
            vectors.append(pool_frames(x, int(out_lens[i])))
        return vectors


class EncoderFrames:
    """Iteration-2 frame vectors: a trained run's encoder block ``layer`` on the clean input (eval mode)."""

    def __init__(self, run: str | Path, layer: int, device: str | torch.device = "cpu"):
        from bljust.inference import load_trained

        self.model, self.tokenizer, self.cfg = load_trained(run, device)
        self.layer = layer
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, batch: dict) -> list[Tensor]:
        feats, lens = self.model.frontend.from_batch(batch, self.device)
        hidden, out_lens = self.model.encoder(feats, lens, layer=self.layer)
        return [hidden[i, :int(n)].float().cpu() for i, n in enumerate(out_lens.tolist())]


# ---------------------------------------------------------------- computing and caching


@dataclass(frozen=True)
class TargetSpec:
    """What a targets file is computed from; its hash names the cached file."""

    source: str
    """``mfcc`` or ``fbank`` (iteration 1), or ``run`` (iteration 2: ``run`` and ``layer``)."""
    clusters: int = 100
    """k-means clusters."""
    layer: int = -1
    """Iteration 2: the encoder block whose output is clustered."""
    run: str = ""
    """Iteration 2: the trained run (its model file's content is part of the key)."""
    fit_frames: int = 250_000
    """At most this many frames fit the k-means (all frames are then assigned)."""
    seed: int = 0
    """Seed of the k-means initialisation and of the choice of fitting utterances."""

    @staticmethod
    def from_config(cfg: SSLConfig) -> "TargetSpec":
        return TargetSpec(source=cfg.target_features, clusters=cfg.clusters)


def _fingerprint(cuts) -> str:
    h = hashlib.sha1()
    for c in sorted(cuts, key=lambda c: c.id):
        h.update(f"{c.id}\t{c.num_samples}\n".encode())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def targets_key(spec: TargetSpec, cuts) -> str:
    from bljust.inference import model_path

    parts = {k: v for k, v in spec.__dict__.items() if k != "run"}
    if spec.source == "run":
        parts["model"] = _file_hash(model_path(spec.run))
    parts["unlabeled"] = _fingerprint(cuts)
    parts["version"] = VERSION
    return hashlib.sha1(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def targets_path(data_dir: str | Path, spec: TargetSpec, key: str) -> Path:
    what = f"L{spec.layer}" if spec.source == "run" else spec.source
    return Path(data_dir) / TARGETS_DIR / f"{what}-k{spec.clusters}-{key}.pt"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path``: parallel jobs (compare, DDP ranks) compute a targets file once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _faiss():
    # faiss's loader reports at INFO every CPU-specific build it tried and did not find: noise in a run's log.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _fit_order(cut_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{cut_id}".encode()).hexdigest()


def kmeans(x: np.ndarray, clusters: int, seed: int):
    """faiss k-means (20 Lloyd iterations, best of one start); returns the fitted object (``.centroids``,
    ``.index``)."""
    faiss = _faiss()
    if x.shape[0] < clusters:
        raise TargetsError(f"{x.shape[0]} frames cannot make {clusters} clusters; lower the number of clusters")
    km = faiss.Kmeans(x.shape[1], clusters, niter=20, seed=seed, verbose=False,
                      max_points_per_centroid=max(256, -(-x.shape[0] // clusters)))
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km


def _assign(km, vectors: list[Tensor]) -> list[Tensor]:
    if not vectors:
        return []
    flat = torch.cat(vectors).numpy().astype(np.float32, copy=False)
    _, idx = km.index.search(np.ascontiguousarray(flat), 1)
    ids = torch.from_numpy(idx[:, 0].astype(np.int64))
    return list(ids.split([v.size(0) for v in vectors]))


def _frames_of(spec: TargetSpec, device: str):
    return AcousticFrames(spec.source) if spec.source != "run" else EncoderFrames(spec.run, spec.layer, device)


class _Centroids:
    """A fitted k-means rebuilt from a targets file's centroids (what :func:`_assign` needs)."""

    def __init__(self, centroids: Tensor):
        faiss = _faiss()
        c = np.ascontiguousarray(centroids.float().numpy())
        self.index = faiss.IndexFlatL2(c.shape[1])
        self.index.add(c)


def _add_purity(path: Path, spec: TargetSpec, aligner: str | Path, device: str, max_duration: float) -> None:
    state = load(path)
    meta = json.loads(state["meta"])
    meta["health"].update(purity(path.parent.parent, _Centroids(state["centroids"]), _frames_of(spec, device),
                                 aligner, device, max_duration))
    state["meta"] = json.dumps(meta)
    atomic_save(state, path)
    log.info("targets %s: %s", path, ", ".join(f"{k} {v:.3g}" for k, v in meta["health"].items()))


def compute_targets(data_dir: str | Path, spec: TargetSpec, *, aligner: str | Path | None = None,
                    device: str = "cpu", max_duration: float = 120.0, progress: bool = False) -> Path:
    """Compute (or find cached) targets of ``data_dir``'s unlabeled split; returns the file's path."""
    from tqdm.auto import tqdm

    data_dir = Path(data_dir)
    cuts = load_split(data_dir, "unlabeled").to_eager()
    key = targets_key(spec, cuts)
    path = targets_path(data_dir, spec, key)
    with _lock(path):
        frames_of = None
        if path.is_file():
            if aligner is not None and "pnmi" not in load_targets(path).meta.get("health", {}):
                _add_purity(path, spec, aligner, device, max_duration)  # cached earlier without an aligner
            return path
        t0 = time.perf_counter()
        frames_of = _frames_of(spec, device)
        skipped = SkippedAudio()
        # Pass 1: fit on whole utterances in hash order until fit_frames frames (25 per second).
        chosen, frames = [], 0
        for cut in sorted(cuts, key=lambda c: _fit_order(c.id, spec.seed)):
            chosen.append(cut)
            frames += int(cut.duration * 25)
            if frames >= spec.fit_frames:
                break
        from lhotse import CutSet

        fit = [v for b in eval_batches(CutSet.from_cuts(chosen), max_duration, skipped=skipped) if b["ids"]
               for v in frames_of(b)]
        x = torch.cat(fit).numpy() if fit else np.zeros((0, 1), np.float32)
        km = kmeans(x[:spec.fit_frames], spec.clusters, spec.seed)
        # Pass 2: assign every utterance, streaming.
        ids, seqs, unreadable = [], [], []
        bar = tqdm(total=len(cuts), unit="utt", desc="assigning targets", disable=not progress)
        for b in eval_batches(cuts, max_duration, skipped=skipped):
            unreadable += [f["cut_id"] for f in b["failed"]]  # the loader skips these in training too
            if not b["ids"]:
                continue
            for cut_id, seq in zip(b["ids"], _assign(km, frames_of(b))):
                ids.append(cut_id)
                seqs.append(seq)
            bar.update(len(b["ids"]) + len(b["failed"]))
        bar.close()
        labels = torch.cat(seqs) if seqs else torch.zeros(0, dtype=torch.long)
        lengths = torch.tensor([0] + [s.numel() for s in seqs], dtype=torch.long)
        health = code_health(labels, spec.clusters)
        if aligner is not None or spec.source == "run":
            health.update(purity(data_dir, km, frames_of, aligner or spec.run, device, max_duration))
        meta = {"key": key, "clusters": spec.clusters, "spec": spec.__dict__, "health": health,
                "fit_frames": int(min(x.shape[0], spec.fit_frames)), "frames": int(labels.numel()),
                "utterances": len(ids), "skipped_audio": skipped.counts(), "unreadable": sorted(unreadable),
                "seconds": round(time.perf_counter() - t0, 1)}
        state = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta), "ids": ids,
                 "offsets": lengths.cumsum(0), "labels": labels.to(torch.int16 if spec.clusters < 32768 else torch.int32),
                 "centroids": torch.from_numpy(np.asarray(km.centroids).copy())}
        atomic_save(state, path)
        log.info("targets %s: %d utterances, %d frames, %d clusters, %s (%.1f s)", path, len(ids), labels.numel(),
                 spec.clusters, ", ".join(f"{k} {v:.3g}" for k, v in health.items()), meta["seconds"])
        return path


# ---------------------------------------------------------------- health


def code_health(labels: Tensor, clusters: int) -> dict[str, float]:
    counts = torch.bincount(labels.long(), minlength=clusters).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"code_usage": float((counts > 0).double().mean()), "code_perplexity": float(entropy.exp())}


def ctc_align(log_probs: np.ndarray, tokens: list[int], blank: int = 0) -> np.ndarray:
    """Viterbi CTC forced alignment: for each of T frames, the index (into ``tokens``) of the token it is part of
    (the last token emitted at or before it; -1 before the first). Assumes the alignment exists."""
    t_len, u = log_probs.shape[0], len(tokens)
    ext = np.full(2 * u + 1, blank)
    ext[1::2] = tokens
    s_len = ext.size
    neg = -1e30
    score = np.full(s_len, neg)
    score[0] = log_probs[0, blank]
    if s_len > 1:
        score[1] = log_probs[0, ext[1]]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0: stay, 1: from s-1, 2: from s-2
    skip_ok = np.zeros(s_len, dtype=bool)
    skip_ok[2:] = (ext[2:] != blank) & (ext[2:] != ext[:-2])
    for t in range(1, t_len):
        prev1 = np.concatenate(([neg], score[:-1]))
        prev2 = np.where(skip_ok, np.concatenate(([neg, neg], score[:-2])), neg)
        stacked = np.stack((score, prev1, prev2))
        back[t] = stacked.argmax(0)
        score = stacked.max(0) + log_probs[t, ext]
    s = s_len - 1 if s_len == 1 or score[-1] >= score[-2] else s_len - 2
    states = np.empty(t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    unit = np.where(states % 2 == 1, (states - 1) // 2, -1)
    return np.maximum.accumulate(unit)  # blanks belong to the last token emitted


@torch.no_grad()
def purity(data_dir: Path, km, frames_of, aligner: str | Path, device: str, max_duration: float) -> dict[str, float]:
    """PNMI and cluster purity of the clusters against the aligner's units on the labeled split; none (a
    logged note) when the aligner is a transducer, which has no per-frame posteriors to align with."""
    from bljust.data.manifests import cut_text
    from bljust.inference import load_trained

    model, tok, cfg = load_trained(aligner, device)
    if cfg.model.loss != "ctc":
        log.warning("%s is a transducer (model.loss=%s): PNMI and cluster purity need a CTC run's alignments "
                    "(--align RUN); not measured", aligner, cfg.model.loss)
        return {}
    joint: dict[tuple[int, int], int] = {}
    cuts = load_split(data_dir, "labeled").filter(lambda c: bool(cut_text(c))).to_eager()
    texts = {c.id: cut_text(c) for c in cuts}
    for b in eval_batches(cuts, max_duration, skipped=SkippedAudio()):
        if not b["ids"]:
            continue
        feats, lens = model.frontend.from_batch(b, device)
        log_probs, out_lens = model(feats, lens)
        clusters = _assign(km, frames_of(b))
        for i, cut_id in enumerate(b["ids"]):
            tokens = tok.encode(texts[cut_id])
            n = int(out_lens[i])
            if not tokens or n < ctc_frames_needed(tokens):
                continue
            units = ctc_align(log_probs[i, :n].float().cpu().numpy(), tokens)
            unit_ids = np.where(units >= 0, np.asarray(tokens)[np.maximum(units, 0)], -1)
            c = clusters[i].numpy()
            for u, k in zip(unit_ids[:c.size].tolist(), c[:n].tolist()):
                joint[(u, k)] = joint.get((u, k), 0) + 1
    if not joint:
        return {}
    units = sorted({u for u, _ in joint})
    ks = sorted({k for _, k in joint})
    counts = np.zeros((len(units), len(ks)))
    ui, ki = {u: i for i, u in enumerate(units)}, {k: i for i, k in enumerate(ks)}
    for (u, k), n in joint.items():
        counts[ui[u], ki[k]] = n
    return {**cluster_scores(counts), "purity_frames": int(counts.sum())}


def cluster_scores(counts: np.ndarray) -> dict[str, float]:
    """PNMI = I(unit; cluster) / H(unit) and cluster purity = Σ_k max_u p(u, k) of a (units × clusters) count
    table of frames."""
    p = counts / counts.sum()
    pu, pk = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pu @ pk)[nz])).sum())
    hu = float(-(pu[pu > 0] * np.log(pu[pu > 0])).sum())
    return {"pnmi": mi / hu if hu > 0 else 0.0, "cluster_purity": float(p.max(0).sum())}


# ---------------------------------------------------------------- what a run uses


def targets_for_run(cfg: SSLConfig, data_dir: str | Path) -> Targets:
    """The targets a HuBERT run trains on: ``cfg.targets`` when given, else iteration-1 targets (computed once
    and cached beside the manifests)."""
    if cfg.targets:
        return load_targets(cfg.targets)
    return load_targets(compute_targets(data_dir, TargetSpec.from_config(cfg)))
