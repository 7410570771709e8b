"""Output units for CTC: characters or SentencePiece pieces, with the blank as id 0.

A tokenizer serialises to a small dict that goes into every checkpoint, so a trained model
is self-contained.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from bljust.config import TokenizerConfig

BLANK = "<blk>"
UNK = "<unk>"
# LibriSpeech-style transcripts: A–Z, apostrophe, space (shown as "|" in the unit list).
CHARS = list("|'ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class Tokenizer:
    blank_id = 0

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def can_encode(self, text: str) -> bool:
        """Whether ``text`` maps to a non-empty unit sequence without unknown units."""
        ids = self.encode(text)
        return bool(ids) and self.unk_id not in ids

    unk_id = -1


class CharTokenizer(Tokenizer):
    def __init__(self, units: list[str] | None = None):
        self.units = [BLANK, UNK] + (units or CHARS)
        self.unk_id = 1
        self._index = {u: i for i, u in enumerate(self.units)}

    @property
    def vocab_size(self) -> int:
        return len(self.units)

    def encode(self, text: str) -> list[int]:
        return [self._index.get("|" if c == " " else c, self.unk_id) for c in " ".join(text.split())]

    def decode(self, ids: Iterable[int]) -> str:
        chars = [self.units[i] for i in ids if i > 1]
        return " ".join("".join(chars).replace("|", " ").split())

    def state_dict(self) -> dict:
        return {"kind": "char", "units": self.units[2:]}


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.unk_id = self.sp.unk_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i != self.blank_id])

    def state_dict(self) -> dict:
        return {"kind": "sentencepiece", "model_proto": self.model_proto}


def train_tokenizer(cfg: TokenizerConfig, texts: list[str]) -> Tokenizer:
    """Characters need no training; SentencePiece is trained on the labeled transcripts."""
    if cfg.kind == "char":
        return CharTokenizer()
    if not texts:
        raise ValueError("cannot train a SentencePiece model without transcripts")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "text.txt"
        corpus.write_text("\n".join(texts) + "\n")
        prefix = str(Path(tmp) / "sp")
        # pad_id 0 doubles as the CTC blank so the blank is its own id, never a real piece.
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=prefix, model_type=cfg.kind, vocab_size=cfg.vocab_size,
            character_coverage=1.0, pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
            hard_vocab_limit=False, num_threads=1, minloglevel=2,
        )
        return SentencePieceTokenizer(Path(prefix + ".model").read_bytes())


def tokenizer_from_state(state: dict) -> Tokenizer:
    if state["kind"] == "char":
        return CharTokenizer(state["units"])
    if state["kind"] == "sentencepiece":
        return SentencePieceTokenizer(state["model_proto"])
    raise ValueError(f"unknown tokenizer kind {state['kind']!r}")
