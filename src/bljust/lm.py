"""Word-level CTC decoding: an n-gram LM estimated from text, and a lexicon beam search.

Greedy character decoding of a model trained on minutes of labels leaves most words
misspelt, so WER sits near 100 % whatever the acoustic model. A lexicon-constrained beam
search with a word n-gram LM (the usual LibriSpeech set-up) turns the same posteriors into
words. The search is flashlight-text's ``LexiconDecoder`` (KenLM inside the wheel); KenLM
only *queries* ARPA files and no packaged estimator installs here (lmplz needs a build), so
:func:`write_arpa` estimates an interpolated Kneser-Ney model itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from bljust.data.text import normalize_transcript

BOS, EOS, UNK = "<s>", "</s>", "<unk>"

log = logging.getLogger("bljust.lm")


def read_text(path: str | Path) -> list[str]:
    """Normalised, non-empty lines of a text file (one sentence per line)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: LM text file not found")
    lines = [normalize_transcript(line) for line in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{p}: LM text holds no usable sentence")
    return lines


def _discount(counts: Iterable[int]) -> float:
    """Kneser-Ney's absolute discount D = n1 / (n1 + 2 n2) from the counts of counts."""
    coc = Counter(c for c in counts if c <= 2)
    n1, n2 = coc[1], coc[2]
    if n1 == 0 or n2 == 0:
        return 0.5
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9)


