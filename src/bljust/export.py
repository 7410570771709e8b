"""Export a trained CTC model as one file that decodes on its own: ONNX (onnxruntime) or TorchScript.

The exported graph maps waveforms (B, S) float32 at 16 kHz and their lengths (B,) int64 to CTC
log-posteriors (B, T', V) float32 and their lengths (B,) int64, with batch and length dynamic. The
front-end (STFT, mel, log, the normalisation statistics) is inside the graph, so a deployment needs no
feature code that could drift from training's; the units (and a SentencePiece model) travel inside the
file, in ONNX ``metadata_props`` or a TorchScript extra file, so the file alone can be decoded.

ONNX goes through ``torch.onnx.export(dynamo=True)``: it turns ``torch.stft`` into ONNX's STFT op and
keeps the subsampling's ``unfold`` dynamic in length, where the deprecated TorchScript-based exporter
(``dynamo=False``) rejects both. TorchScript is ``torch.jit.trace``, which records the same shape
arithmetic. Every export is checked against the PyTorch model on a batch of another size and other
lengths than the one it was made from before it replaces ``out``.

``sherpa-onnx`` writes a directory that sherpa-onnx (k2-fsa's C++ runtime, with Python, Android, iOS, Go, C#
... bindings) decodes as an "omnilingual ASR CTC" model, the one model type it feeds raw waveforms:
``model.onnx`` (one input, the waveforms (N, S); one output, the log-posteriors (N, T', V)) and ``tokens.txt``
(``unit id`` lines, the blank as ``<blk>``, the word boundary as SentencePiece's ``▁``). sherpa-onnx
standardises every waveform (zero mean, unit variance) before the model, which changes a log-mel only by a
constant per utterance, so it is exact for front-ends that normalise per utterance and refused for the others.

Only CTC models export: a transducer decodes by a search that feeds each emitted unit back into its
prediction network, a loop over frames and symbols that is not one graph of waveforms to posteriors.
The cnn_lstm encoder exports to TorchScript only: ``torch.export`` fixes an LSTM's time axis to the
example's length (a known limitation of torch 2.13), so its ONNX graph would fail on any other length.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from bljust.config import Config, to_dict
from bljust.data.features import HOP_LENGTH, SAMPLE_RATE
from bljust.data.tokenizer import SentencePieceTokenizer, Tokenizer, tokenizer_from_state
from bljust.inference import load_trained, model_path
from bljust.models.asr import ASRModel
from bljust.models.subsampling import MIN_INPUT_FRAMES

FORMATS = ("onnx", "torchscript", "sherpa-onnx")
SHERPA_MODEL, SHERPA_TOKENS = "model.onnx", "tokens.txt"
"""The two files of a ``sherpa-onnx`` export's directory."""
INPUT_NAMES = ("wav", "wav_lens")
OUTPUT_NAMES = ("log_probs", "log_prob_lens")
TORCHSCRIPT_META = "bljust.json"
"""The TorchScript extra file holding the metadata (``torch.jit.load(path, _extra_files={...: ""})``)."""
TOKENIZER_KEY = "bljust.tokenizer"
EXPORT_VERSION = "1"

# The export is made from one batch shape and checked on another: a shape baked into the graph shows.
EXAMPLE_LENGTHS = (16000, 11200)
CHECK_LENGTHS = (9600, 24000, 4000)
CHECK_ATOL = 1e-3
MIN_SAMPLES = (MIN_INPUT_FRAMES - 1) * HOP_LENGTH
"""The shortest waveform batch the graph takes: one that gives the encoder's subsampling its 7 frames."""


