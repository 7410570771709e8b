"""Is the difference real? Paired bootstrap confidence intervals of the test error-rate difference between
two methods (Bisani & Ney, "Bootstrap estimates for confidence intervals in ASR performance evaluation", 2004).

A seed's table row says one method scored lower; it does not say whether another draw of test utterances
would have said the same. The bootstrap answers that from the per-utterance errors in each run's hypothesis
files (``eval/test.hyp.txt``, ``eval/test.lm.hyp.txt``, written by ``bljust.evaluate.evaluate_run``): it
resamples the test utterances with replacement and, on each resample, computes both systems' corpus-level
rates on the same utterances (errors summed over the resample ÷ its reference words or characters, as the
table's rates are). Pairing cancels what the two systems share (an utterance hard for one is hard for the
other), so it detects smaller differences than comparing two independent intervals would.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np

from bljust.data.text import normalize_transcript

REFERENCES = ("ptft", "supervised")
"""What every method is compared against: PT+FT, the usual recipe, and supervised training on the labeled split."""
RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
SCORES = {"test": ("test", False), "test_lm": ("test", True)}
"""Name in results.json → (split, decoded with the word LM)."""
POOLING = ("seed i of a method is paired with seed i of the reference, only seeds both ran, on the utterances every "
           "one of those runs scored; an utterance's errors and reference lengths are summed over the seeds, so it is "
           "resampled with all its seeds at once (they share its difficulty); the pooled difference is the mean over "
           "seeds of their corpus-level differences; the interval reflects the draw of test utterances, not of "
           "training seeds")
"""How the seeds are pooled, in words (results.json and the report quote it)."""
_CHUNK = 256
"""Resamples drawn at a time: bounds the memory of the draws to _CHUNK × utterances."""


@dataclass(frozen=True)
class UtteranceErrors:
    """One run's edits per test utterance (non-empty normalised references only), in the order of its file."""

    ids: tuple[str, ...]
    word_errors: np.ndarray
    words: np.ndarray
    char_errors: np.ndarray
    chars: np.ndarray

    def rates(self) -> tuple[float, float]:
        """Corpus-level (WER, CER): what ``bljust.evaluate.error_rates`` reports for the same hypotheses."""
        return self.word_errors.sum() / self.words.sum(), self.char_errors.sum() / self.chars.sum()

    def take(self, ids: list[str]) -> np.ndarray:
        """(len(ids), 4) columns word errors, words, char errors, chars, rows in the order of ``ids``."""
        index = {cid: i for i, cid in enumerate(self.ids)}
        rows = [index[cid] for cid in ids]
        return np.column_stack([self.word_errors, self.words, self.char_errors, self.chars])[rows]


@dataclass(frozen=True)
class Interval:
    """A difference of error rates (fractions; method − reference, negative: the method has fewer errors)."""

    diff: float
    """on every utterance, not resampled"""
    low: float
    high: float

    @property
    def direction(self) -> int:
        """-1 when the interval lies below zero, +1 above it, 0 when it includes zero (no detectable difference)."""
        return -1 if self.high < 0 else 1 if self.low > 0 else 0

    def to_dict(self) -> dict:
        return {"diff": self.diff, "low": self.low, "high": self.high}


def read_hypotheses(path: Path) -> dict[str, tuple[str, str]]:
    """Utterance id → (reference, hypothesis) from a hypothesis file of ``bljust.evaluate.write_hypotheses``
    (``ID\\tREF: text`` then ``ID\\tHYP: text``). Raises ValueError on a line of neither kind or an utterance
    without both: a truncated file would otherwise be scored on the utterances it happens to hold."""
    refs: dict[str, str] = {}
    hyps: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cid, _, rest = line.partition("\t")
        kind = rest[:4]
        if kind not in ("REF:", "HYP:"):
            raise ValueError(f"{path}:{number}: neither a REF nor a HYP line")
        (refs if kind == "REF:" else hyps)[cid] = rest[4:].strip()
    if unpaired := set(refs) ^ set(hyps):
        raise ValueError(f"{path}: {len(unpaired)} utterance(s) without both a REF and a HYP line, e.g. "
                         f"{sorted(unpaired)[0]}")
    return {cid: (ref, hyps[cid]) for cid, ref in refs.items()}


def _edits(alignments: list) -> np.ndarray:
    """Substitutions + deletions + insertions per utterance from jiwer's alignment chunks (a substitution chunk
    spans as many reference as hypothesis units, a deletion only reference ones, an insertion only hypothesis
    ones)."""
    return np.array([sum(max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                         for c in chunks if c.type != "equal") for chunks in alignments], dtype=np.int64)


def utterance_errors(pairs: dict[str, tuple[str, str]]) -> UtteranceErrors:
    """Word and character edits per utterance, normalised and filtered as ``bljust.evaluate.error_rates`` does, so
    that their sums give the corpus-level rates the run was scored with."""
    kept = [(cid, ref, normalize_transcript(hyp)) for cid, (r, hyp) in pairs.items()
            if (ref := normalize_transcript(r))]
    if not kept:
        raise ValueError("no utterance with a non-empty reference to score")
    ids, refs, hyps = (list(column) for column in zip(*kept))
    return UtteranceErrors(
        tuple(ids), _edits(jiwer.process_words(refs, hyps).alignments),
        np.array([len(r.split()) for r in refs], dtype=np.int64),
        _edits(jiwer.process_characters(refs, hyps).alignments), np.array([len(r) for r in refs], dtype=np.int64))