def write_arpa(sentences: Sequence[str], path: str | Path, order: int = 3) -> dict:
    """Estimate an interpolated Kneser-Ney word ``order``-gram LM and write it as ARPA.

    Lower orders use continuation counts (distinct left contexts) except for n-grams that
    start with ``<s>``, which nothing precedes. Each order has one discount from its counts of
    counts; the unigram level interpolates with a uniform distribution so ``<unk>`` keeps
    some mass. The file is written atomically. Returns the n-gram counts per order.
    """
    if order < 1:
        raise ValueError(f"LM order must be >= 1, got {order}")
    raw: Counter = Counter()
    for s in sentences:
        words = [BOS] + s.split() + [EOS]
        for i in range(1, len(words)):
            for n in range(1, order + 1):
                if i - n + 1 < 0:
                    break
                raw[tuple(words[i - n + 1:i + 1])] += 1
    if not raw:
        raise ValueError("no text to estimate an LM from")
    # Adjusted counts: raw at the top order and for n-grams anchored at <s>, else the number
    # of distinct words seen to the left.
    adjusted: list[dict[tuple, int]] = [{} for _ in range(order + 1)]
    left: dict[tuple, int] = defaultdict(int)
    for g in raw:
        if len(g) > 1:
            left[g[1:]] += 1
    for g, c in raw.items():
        n = len(g)
        adjusted[n][g] = c if n == order or g[0] == BOS else left.get(g, 0)
    for n in range(1, order):
        adjusted[n] = {g: c for g, c in adjusted[n].items() if c > 0}
    vocab = sorted({g[0] for g in adjusted[1]} | {EOS})
    discounts = [0.0] + [_discount(adjusted[n].values()) for n in range(1, order + 1)]

    # Per-context totals and type counts, per order.
    probs: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    backoff: list[dict[tuple, float]] = [{} for _ in range(order + 1)]
    for n in range(1, order + 1):
        total: dict[tuple, int] = defaultdict(int)
        types: dict[tuple, int] = defaultdict(int)
        for g, c in adjusted[n].items():
            total[g[:-1]] += c
            types[g[:-1]] += 1
        d = discounts[n]
        gamma = {h: d * types[h] / total[h] for h in total}
        for g, c in adjusted[n].items():
            h = g[:-1]
            lower = probs[n - 1].get(g[1:]) if n > 1 else 1.0 / (len(vocab) + 1)
            if lower is None:  # a suffix is always seen; guard against malformed input anyway
                lower = 0.0
            probs[n][g] = max(c - d, 0.0) / total[h] + gamma[h] * lower
        if n > 1:
            for h, w in gamma.items():
                backoff[n - 1][h] = w
        else:
            unk_mass = gamma[()] / (len(vocab) + 1)
    probs[1][(UNK,)] = unk_mass

    def log10(p: float) -> float:
        return math.log10(p) if p > 0 else -99.0

    entries = [{} for _ in range(order + 1)]
    entries[1][(BOS,)] = (-99.0, backoff[1].get((BOS,), 1.0))
    for n in range(1, order + 1):
        for g, p in probs[n].items():
            entries[n][g] = (log10(p), backoff[n].get(g, 1.0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\\data\\\n")
        for n in range(1, order + 1):
            f.write(f"ngram {n}={len(entries[n])}\n")
        for n in range(1, order + 1):
            f.write(f"\n\\{n}-grams:\n")
            for g, (lp, bo) in sorted(entries[n].items()):
                if n < order and bo != 1.0:
                    f.write(f"{lp:.6f}\t{' '.join(g)}\t{math.log10(bo):.6f}\n")
                else:
                    f.write(f"{lp:.6f}\t{' '.join(g)}\n")
        f.write("\n\\end\\\n")
    os.replace(tmp, path)
    return {n: len(entries[n]) for n in range(1, order + 1)}


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Pruning of the beam search: units tried per frame, and how far below the best a hypothesis may fall.
BEAM_SIZE_TOKEN = 30
BEAM_THRESHOLD = 25.0


def arpa_words(path: str | Path) -> list[str]:
    """The unigram vocabulary of an ARPA file (without ``<s>``, ``</s>``, ``<unk>``)."""
    words, in_unigrams = [], False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams and line:
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in (BOS, EOS, UNK):
                    words.append(parts[1])
    if not words:
        raise ValueError(f"{path}: not an ARPA file with unigrams")
    return words


class WordDecoder:
    """CTC lexicon beam search over a trained model's character or SentencePiece units.

    The lexicon is the LM's vocabulary (``words`` overrides it); words the tokenizer cannot
    spell are left out, so the search only emits words the LM knows. ``lm_weight`` (the LM
    score's weight against the acoustic log-posteriors) and ``word_score`` (added per word) are
    the defaults of :meth:`decode`; ``beam_size`` hypotheses are kept per frame.
    """

    def __init__(self, tokenizer, arpa: str | Path, beam_size: int = 50, lm_weight: float = 1.0,
                 word_score: float = 0.0, words: Iterable[str] | None = None):
        if not Path(arpa).is_file():
            raise FileNotFoundError(f"{arpa}: LM file not found")
        words = arpa_words(arpa) if words is None else words
        from flashlight.lib.text.decoder import SmearingMode, Trie
        from flashlight.lib.text.decoder.kenlm import KenLM
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict

        from bljust.data.tokenizer import CharTokenizer

        self.tokenizer = tokenizer
        self.beam_size, self.lm_weight, self.word_score = beam_size, lm_weight, word_score
        self.blank = tokenizer.blank_id
        self.char = isinstance(tokenizer, CharTokenizer)
        if self.char:
            units = list(tokenizer.units)
            self.sil = units.index("|")
        else:
            units = [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
            self.sil = self.blank  # word boundaries live inside the pieces ("▁word")
        self.token_dict = Dictionary(units)
        lexicon: dict[str, list[list[str]]] = {}
        for w in sorted(set(words)):
            if not w or w in (BOS, EOS, UNK):
                continue
            if self.char:
                if not tokenizer.can_encode(w):
                    continue
                lexicon[w] = [list(w) + ["|"]]
            else:
                ids = tokenizer.encode(w)
                if not ids or tokenizer.unk_id in ids:
                    continue
                lexicon[w] = [[units[i] for i in ids]]
        if not lexicon:
            raise ValueError("the lexicon is empty: no LM word can be spelt with the model's units")
        lexicon[UNK] = [[]]
        self.word_dict = create_word_dict(lexicon)
        with _quiet_stderr():  # KenLM prints a progress bar and a binary-format hint
            self.lm = KenLM(str(arpa), self.word_dict)
        self.trie = Trie(self.token_dict.index_size(), self.sil)
        start = self.lm.start(False)
        for w, spellings in lexicon.items():
            if w == UNK:
                continue
            idx = self.word_dict.get_index(w)
            _, score = self.lm.score(start, idx)
            for sp in spellings:
                self.trie.insert([self.token_dict.get_index(t) for t in sp], idx, score)
        self.trie.smear(SmearingMode.MAX)
        self.unk = self.word_dict.get_index(UNK)
        self.word_dict_words = frozenset(w for w in lexicon if w != UNK)

    @property
    def num_words(self) -> int:
        return len(self.word_dict_words)

    def _decoder(self, lm_weight: float, word_score: float):
        from flashlight.lib.text.decoder import (
            CriterionType,
            LexiconDecoder,
            LexiconDecoderOptions,
        )

        opts = LexiconDecoderOptions(
            beam_size=self.beam_size, beam_size_token=BEAM_SIZE_TOKEN, beam_threshold=BEAM_THRESHOLD,
            lm_weight=lm_weight, word_score=word_score, unk_score=float("-inf"), sil_score=0.0,
            log_add=False, criterion_type=CriterionType.CTC)
        return LexiconDecoder(opts, self.trie, self.lm, self.sil, self.blank, self.unk, [], False)

    def decode(self, emissions: Sequence[Tensor], lm_weight: float | None = None,
               word_score: float | None = None) -> list[str]:
        """Best word sequence for each utterance's (T, V) CTC log-posteriors."""
        dec = self._decoder(self.lm_weight if lm_weight is None else lm_weight,
                            self.word_score if word_score is None else word_score)
        out = []
        for em in emissions:
            e = em.detach().float().cpu().contiguous()
            results = dec.decode(e.data_ptr(), e.shape[0], e.shape[1])
            words = [self.word_dict.get_entry(i) for i in results[0].words if i >= 0] if results else []
            out.append(" ".join(w for w in words if w not in (UNK, BOS, EOS)))
        return out


# ---------------------------------------------------------------- the LM a comparison decodes with


@dataclass(frozen=True)
class PreparedLM:
    """The word LM of a comparison: ``path`` None means greedy decoding only."""

    path: str | None = None
    """The ARPA file (absolute)."""
    sha256: str = ""
    """Hash of the ARPA file's bytes: part of the run key of a method that trains with the LM (PL with
    ``pl.decode: lm``)."""
    decode_key: str = ""
    """Hash of the ARPA file and the decoding settings (beam, LM weight and word score grids): when only
    this changes, finished runs are re-scored rather than retrained."""


def prepare_lm(decode, data: str | Path, out: str | Path) -> PreparedLM:
    """The LM runs are decoded with, from a ``DecodeConfig``.

    ``decode.lm`` names an ARPA file; otherwise a data directory with ``lm_text.txt`` gets a
    ``decode.lm_order``-gram LM estimated into ``OUT/lm/``, re-estimated only when the text or the
    order changed; otherwise there is none.
    """
    data, out = Path(data), Path(out)
    if decode.lm:
        arpa = Path(decode.lm).resolve()
        if not arpa.is_file():
            raise FileNotFoundError(f"decode.lm: {arpa} not found")
    elif (data / "lm_text.txt").is_file():
        text = data / "lm_text.txt"
        arpa = (out / "lm" / f"{decode.lm_order}gram.arpa").resolve()
        text_hash = hashlib.sha256(text.read_bytes()).hexdigest()[:16]
        stamp = arpa.with_suffix(".json")
        try:
            stamped = json.loads(stamp.read_text()).get("text_sha256")
        except (OSError, json.JSONDecodeError, AttributeError):
            stamped = None
        if not (arpa.is_file() and stamped == text_hash):
            t0 = time.time()
            counts = write_arpa(read_text(text), arpa, decode.lm_order)
            stamp.write_text(json.dumps({"text": str(text), "text_sha256": text_hash, "ngrams": counts}))
            log.info("LM: %d-gram from %s (%s n-grams) in %.1f s", decode.lm_order, text,
                     "/".join(str(c) for c in counts.values()), time.time() - t0)
    else:
        return PreparedLM()
    h = hashlib.sha256()
    with open(arpa, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    sha = h.hexdigest()
    h.update(json.dumps([decode.beam_size, decode.lm_weights, decode.word_scores]).encode())
    return PreparedLM(str(arpa), sha[:16], h.hexdigest()[:16])


def lm_order_of(arpa: str | Path) -> int:
    """The highest order an ARPA file's header declares."""
    order = 0
    with open(arpa, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("ngram "):
                order = max(order, int(line.split()[1].split("=")[0]))
            elif line.startswith("\\1-grams"):
                break
    return order
