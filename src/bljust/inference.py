"""Loading a trained model and transcribing audio files with it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bljust.checkpoint import load
from bljust.config import Config, config_from_dict
from bljust.data.audio import non_finite_detail
from bljust.data.manifests import SAMPLE_RATE
from bljust.data.tokenizer import Tokenizer, tokenizer_from_state
from bljust.decode import greedy_ctc
from bljust.models.asr import ASRModel
from bljust.engine.precision import autocast

log = logging.getLogger("bljust.inference")


def model_path(run_or_file: str | Path) -> Path:
    """A run directory's best.pt (else its newest checkpoint), or the file itself."""
    p = Path(run_or_file)
    if p.is_file():
        return p
    if (p / "best.pt").is_file():
        return p / "best.pt"
    ckpts = sorted((p / "checkpoints").glob("step-*.pt"))
    if ckpts:
        return ckpts[-1]
    raise FileNotFoundError(f"{p} holds no trained model (no best.pt and no checkpoints/step-*.pt)")


def load_trained(run_or_file: str | Path, device: str | torch.device = "cpu") -> tuple[ASRModel, Tokenizer, Config]:
    path = model_path(run_or_file)
    state = load(path)
    missing = [k for k in ("model", "config", "tokenizer") if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path} is not a bljust model file (it has no {', '.join(missing)})")
    cfg = config_from_dict(state["config"])
    tokenizer = tokenizer_from_state(state["tokenizer"])
    model = ASRModel(cfg, tokenizer.vocab_size)
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("ssl.")})
    return model.to(device).eval(), tokenizer, cfg


def read_audio(path: str | Path) -> np.ndarray:
    """Mono float32 audio at 16 kHz; other rates are resampled, several channels averaged."""
    if not Path(path).is_file():
        raise FileNotFoundError("no such file")
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - name the file and the decoder's reason
        raise ValueError(f"cannot read audio: {e}") from e
    if audio.shape[0] == 0:
        raise ValueError("the file holds no samples")
    if (detail := non_finite_detail(audio)) is not None:  # NaN or inf would decode to garbage
        raise ValueError(f"non-finite samples: {detail}")
    audio = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = np.gcd(sr, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return audio


def transcribe_files(model: ASRModel, tokenizer: Tokenizer, paths: list[str], device: torch.device,
                     max_seconds_per_batch: float = 120.0, word_decoder=None, amp: bool = True,
                     beam: int | None = None):
    """Yields (path, text, error) in input order; a file that cannot be read gets an error, not an exception.

    Greedy CTC decoding, or ``word_decoder`` (a :class:`bljust.lm.WordDecoder`; CTC models) when given; a
    transducer decodes with its beam search of ``beam`` hypotheses (greedily when 0 or None). ``amp`` and ``beam``
    as in training and evaluation, so a file transcribes as ``bljust evaluate`` decodes it."""

    @torch.no_grad()
    def decode(audios: list[np.ndarray]) -> list[str]:
        wav, lens = (torch.from_numpy(a) for a in pad_batch(audios))
        feats, feat_lens = model.frontend(wav.to(device), lens.to(device))
        with autocast(device, amp):
            hidden, out_lens = model.encode(feats, feat_lens)
            if word_decoder is not None:
                log_probs = model.log_probs(hidden)  # float32 (the CTC head casts up)
            else:
                seqs = model.decode(hidden, out_lens, beam)[0]
        if word_decoder is not None:
            return word_decoder.decode([log_probs[b, :int(out_lens[b])] for b in range(len(audios))])
        return [tokenizer.decode(s) for s in seqs]

    yield from _transcribe_batches(paths, max_seconds_per_batch, decode)


def transcribe_files_onnx(model, paths: list[str], max_seconds_per_batch: float = 120.0, word_decoder=None):
    """As :func:`transcribe_files`, with an exported model in onnxruntime (a :class:`bljust.export.OnnxCTC`):
    greedy CTC, or ``word_decoder`` on the log-posteriors the ONNX graph returns."""

    def decode(audios: list[np.ndarray]) -> list[str]:
        log_probs, lens = (torch.from_numpy(a) for a in model.run(*pad_batch(audios)))
        if word_decoder is not None:
            return word_decoder.decode([log_probs[b, :int(lens[b])] for b in range(len(audios))])
        return [model.tokenizer.decode(s) for s in greedy_ctc(log_probs, lens)[0]]

    yield from _transcribe_batches(paths, max_seconds_per_batch, decode)


def pad_batch(audios: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Waveforms zero-padded to one (B, S) float32 batch, and their lengths (B,) int64."""
    wav = np.zeros((len(audios), max(len(a) for a in audios)), dtype=np.float32)
    for b, a in enumerate(audios):
        wav[b, :len(a)] = a
    return wav, np.array([len(a) for a in audios], dtype=np.int64)


def _transcribe_batches(paths: list[str], max_seconds_per_batch: float,
                        decode: Callable[[list[np.ndarray]], list[str]]):
    """Reads ``paths`` into batches of about ``max_seconds_per_batch`` and yields (path, text, error) in input
    order: reading and error handling shared by the PyTorch and the ONNX model, which only ``decode``."""
    pending: list[tuple[str, np.ndarray]] = []

    def flush():
        texts = decode([a for _, a in pending])
        out = [(p, t, None) for (p, _), t in zip(pending, texts)]
        pending.clear()
        return out

    seconds = 0.0
    for path in paths:
        try:
            audio = read_audio(path)
        except (ValueError, FileNotFoundError, OSError) as e:
            yield from flush() if pending else ()
            seconds = 0.0
            yield path, None, str(e)
            continue
        pending.append((path, audio))
        seconds += len(audio) / SAMPLE_RATE
        if seconds >= max_seconds_per_batch:
            yield from flush()
            seconds = 0.0
    if pending:
        yield from flush()