class WaveformCTC(nn.Module):
    """What is exported: waveforms and lengths → CTC log-posteriors (float32) and lengths, through the
    model's own front-end, encoder and CTC head."""

    def __init__(self, model: ASRModel):
        super().__init__()
        self.model = model

    def forward(self, wav: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        hidden, lens = self.model.encode(*self.model.frontend(wav, wav_lens))
        return self.model.log_probs(hidden), lens


def units(tokenizer: Tokenizer) -> list[str]:
    """Every unit's spelling in id order (the blank first), for decoders that do not read bljust's tokenizer."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    return list(tokenizer.units)


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The tokenizer's state as JSON (metadata values are strings; a SentencePiece model goes as base64)."""
    state = dict(tokenizer.state_dict())
    if "model_proto" in state:
        state["model_proto"] = base64.b64encode(state["model_proto"]).decode("ascii")
    return json.dumps(state)


def tokenizer_from_metadata(meta: Mapping[str, str], path: str | Path) -> Tokenizer:
    """The tokenizer an exported file carries; a file without one was not written by ``bljust export``."""
    if TOKENIZER_KEY not in meta:
        raise ValueError(f"{path} carries no bljust tokenizer in its metadata: it is not a model written by "
                         f"'bljust export'")
    state = json.loads(meta[TOKENIZER_KEY])
    if "model_proto" in state:
        state["model_proto"] = base64.b64decode(state["model_proto"])
    return tokenizer_from_state(state)


def metadata(tokenizer: Tokenizer, cfg_dict: dict) -> dict[str, str]:
    """What decoding the exported file needs, and the config it was trained with, all as strings."""
    return {"bljust.export_version": EXPORT_VERSION,
            "bljust.sample_rate": str(SAMPLE_RATE),
            "bljust.blank_id": str(tokenizer.blank_id),
            "bljust.units": json.dumps(units(tokenizer)),
            TOKENIZER_KEY: tokenizer_json(tokenizer),
            "bljust.config": json.dumps(cfg_dict)}


def example_batch(lengths: tuple[int, ...], seed: int = 0) -> tuple[Tensor, Tensor]:
    """Noise waveforms of ``lengths`` samples, zero-padded to one batch."""
    g = torch.Generator().manual_seed(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for b, n in enumerate(lengths):
        wav[b, :n] = 0.1 * torch.randn(n, generator=g)
    return wav, torch.tensor(lengths, dtype=torch.int64)


def export_model(run_or_file: str | Path, fmt: str, out: str | Path) -> dict[str, str]:
    """Export the model of a run directory or model file to ``out``; returns the metadata written with it.

    ``out`` is written through a temporary file and replaced only once the export matched PyTorch."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    source = model_path(run_or_file)
    try:
        model, tokenizer, cfg = load_trained(source)
    except RuntimeError as e:  # an unreadable model file is bad input, reported without a traceback
        raise ValueError(f"{source} is not a bljust model file ({e})") from e
    check_exportable(cfg, fmt, source)
    meta = {**metadata(tokenizer, to_dict(cfg)), "bljust.source": str(source)}
    if fmt == "sherpa-onnx":
        export_sherpa(model, tokenizer, meta, Path(out))
        return meta
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        (_export_onnx if fmt == "onnx" else _export_torchscript)(WaveformCTC(model).eval(), meta, tmp)
        check_export(model, tmp, fmt)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


class WaveformLogProbs(nn.Module):
    """sherpa-onnx's form: whole waveforms (N, S), no lengths (it decodes one utterance at a time) → log-posteriors."""

    def __init__(self, model: ASRModel):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        lens = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64, device=x.device)
        hidden, _ = self.model.encode(*self.model.frontend(x, lens))
        return self.model.log_probs(hidden)


def sherpa_tokens(tokenizer: Tokenizer) -> str:
    """tokens.txt: ``unit id`` per line; the blank spelt ``<blk>`` (how sherpa-onnx finds it) and the character
    tokenizer's word separator as ``▁`` (which sherpa-onnx turns into a space, as for SentencePiece units)."""
    spellings = units(tokenizer)
    spellings[tokenizer.blank_id] = "<blk>"
    lines = []
    for i, unit in enumerate(spellings):
        unit = "▁" if unit == "|" and not isinstance(tokenizer, SentencePieceTokenizer) else unit
        if not unit or any(c.isspace() for c in unit):
            raise ValueError(f"unit {i} ({unit!r}) cannot be written to sherpa-onnx's tokens.txt")
        lines.append(f"{unit} {i}")
    return "\n".join(lines) + "\n"


def export_sherpa(model: ASRModel, tokenizer: Tokenizer, meta: dict[str, str], out: Path) -> None:
    """The ``sherpa-onnx`` directory ``out`` (see the module's docstring), checked against PyTorch first."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SHERPA_MODEL}.tmp-{os.getpid()}"
    wrapper = WaveformLogProbs(model).eval()
    try:
        example = example_batch((EXAMPLE_LENGTHS[0],) * 2)[0]  # a batch of one would be specialised to one
        _export_onnx(wrapper, meta, tmp, (example,), input_names=("x",), output_names=("logits",))
        wav = example_batch((CHECK_LENGTHS[1],), seed=1)[0]
        with torch.no_grad():
            want = wrapper(wav)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"x": wav.numpy()})[0])
        if got.shape != want.shape or not float((got - want).abs().max()) <= CHECK_ATOL:
            raise RuntimeError("the sherpa-onnx export's log-posteriors differ from PyTorch's")
        os.replace(tmp, out / SHERPA_MODEL)
    finally:
        tmp.unlink(missing_ok=True)
    (out / SHERPA_TOKENS).write_text(sherpa_tokens(tokenizer))


def check_exportable(cfg: Config, fmt: str, source: Path) -> None:
    """Refuse, before the slow export, what cannot be one graph (see the module's docstring for why)."""
    if cfg.model.loss != "ctc":
        raise ValueError(f"{source} is a transducer model (model.loss={cfg.model.loss}), which cannot be exported: "
                         f"its decoding feeds every emitted unit back into the prediction network, a search over "
                         f"frames and units rather than one graph from waveforms to posteriors; export a CTC model")
    if fmt == "sherpa-onnx" and cfg.features.normalize != "utterance":
        raise ValueError(f"{source} normalises its log-mel features with features.normalize={cfg.features.normalize}, "
                         f"and sherpa-onnx standardises every waveform before the model, which shifts such features; "
                         f"only a model trained with features.normalize=utterance is exact there (or use --format onnx)")
    if fmt in ("onnx", "sherpa-onnx") and cfg.model.arch == "cnn_lstm":
        raise ValueError(f"{source} has a cnn_lstm encoder, which exports to TorchScript only (--format "
                         f"torchscript): torch.export fixes the LSTM's time axis to the example's length, so an ONNX "
                         f"graph of it would fail on audio of any other length")


def _export_onnx(wrapper: nn.Module, meta: dict[str, str], path: Path, inputs: tuple | None = None,
                 input_names: tuple[str, ...] = INPUT_NAMES, output_names: tuple[str, ...] = OUTPUT_NAMES) -> None:
    """``wrapper`` as one ONNX file with ``meta`` in its metadata; every input's axes 0 (batch) and, for the
    waveform (the first input), 1 (samples) dynamic. Default: ``WaveformCTC``'s inputs and outputs."""
    batch, samples = torch.export.Dim("batch"), torch.export.Dim("samples")
    inputs = example_batch(EXAMPLE_LENGTHS) if inputs is None else inputs
    dynamic = {name: ({0: batch, 1: samples} if i == 0 else {0: batch}) for i, name in enumerate(input_names)}
    with _quiet_onnx_exporter():
        program = torch.onnx.export(wrapper, inputs, dynamo=True, verbose=False, input_names=list(input_names),
                                    output_names=list(output_names), dynamic_shapes=dynamic)
    program.model.metadata_props.update(meta)
    program.save(path, external_data=False)  # one file: what ships is what was checked


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """Keep the exporter's chatter off the console: a warning per torchvision op it skips (bljust uses none),
    INFO lines per graph rewrite, deprecation notices about torch's own internals, and a note that the batch
    axis, shared by both inputs, keeps one name. check_export judges the result instead."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [log.level for log in loggers]
    try:
        for log in loggers:
            log.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r".*axis name: \w+ will not be used")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


def _export_torchscript(wrapper: WaveformCTC, meta: dict[str, str], path: Path) -> None:
    with warnings.catch_warnings():
        # The encoders' input-size checks and pack_padded_sequence's read tensor values in Python, which tracing
        # warns of; they only raise on bad input, so freezing them as they were for the example loses nothing
        # (and check_export would catch a shape that froze).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example_batch(EXAMPLE_LENGTHS), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})


@torch.no_grad()
def check_export(model: ASRModel, path: Path, fmt: str) -> None:
    """Raise if the exported file's log-posteriors differ from the PyTorch model's on a batch whose size and
    lengths the export never saw (padding included): dynamic shapes that were baked in would show here."""
    wav, lens = example_batch(CHECK_LENGTHS, seed=1)
    want, want_lens = model(*model.frontend(wav, lens))
    if fmt == "onnx":
        got, got_lens = (torch.from_numpy(a) for a in OnnxCTC(path, threads=1).run(wav.numpy(), lens.numpy()))
    else:
        got, got_lens = torch.jit.load(str(path))(wav, lens)
    if not torch.equal(got_lens, want_lens):
        raise RuntimeError(f"the {fmt} export gives output lengths {got_lens.tolist()}, PyTorch {want_lens.tolist()}")
    worst = max(float((got[b, :n] - want[b, :n]).abs().max()) for b, n in enumerate(want_lens.tolist()))
    if not worst <= CHECK_ATOL:
        raise RuntimeError(f"the {fmt} export's log-posteriors differ from PyTorch's by up to {worst:.3g} "
                           f"(tolerance {CHECK_ATOL:g})")


class OnnxCTC:
    """An exported ONNX file in onnxruntime, with the tokenizer it carries: no PyTorch model code involved."""

    def __init__(self, path: str | Path, device: str = "cpu", threads: int = 0):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=_providers(device))
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors are its own types; name the file
            raise ValueError(f"{path} is not an ONNX model onnxruntime can load ({str(e).strip()})") from e
        names = tuple(i.name for i in self.session.get_inputs())
        if names != INPUT_NAMES:
            raise ValueError(f"{path} takes inputs {names}, not {INPUT_NAMES}: it is not a model written by "
                             f"'bljust export'")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.tokenizer = tokenizer_from_metadata(self.metadata, path)

    def run(self, wav: np.ndarray, wav_lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log-posteriors (B, T', V) and their lengths (B,) of zero-padded waveforms (B, S) and lengths (B,).

        A batch shorter than the subsampling's shortest input is padded up to it: the lengths keep padding
        out of every utterance's output, and a too-short utterance gets no frames instead of failing the batch."""
        if wav.shape[1] < MIN_SAMPLES:
            wav = np.pad(wav, ((0, 0), (0, MIN_SAMPLES - wav.shape[1])))
        log_probs, lens = self.session.run(list(OUTPUT_NAMES), {"wav": wav.astype(np.float32, copy=False),
                                                                "wav_lens": wav_lens.astype(np.int64, copy=False)})
        return log_probs, lens


def _providers(device: str) -> list[str]:
    """onnxruntime's execution providers for a ``--device``: CUDA only where this onnxruntime build has it."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: this onnxruntime runs on {', '.join(ort.get_available_providers())} "
                     f"(install onnxruntime-gpu for CUDA)")