def resampled_sums(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, k) column sums of ``values`` (n, k) over ``resamples`` draws of n rows with replacement.

    Each draw is turned into how often it took each row, so that the sums are one matrix product instead of a
    gather of resamples × n × k values. The same seed and n give the same draws, whatever is summed."""
    n = len(values)
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, values.shape[1]))
    for start in range(0, resamples, _CHUNK):
        rows = min(_CHUNK, resamples - start)
        draws = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
        counts = np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n)
        out[start:start + rows] = counts @ values
    return out


def paired_bootstrap(errors: np.ndarray, reference_errors: np.ndarray, units: np.ndarray, *,
                     resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> list[Interval]:
    """Percentile intervals of the corpus-level rate difference (errors − reference_errors) / units, one per
    column of the (n, k) arrays (per utterance: a measure's edits by the two systems and its reference length).

    Both systems share each resample's utterances and denominator, so the difference of their rates is the
    resampled difference of errors over the resampled units."""
    diff = errors - reference_errors
    sums = resampled_sums(np.hstack([diff, units]).astype(np.float64), resamples, seed)
    k = diff.shape[1]
    stats = sums[:, :k] / sums[:, k:]
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2], axis=0)
    point = diff.sum(axis=0) / units.sum(axis=0)
    return [Interval(float(p), float(lo), float(hi)) for p, lo, hi in zip(point, low, high)]


def _intervals(errors: np.ndarray, reference: np.ndarray) -> dict:
    """{"utterances", "wer", "cer"} of (n, 4) ``take`` columns of a method and its reference (same rows)."""
    wer, cer = paired_bootstrap(errors[:, [0, 2]], reference[:, [0, 2]], reference[:, [1, 3]])
    return {"utterances": len(errors), "wer": wer.to_dict(), "cer": cer.to_dict()}


def compare_runs(method: dict[int, UtteranceErrors], reference: dict[int, UtteranceErrors]) -> dict | None:
    """The intervals of ``method`` against ``reference`` (each: seed → its run's errors): seeds pooled (``POOLING``)
    and per seed; None when they share no seed, or no utterance."""
    seeds = sorted(set(method) & set(reference))
    if not seeds:
        return None
    shared = set.intersection(*(set(errors[s].ids) for errors in (method, reference) for s in seeds))
    ids = [cid for cid in reference[seeds[0]].ids if cid in shared]
    if not ids:
        return None
    pooled = _intervals(sum(method[s].take(ids) for s in seeds), sum(reference[s].take(ids) for s in seeds))
    per_seed = []
    for seed in seeds:  # on every utterance the pair scored, which may be more than all seeds share
        scored = set(method[seed].ids)
        pair = [cid for cid in reference[seed].ids if cid in scored]
        per_seed.append({"seed": seed, **_intervals(method[seed].take(pair), reference[seed].take(pair))})
    return {"seeds": seeds, **pooled, "per_seed": per_seed}


def hypothesis_path(out_dir: Path, run: dict, score: str) -> Path:
    """Where ``evaluate_run`` wrote ``run``'s hypotheses of ``score`` (``SCORES``); run_dir is relative to out_dir."""
    split, lm = SCORES[score]
    return out_dir / run["run_dir"] / "eval" / f"{split}{'.lm' if lm else ''}.hyp.txt"


def _recorded(run: dict, score: str) -> dict | None:
    """The rates results.json holds for ``run``'s ``score``; None when it was not decoded so."""
    split, lm = SCORES[score]
    node = run.get(split)
    if not isinstance(node, dict):
        return None
    return node.get("lm") if lm else node


def run_errors(out_dir: Path, run: dict, score: str) -> UtteranceErrors:
    """``run``'s per-utterance errors of ``score``, checked against its recorded rates: a hypothesis file from
    another evaluation (a later re-scoring into the same run directory) must not speak for this record."""
    path = hypothesis_path(out_dir, run, score)
    errors = utterance_errors(read_hypotheses(path))
    recorded = _recorded(run, score)
    for name, mine in zip(("wer", "cer"), errors.rates()):
        if abs(mine - recorded[name]) > 1e-9:  # the same counts summed in another order: equal but for rounding
            raise ValueError(f"{path} gives {name.upper()} {mine:.6f}, results.json {recorded[name]:.6f}: the file "
                             f"is from another evaluation")
    return errors


def significance(out_dir: Path, runs: Iterable[dict], references: tuple[str, ...] = REFERENCES) -> dict:
    """results.json's ``significance`` (see ``bljust.compare.results``): every method against each of
    ``references`` that ran, on every score of ``SCORES`` both were decoded with; runs whose hypotheses could not
    be read (or disagree with their record) are left out and listed under ``skipped``. A reference is compared
    only with those after it (PT+FT with supervised): the mirror would say the same twice."""
    errors: dict[str, dict[str, dict[int, UtteranceErrors]]] = {score: {} for score in SCORES}
    skipped = []
    for run in runs:
        for score in SCORES:
            if not run.get("method") or not run.get("run_dir") or _recorded(run, score) is None:
                continue
            try:
                errors[score].setdefault(run["method"], {})[run["seed"]] = run_errors(Path(out_dir), run, score)
            except (OSError, ValueError) as e:
                skipped.append({"method": run["method"], "seed": run["seed"], "score": score,
                                "reason": str(e) if isinstance(e, ValueError) else f"{e.strerror}: {e.filename}"})
    scores = {}
    for score, by_method in errors.items():
        table = {}
        for method in by_method:
            later = references[references.index(method) + 1:] if method in references else references
            against = {ref: c for ref in later if ref in by_method
                       and (c := compare_runs(by_method[method], by_method[ref])) is not None}
            if against:
                table[method] = against
        if table:
            scores[score] = table
    return {"resamples": RESAMPLES, "level": LEVEL, "seed": SEED, "pooling": POOLING, "scores": scores,
            "skipped": skipped}
