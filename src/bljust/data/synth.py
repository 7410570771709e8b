"""The demo corpus: Austen (or voice-assistant commands) read by many synthetic voices, split for semi-supervised ASR.

No real speech corpus is reachable from these machines, so bljust makes its own from speech
synthesis engines in Debian main (see docs/data.md): espeak-ng, flite and festival. Each
*speaker* is an engine voice plus fixed offsets (speaking rate, pitch, a sox ``speed`` factor
that also moves the formants, a recording channel, a noise colour and level); each utterance
gets a little jitter of rate and pitch and additive noise at 5-40 dB SNR.

Splits are by speaker: ``labeled`` (a few speakers, with transcripts), ``unlabeled`` (many
speakers, text withheld), ``dev`` and ``test`` (held-out speakers reading held-out sentences).
A :class:`~bljust.data.scenarios.Scenario` sets their sizes and the text domain (Austen or
:mod:`bljust.data.grammar`'s commands), and may add two things: *in-domain* unlabeled audio
(the dev and test speakers reading other sentences, put in the unlabeled split) and a
``test_unseen`` split whose speakers are in no other split. Each kind of audio is planned as a
*stream* with its own budget, speakers, sentence pool and random generator; the sentence pools
are disjoint, so no scored sentence is read in training, by any speaker.

Output: 16 kHz mono FLAC under ``out_dir/audio/<split>/<speaker>/<utt_id>.flac``, lhotse
manifests per split (:mod:`bljust.data.manifests`; supervision ``custom["group"]`` is the
voice family), also ``unlabeled_text``: the unlabeled recordings with their transcripts, for
topline runs; ``summary.json`` (scenario, hours per split and family, speed, speaker table),
``utterances.tsv`` (what was synthesised, including the unlabeled text the manifests withhold)
and ``lm_text.txt`` (text for an n-gram LM, without the sentences of any split but the labeled one).

Speed: ~185x real time with 2 processes for the default 166 minutes (about a minute), ~140x
for a 5-minute corpus. Per-utterance work is one engine process and one sox process
(resample, speed, channel); festival is started once per batch of up to 60 sentences of one
voice, because starting it per sentence is ~10x slower.

Everything is deterministic for a seed: the plan (speakers, sentences, jitter, noise seeds) is
drawn in the parent process from seeded generators, the engines and sox (in repeatable mode,
without dither, with float output) are deterministic, and noise is added in numpy from a
per-utterance seed, so the result does not depend on ``jobs`` or on scheduling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import scipy.fft
import soundfile as sf

from bljust.data.grammar import COMMAND_SENTENCES, command_sentences
from bljust.data.manifests import SAMPLE_RATE, SPLITS
# SCENARIOS is re-exported: callers of synthesize_corpus pick presets from it.
from bljust.data.scenarios import SCENARIOS, TEXT_DOMAINS, Scenario, resolve_scenario  # noqa: F401
from bljust.data.text import austen_sentences, normalize_transcript

logger = logging.getLogger("bljust.synth")

FAMILIES = ("espeak", "flite", "festival")
APT_INSTALL = ("apt-get install -y espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k "
               "festvox-us-slt-hts sox libsox-fmt-all flac")
ENGINE_BINARIES = {"espeak": "espeak-ng", "flite": "flite", "festival": "festival", "sox": "sox"}

# Speakers per split (the labeled count is an argument). Dev and test (and test_unseen) get
# one speaker of each family per cycle so per-family scores rest on more than one voice; the
# training splits lean towards espeak-ng, the family with by far the most distinct voices.
UNLABELED_SPEAKERS = 40
EVAL_SPEAKERS = 6
TRAIN_FAMILY_CYCLE = ("espeak", "flite", "festival", "espeak")
EVAL_FAMILY_CYCLE = ("espeak", "flite", "festival")
SCORED_SPLITS = ("dev", "test", "test_unseen")

ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan",
                 "en-gb-x-gbcwmd", "en-us-nyc")
# Human-sounding variants only (the list also has robots, whispers and croaks).
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
                   "klatt", "klatt2", "klatt3", "klatt4")
ESPEAK_WPM = 160  # espeak-ng's default 175 words/minute sounds hurried
# flite voice -> default f0 in Hz for int_f0_target_mean; None: the voice ignores it (rms).
# kal (8 kHz) is replaced by kal16.
FLITE_VOICES = {"kal16": 105.0, "awb": 100.0, "rms": None, "slt": 170.0}
# festival short name -> (voice function suffix, native pitch control?). The HTS voice
# ignores festival's f0 parameters, so its pitch moves with the sox speed factor instead.
FESTIVAL_VOICES = {"kal": ("kal_diphone", True), "ked": ("ked_diphone", True),
                   "slt": ("cmu_us_slt_arctic_hts", False)}
FESTIVAL_DIPHONE_STRETCH = 1.1  # what kal/ked set themselves; our tempo 1.0 keeps it
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1/f**alpha
SNR_RANGE_DB = (5.0, 40.0)

# CPU seconds per audio second relative to espeak-ng (measured: espeak-ng, flite kal16 and the
# festival diphone voices ~150-190x real time on one core, flite awb/rms/slt ~50x, festival's
# HTS slt ~25x); only used to start the slowest tasks first.
RELATIVE_COST = {("flite", "awb"): 3.0, ("flite", "rms"): 3.0, ("flite", "slt"): 3.0,
                 ("festival", "slt"): 6.0}

# First guess of audio seconds per word (engine pauses included) before any measurement;
# later rounds use the measured ratio of each split.
SECONDS_PER_WORD_GUESS = 0.37
MAX_ROUNDS = 20


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an engine voice with fixed offsets and a fixed channel."""
    id: str
    split: str
    family: str
    voice: str              # engine voice: "en-gb-x-rp+f2", "slt", "kal", ...
    tempo: float            # speaking-rate factor (>1 faster) of the final audio
    pitch: float            # semitones from the voice's default
    speed: float            # sox speed factor: scales pitch and formants (a "bigger/smaller" voice)
    channel: str            # channel name, for the summary
    channel_effects: tuple[str, ...]  # sox effects simulating it
    noise: str              # noise colour
    snr_db: float           # centre of this speaker's utterance SNRs
    level_db: float         # peak level of the output

    @property
    def native_pitch(self) -> bool:
        """Whether the engine sets this voice's pitch; otherwise it rides on the sox speed."""
        if self.family == "flite":
            return FLITE_VOICES[self.voice] is not None
        if self.family == "festival":
            return FESTIVAL_VOICES[self.voice][1]
        return True


@dataclass(frozen=True)
class Utterance:
    """One planned utterance, with everything needed to synthesise it reproducibly."""
    id: str
    split: str
    speaker: str
    text: str               # engine input (original punctuation)
    words: int              # whitespace words of text, for duration estimates
    tempo: float            # final tempo factor (speaker tempo x jitter)
    pitch: float            # final pitch in semitones (speaker pitch + jitter)
    snr_db: float
    noise_seed: int
    path: str


# ---------------------------------------------------------------------------------------------
# speakers


def _draw_channel(rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    kind = ("clean", "telephone", "highpass", "lowpass", "reverb", "reverb+lowpass")[rng.integers(6)]
    if kind == "clean":
        return kind, ()
    if kind == "telephone":
        return kind, ("sinc", "300-3400")
    if kind == "highpass":
        return kind, ("highpass", str(int(rng.integers(150, 401))))
    if kind == "lowpass":
        return kind, ("lowpass", str(int(rng.integers(3000, 6001))))
    # Mild rooms: reverberance 15-45 %, room scale 20-60 %.
    reverb = ("reverb", str(int(rng.integers(15, 46))), "50", str(int(rng.integers(20, 61))))
    if kind == "reverb":
        return kind, reverb
    return kind, reverb + ("lowpass", str(int(rng.integers(3500, 6001))))


def make_speakers(seed: int, labeled_speakers: int = 4, test_unseen: bool = False) -> dict[str, list[Speaker]]:
    """The speakers of every split; ids are unique across splits (``espeak07``, ``flite03``).

    With ``test_unseen``, a ``test_unseen`` entry gets 6 more speakers. They are dealt after all
    others, from the same generator, so every other speaker is the same with or without them.
    (flite and festival have 4 and 3 engine voices, so they share those with other splits'
    speakers, as dev and test already do, told apart by their offsets and channels.)
    """
    if labeled_speakers < 1:
        raise ValueError("labeled_speakers must be at least 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    counts = {"labeled": labeled_speakers, "unlabeled": UNLABELED_SPEAKERS,
              "dev": EVAL_SPEAKERS, "test": EVAL_SPEAKERS, "test_unseen": EVAL_SPEAKERS if test_unseen else 0}
    # Every espeak speaker gets its own accent x variant; flite and festival have few voices,
    # so they are dealt round-robin from a shuffled deck and told apart by their offsets.
    espeak_deck = [f"{v}+{var}" for v in ESPEAK_VOICES for var in ESPEAK_VARIANTS]
    espeak_deck = [espeak_deck[i] for i in rng.permutation(len(espeak_deck))]
    decks = {"espeak": espeak_deck,
             "flite": [list(FLITE_VOICES)[i] for i in rng.permutation(len(FLITE_VOICES))],
             "festival": [list(FESTIVAL_VOICES)[i] for i in rng.permutation(len(FESTIVAL_VOICES))]}
    dealt = defaultdict(int)
    speakers: dict[str, list[Speaker]] = {}
    # Eval speakers are dealt first, so dev and test each get distinct flite and festival voices.
    for split in ("dev", "test", "labeled", "unlabeled", "test_unseen"):
        cycle = EVAL_FAMILY_CYCLE if split in SCORED_SPLITS else TRAIN_FAMILY_CYCLE
        speakers[split] = []
        for k in range(counts[split]):
            family = cycle[k % len(cycle)]
            deck = decks[family]
            voice = deck[dealt[family] % len(deck)]
            dealt[family] += 1
            channel, effects = _draw_channel(rng)
            speakers[split].append(Speaker(
                id=f"{family}{dealt[family]:02d}", split=split, family=family, voice=voice,
                tempo=round(float(rng.uniform(0.85, 1.15)), 3),
                pitch=round(float(rng.uniform(-3.0, 3.0)), 2),
                speed=round(float(rng.uniform(0.92, 1.08)), 3),
                channel=channel, channel_effects=effects,
                noise=list(NOISE_COLOURS)[rng.integers(len(NOISE_COLOURS))],
                snr_db=round(float(rng.uniform(12.0, 33.0)), 1),
                level_db=round(float(rng.uniform(-12.0, -1.0)), 1)))
    return {split: speakers[split] for split in (*SPLITS, "test_unseen") if split in SPLITS or test_unseen}


# ---------------------------------------------------------------------------------------------
# engines (run in worker processes)


class SynthError(Exception):
    """One utterance failed in one engine; the message says why."""


def _run(cmd: list[str], *, input: bytes | None = None, timeout: float = 60.0) -> bytes:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"{cmd[0]} timed out after {timeout:.0f} s") from None
    except OSError as e:
        raise SynthError(f"{cmd[0]}: {e}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise SynthError(f"{cmd[0]} exited with {proc.returncode}: {err[-1] if err else 'no message'}")
    return proc.stdout


def _engine_controls(spk: Speaker, utt: Utterance) -> tuple[float, float, float]:
    """(engine tempo, engine pitch in semitones, sox speed) for one utterance.

    sox ``speed s`` raises pitch by s and shortens by s; the engine tempo compensates so the
    final tempo is ``utt.tempo``. Voices without pitch control get their pitch through speed.
    """
    speed = spk.speed
    pitch = utt.pitch
    if not spk.native_pitch:
        speed *= 2.0 ** (pitch / 12.0)
        pitch = 0.0
    return utt.tempo / speed, pitch, speed


def _espeak_wav(spk: Speaker, utt: Utterance) -> bytes:
    tempo, pitch, _ = _engine_controls(spk, utt)
    # espeak-ng pitch is 0-99 (50 default), roughly 4 units per semitone around the middle.
    p = int(round(min(max(50 + 4 * pitch, 5), 95)))
    wpm = int(round(min(max(ESPEAK_WPM * tempo, 80), 450)))
    # Text on stdin: no argument parsing surprises from text that starts with "-".
    return _run(["espeak-ng", "-v", spk.voice, "-s", str(wpm), "-p", str(p), "--stdout"],
                input=utt.text.encode())


def _flite_wav(spk: Speaker, utt: Utterance) -> bytes:
    tempo, pitch, _ = _engine_controls(spk, utt)
    cmd = ["flite", "-voice", spk.voice, "--setf", f"duration_stretch={1.0 / tempo:.4f}"]
    f0 = FLITE_VOICES[spk.voice]
    if f0 is not None:
        cmd += ["--setf", f"int_f0_target_mean={f0 * 2.0 ** (pitch / 12.0):.1f}"]
    return _run(cmd + ["-t", utt.text, "-o", "/dev/stdout"])


def _scheme_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival_batch(items: list[tuple[Speaker, Utterance]], tmp: Path) -> dict[str, Path | str]:
    """Synthesise utterances of one festival voice with ONE festival process.

    Loading the voice dominates a single call, so a batch serves every speaker built on that
    voice: rate and pitch are set per utterance anyway. Returns {utt id: wav path, or the
    reason it failed}; ``unwind-protect`` lets the script carry on past an utterance that fails.
    """
    voices = {spk.voice for spk, _ in items}
    assert len(voices) == 1, f"one festival voice per batch, got {voices}"
    func, native = FESTIVAL_VOICES[voices.pop()]
    lines = [f"(voice_{func})"]
    if not native:
        lines.append("(set! bljust_hts_params hts_engine_params)")
    wavs = {}
    for spk, utt in items:
        tempo, pitch, _ = _engine_controls(spk, utt)
        if native:
            f0 = 105.0 * 2.0 ** (pitch / 12.0)
            lines.append(f"(Parameter.set 'Duration_Stretch {FESTIVAL_DIPHONE_STRETCH / tempo:.4f})")
            lines.append(f"(set! int_lr_params '((target_f0_mean {f0:.1f}) (target_f0_std {f0 * 0.14:.1f}) "
                         "(model_f0_mean 170) (model_f0_std 34)))")
        else:
            # hts_engine's -r is a speech-rate factor (>1 faster).
            lines.append(f'(set! hts_engine_params (cons (list "-r" {tempo:.4f}) bljust_hts_params))')
        wav = tmp / f"{utt.id}.wav"
        wavs[utt.id] = wav
        lines.append(f"(unwind-protect (begin (utt.save.wave (utt.synth (Utterance Text "
                     f"{_scheme_string(utt.text)})) {_scheme_string(str(wav))} 'riff) "
                     f"(format t \"bljust-ok %s\\n\" {_scheme_string(utt.id)})) "
                     f"(format t \"bljust-fail %s\\n\" {_scheme_string(utt.id)}))")
    script = tmp / "batch.scm"
    script.write_text("\n".join(lines) + "\n")
    results: dict[str, Path | str] = {}
    try:
        out = _run(["festival", "--batch", str(script)], timeout=30.0 + 10.0 * len(items)).decode(errors="replace")
    except SynthError as e:
        out, batch_error = "", str(e)
    else:
        batch_error = "festival reported an error for this sentence"
    ok = {line.split(None, 1)[1].strip() for line in out.splitlines() if line.startswith("bljust-ok ")}
    for _, utt in items:
        wav = wavs[utt.id]
        results[utt.id] = wav if utt.id in ok and wav.is_file() else batch_error
    return results


def _channel_audio(spk: Speaker, utt: Utterance, wav: bytes | Path) -> np.ndarray:
    """Resample to 16 kHz mono float with the speed factor and the speaker's channel: one sox call."""
    _, _, speed = _engine_controls(spk, utt)
    # -R repeatable, -D no dither (random), -G guard against clipping, float output: the
    # result is deterministic and full precision until noise is added.
    src = ["--ignore-length", "-t", "wav", "-"] if isinstance(wav, bytes) else [str(wav)]
    cmd = (["sox", "-R", "-D", "-G", "-V1", *src, "-t", "f32", "-c", "1", "-r", str(SAMPLE_RATE), "-",
            "speed", f"{speed:.5f}", "rate", str(SAMPLE_RATE), *spk.channel_effects])
    out = _run(cmd, input=wav if isinstance(wav, bytes) else None)
    audio = np.frombuffer(out, dtype=np.float32).astype(np.float64)
    if audio.size < SAMPLE_RATE // 10 or not np.any(np.abs(audio) > 1e-4):
        raise SynthError("engine produced no audio")
    return audio


def _coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise with power spectrum ~ 1/f**alpha (white, pink, brown)."""
    alpha = NOISE_COLOURS[colour]
    if alpha == 0.0:
        return rng.standard_normal(n)
    # Shape white noise in the frequency domain, at an FFT-friendly length (an arbitrary
    # utterance length can make the FFT 10x slower), then cut to size.
    m = scipy.fft.next_fast_len(n, real=True)
    spec = scipy.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1.0 / SAMPLE_RATE)
    spec *= np.maximum(f, 50.0) ** (-alpha / 2.0)  # floor at 50 Hz: no DC blow-up
    noise = scipy.fft.irfft(spec, m)[:n]
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _speech_power(x: np.ndarray) -> float:
    """Mean power over active 25 ms frames, so pauses don't make the SNR look better than it is."""
    frame = SAMPLE_RATE // 40
    n = len(x) // frame
    if n == 0:
        return float(np.mean(x ** 2))
    energies = np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)
    active = energies[energies > energies.max() * 1e-3]  # within 30 dB of the loudest frame
    return float(active.mean())


def _finish(audio: np.ndarray, spk: Speaker, utt: Utterance) -> np.ndarray:
    """Level, noise at the utterance's SNR, int16."""
    rng = np.random.default_rng(utt.noise_seed)
    audio = audio / np.max(np.abs(audio))
    noise = _coloured_noise(len(audio), spk.noise, rng)
    audio = audio + noise * math.sqrt(_speech_power(audio) / 10.0 ** (utt.snr_db / 10.0))
    audio *= 10.0 ** (spk.level_db / 20.0) / np.max(np.abs(audio))
    return np.round(audio * 32767.0).astype(np.int16)


Task = list[tuple[Speaker, Utterance]]  # one engine family (for festival: one voice)
Result = tuple[str, int | None, str | None]  # utt id, samples written (None: failed), reason


def _synthesize_task(items: Task) -> list[Result]:
    """Worker: synthesise, channel, add noise, write FLAC for each utterance of a task.

    An engine failure is retried once; the second failure is reported, not raised, so one bad
    sentence never stops the corpus.
    """
    family = items[0][0].family
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bljust-synth-") as tmpdir:
        pending = list(items)
        for attempt in range(2):
            if not pending:
                break
            engine_out: dict[str, bytes | Path | str] = {}
            if family == "festival":
                attempt_dir = Path(tmpdir) / f"try{attempt}"
                attempt_dir.mkdir()
                engine_out.update(_festival_batch(pending, attempt_dir))
            else:
                synth = _espeak_wav if family == "espeak" else _flite_wav
                for spk, utt in pending:
                    try:
                        engine_out[utt.id] = synth(spk, utt)
                    except SynthError as e:
                        engine_out[utt.id] = str(e)
            retry = []
            for spk, utt in pending:
                out = engine_out[utt.id]
                try:
                    if isinstance(out, str):
                        raise SynthError(out)
                    samples = _finish(_channel_audio(spk, utt, out), spk, utt)
                    path = Path(utt.path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    sf.write(str(path), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
                    results[utt.id] = (utt.id, len(samples), None)
                except (SynthError, RuntimeError, OSError) as e:
                    results[utt.id] = (utt.id, None, str(e))
                    retry.append((spk, utt))
            pending = retry
    return [results[utt.id] for _, utt in items]


# ---------------------------------------------------------------------------------------------
# planning and the main loop


def check_engines() -> None:
    """Raise RuntimeError naming the apt-get command if an engine binary or voice is missing."""
    missing = [b for b in ENGINE_BINARIES.values() if shutil.which(b) is None]
    if missing:
        raise RuntimeError(f"speech synthesis needs {', '.join(missing)}, not found on PATH; "
                           f"install with: {APT_INSTALL}")
    out = subprocess.run(["festival", "-b", "(print (voice.list))"], capture_output=True,
                         text=True, timeout=60).stdout
    absent = [func for func, _ in FESTIVAL_VOICES.values() if func not in out]
    if absent:
        raise RuntimeError(f"festival voices {', '.join(absent)} are not installed; "
                           f"install with: {APT_INSTALL}")


# Planning streams: name -> the manifest split its utterances go to. Utterances of a stream come
# from its own speakers, sentence pool and generator; "in_domain" is the dev and test speakers
# reading other sentences for the unlabeled split. This order is the planning order of a round
# (the four splits first, as before streams existed, so their utterance ids are unchanged).
STREAMS = {"labeled": "labeled", "unlabeled": "unlabeled", "dev": "dev", "test": "test",
           "test_unseen": "test_unseen", "in_domain": "unlabeled"}
# Sentence-pool order: the pool sizes are proportional to the budgets and the last pool takes
# the rounding remainder, so "test" stays last, and a stream without budget gets an empty pool
# and leaves the others exactly as they were.
POOL_ORDER = ("labeled", "unlabeled", "in_domain", "dev", "test_unseen", "test")
# Per-stream generator keys: the four splits keep the index they always had.
STREAM_RNG_KEYS = {"labeled": 0, "unlabeled": 1, "dev": 2, "test": 3, "in_domain": 4, "test_unseen": 5}


@dataclass
class _SplitState:
    """Planning state of one stream (a split, or the in-domain part of the unlabeled split) across rounds."""
    name: str                     # stream name (a key of STREAMS)
    split: str                    # the manifest split its utterances go to
    budget_s: float
    speakers: list[Speaker]
    pool: list[int]               # indices into the sentence list
    rng: np.random.Generator
    cursor: int = 0
    planned: int = 0
    # Measured audio (and words) of finished utterances. Integer samples, not float seconds:
    # results arrive in scheduling order, and an exact sum keeps the next round's plan (and so
    # the corpus) independent of that order.
    samples: int = 0
    words: int = 0
    reused_warning: bool = False

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def seconds_per_word(self) -> float:
        return self.seconds / self.words if self.words else SECONDS_PER_WORD_GUESS


def _sentence_pools(n_sentences: int, budgets: dict[str, float], rng: np.random.Generator) -> dict[str, list[int]]:
    """Disjoint sentence pools per stream (in the order of ``budgets``), sized in proportion to its minutes.

    Disjoint pools are what keeps dev/test sentences out of training; a stream that needs more
    sentences than its pool reuses its own pool (with other speakers), never another's.
    """
    order = rng.permutation(n_sentences).tolist()
    total = sum(budgets.values())
    pools, start = {}, 0
    for i, split in enumerate(budgets):
        if i == len(budgets) - 1:
            size = n_sentences - start
        else:
            size = int(n_sentences * budgets[split] / total) if total > 0 else 0
        if budgets[split] > 0:
            size = max(size, 1)
        pools[split] = order[start:start + size]
        start += size
    return pools


def _plan_round(st: _SplitState, sentences: list[str], word_counts: list[int], audio_dir: Path,
                spk_counts: dict[str, int]) -> list[Utterance]:
    """Enough new utterances to cover the split's remaining budget at the measured speaking rate."""
    deficit = st.budget_s - st.seconds
    spw = st.seconds_per_word()
    plan, estimate = [], 0.0
    while estimate < deficit and st.pool:
        if st.cursor >= len(st.pool) and not st.reused_warning:
            logger.warning("%s used all %d of its sentences; reusing them with other speakers",
                           st.name, len(st.pool))
            st.reused_warning = True
        idx = st.pool[st.cursor % len(st.pool)]
        st.cursor += 1
        # Round-robin over the stream's speakers, whose order interleaves the families.
        spk = st.speakers[st.planned % len(st.speakers)]
        st.planned += 1
        spk_counts[spk.id] += 1
        utt_id = f"{spk.id}-{spk_counts[spk.id]:05d}"
        plan.append(Utterance(
            id=utt_id, split=st.split, speaker=spk.id, text=sentences[idx], words=word_counts[idx],
            tempo=round(spk.tempo * float(st.rng.uniform(0.94, 1.06)), 4),
            pitch=round(spk.pitch + float(st.rng.uniform(-1.0, 1.0)), 3),
            snr_db=round(float(np.clip(spk.snr_db + st.rng.uniform(-7.0, 7.0), *SNR_RANGE_DB)), 2),
            noise_seed=int(st.rng.integers(2 ** 63)),
            path=str(audio_dir / st.split / spk.id / f"{utt_id}.flac")))
        estimate += word_counts[idx] * spw
    return plan


def _tasks(plan: list[Utterance], speakers: dict[str, Speaker]) -> list[Task]:
    """Group a round's utterances into tasks: festival by voice in big batches (a festival start
    costs 0.5-0.8 s), espeak-ng and flite in small chunks (one process per utterance anyway)."""
    groups: dict[tuple[str, str], Task] = defaultdict(list)
    for utt in plan:
        spk = speakers[utt.speaker]
        groups[(spk.family, spk.voice if spk.family == "festival" else "")].append((spk, utt))
    tasks = []
    for (family, _), items in groups.items():
        size = 60 if family == "festival" else 12
        tasks += [items[i:i + size] for i in range(0, len(items), size)]

    def cost(task: Task) -> float:
        return sum(RELATIVE_COST.get((spk.family, spk.voice), 1.0) * utt.words for spk, utt in task)

    # Most expensive first, so the slow tail of a round is short.
    return sorted(tasks, key=cost, reverse=True)


@contextlib.contextmanager
def _worker_pool(jobs: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool for the whole run (None for jobs=1: run here, simpler to debug, same result).

    On an error (or Ctrl-C) queued work is cancelled instead of waited for. Leaving the block
    reaps the workers, which is also when their CPU time becomes measurable.
    """
    if jobs <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(max_workers=jobs)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _run_tasks(tasks: list[Task], pool: ProcessPoolExecutor | None,
               on_done: Callable[[list[Result]], None]) -> None:
    """Run tasks in ``pool`` (or here, without one), handing each result to ``on_done`` as it comes."""
    if pool is None:
        for task in tasks:
            on_done(_synthesize_task(task))
        return
    for fut in as_completed([pool.submit(_synthesize_task, task) for task in tasks]):
        on_done(fut.result())


def domain_sentences(text: str, seed: int, n_commands: int = COMMAND_SENTENCES) -> list[str]:
    """The engine-input sentences of a text domain, whose indices the sentence pools hold.

    Austen's list is the same for every seed (the pools shuffle it); the command list is drawn
    from the grammar with the seed.
    """
    if text == "austen":
        return austen_sentences()
    if text == "commands":
        return command_sentences(seed, n_commands)
    raise ValueError(f"unknown text domain {text!r}; choose from {', '.join(TEXT_DOMAINS)}")


def _stream_speakers(speakers_by_split: dict[str, list[Speaker]], stream: str) -> list[Speaker]:
    if stream == "in_domain":
        # The scored population, dev then test: the round-robin still alternates families.
        return speakers_by_split["dev"] + speakers_by_split["test"]
    return speakers_by_split[stream]


def _plan_states(scenario: Scenario, seed: int, audio_dir: Path
                 ) -> tuple[list[str], list[int], dict[str, list[Speaker]], dict[str, _SplitState]]:
    """Sentences, their word counts, the speakers by split and one planning state per stream.

    Streams that a scenario does not use (no in-domain audio, no test_unseen) are absent: they
    draw nothing, so the four splits are planned exactly as before scenarios existed.
    """
    budgets = {"labeled": scenario.labeled_minutes * 60.0, "unlabeled": scenario.unlabeled_minutes * 60.0,
               "dev": scenario.dev_minutes * 60.0, "test": scenario.test_minutes * 60.0,
               "test_unseen": scenario.test_unseen_minutes * 60.0, "in_domain": scenario.in_domain_minutes * 60.0}
    sentences = domain_sentences(scenario.text, seed)
    # Only for duration estimates, so whitespace words are close enough (and 10x cheaper).
    word_counts = [len(s.split()) for s in sentences]
    speakers_by_split = make_speakers(seed, scenario.labeled_speakers, test_unseen=budgets["test_unseen"] > 0)
    pools = _sentence_pools(len(sentences), {name: budgets[name] for name in POOL_ORDER},
                            np.random.default_rng(np.random.SeedSequence([seed, 2])))
    states = {name: _SplitState(name, split, budgets[name], _stream_speakers(speakers_by_split, name), pools[name],
                                np.random.default_rng(np.random.SeedSequence([seed, 3, STREAM_RNG_KEYS[name]])))
              for name, split in STREAMS.items() if name in SPLITS or budgets[name] > 0}
    return sentences, word_counts, speakers_by_split, states


def synthesize_corpus(out_dir: str | Path, labeled_minutes: float | None = None,
                      unlabeled_minutes: float | None = None, dev_minutes: float | None = None,
                      test_minutes: float | None = None, seed: int = 0, jobs: int = 2, progress: bool = True,
                      labeled_speakers: int | None = None, *, scenario: str | Scenario = "unseen",
                      in_domain_minutes: float | None = None, test_unseen_minutes: float | None = None,
                      text: str | None = None) -> dict[str, Any]:
    """Synthesise a corpus into ``out_dir``; return (and write as summary.json) its summary.

    ``scenario`` is a preset name of :data:`SCENARIOS` (default ``unseen``: the original demo
    corpus, identical for a seed to what this function made before scenarios existed) or a
    :class:`Scenario`; every other setting that is not None overrides the scenario's value.

    Utterances are added to each stream until its minute budget is reached: the plan estimates
    durations from word counts, the real durations are measured, and further rounds fill any
    shortfall. Engine failures on a sentence are retried once and then skipped with a warning.
    """
    from tqdm.auto import tqdm

    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    resolved = resolve_scenario(scenario, labeled_minutes=labeled_minutes, labeled_speakers=labeled_speakers,
                                unlabeled_minutes=unlabeled_minutes, in_domain_minutes=in_domain_minutes,
                                test_unseen_minutes=test_unseen_minutes, dev_minutes=dev_minutes,
                                test_minutes=test_minutes, text=text)
    check_engines()
    out_dir = Path(out_dir).resolve()
    audio_dir = out_dir / "audio"
    sentences, word_counts, speakers_by_split, states = _plan_states(resolved, seed, audio_dir)
    speakers = {s.id: s for spks in speakers_by_split.values() for s in spks}

    spk_counts: dict[str, int] = defaultdict(int)
    done: dict[str, tuple[Utterance, int]] = {}   # utt id -> (utterance, samples)
    stream_of: dict[str, str] = {}                # utt id -> stream name
    plan_order: list[Utterance] = []
    skipped: list[dict[str, str]] = []
    audio_samples = 0

    with _worker_pool(jobs) as pool, tqdm(total=0, unit="utt", desc="synthesising", disable=not progress) as bar:
        for round_no in range(MAX_ROUNDS):
            plan = []
            for name, st in states.items():
                for utt in _plan_round(st, sentences, word_counts, audio_dir, spk_counts):
                    stream_of[utt.id] = name
                    plan.append(utt)
            if not plan:
                break
            plan_order += plan
            by_id = {u.id: u for u in plan}
            bar.total += len(plan)
            bar.refresh()
            before = {name: st.samples for name, st in states.items()}

            def on_done(results: list[Result]) -> None:
                nonlocal audio_samples
                for utt_id, samples, reason in results:
                    utt = by_id[utt_id]
                    if samples is None:
                        spk = speakers[utt.speaker]
                        engine = ENGINE_BINARIES[spk.family]
                        logger.warning("skipped %s: %s voice %s failed twice on %r: %s",
                                       utt_id, engine, spk.voice, utt.text, reason)
                        skipped.append({"id": utt_id, "engine": engine, "voice": spk.voice, "reason": str(reason)})
                        continue
                    done[utt_id] = (utt, samples)
                    st = states[stream_of[utt_id]]
                    st.samples += samples
                    st.words += utt.words
                    audio_samples += samples
                bar.update(len(results))
                bar.set_postfix(audio_min=f"{audio_samples / SAMPLE_RATE / 60:.1f}")

            t_round, samples_before = time.perf_counter(), audio_samples
            _run_tasks(_tasks(plan, speakers), pool, on_done)
            logger.info("round %d: %d utterances, %.1f min of audio in %.1f s", round_no + 1, len(plan),
                        (audio_samples - samples_before) / SAMPLE_RATE / 60.0, time.perf_counter() - t_round)
            stuck = [name for name, st in states.items() if st.samples == before[name] and st.seconds < st.budget_s]
            if stuck:
                raise RuntimeError(f"no utterance of {', '.join(stuck)} could be synthesised in "
                                   f"round {round_no + 1}; see the warnings of logger 'bljust.synth'")
        else:
            logger.warning("stopped after %d rounds with budgets not yet reached", MAX_ROUNDS)

    splits = [*SPLITS, *(["test_unseen"] if "test_unseen" in states else [])]
    _write_manifests(out_dir, splits, plan_order, done, speakers)
    _write_utterance_table(out_dir / "utterances.tsv", plan_order, done, speakers)
    summary = _summarize(plan_order, done, speakers, skipped, states, stream_of, resolved, len(sentences), seed,
                         jobs, wall=time.perf_counter() - t0, cpu=_cpu_seconds() - cpu0)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_lm_text(out_dir)
    return summary


def read_summary(out_dir: Path) -> dict:
    """A synthesised corpus's summary.json ({} when the directory has none: an imported corpus); a file that is not
    a JSON object is a ValueError naming it."""
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable corpus summary ({e})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{path}: not a readable corpus summary (a JSON {type(summary).__name__}, not an object)")
    return summary


def write_lm_text(out_dir: str | Path) -> Path:
    """Write ``lm_text.txt``: text for a word n-gram LM, one normalised sentence per line.

    Every sentence of the corpus's text domain except those read in the unlabeled, dev, test
    and test_unseen splits: the labeled transcripts plus the text no audio uses, like
    LibriSpeech's LM corpus beside its audio. For Austen that is every sentence of the novels
    (of any length); for commands, the corpus's whole grammar-drawn list (same seed and size,
    from summary.json). The scored sentences must stay out (they would leak the answers), and so
    does the unlabeled split's text, which the manifests withhold. Needs the corpus's
    ``utterances.tsv``; a corpus without ``summary.json`` or without a text domain in it
    predates the commands domain, so it is Austen.
    """
    out_dir = Path(out_dir)
    table = out_dir / "utterances.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} not found: lm_text.txt is derived from a synthesised corpus's utterance table")
    held_out = set()
    with open(table, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        split_col, text_col = header.index("split"), header.index("text")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) > text_col and cols[split_col] != "labeled":
                held_out.add(normalize_transcript(cols[text_col]))
    summary = read_summary(out_dir)
    settings = summary.get("scenario_settings", {})
    if settings.get("text", "austen") == "austen":
        universe = austen_sentences(1, 10**6)
    else:
        universe = domain_sentences(settings["text"], summary["seed"], summary["text_sentences"])
    lines = [t for t in (normalize_transcript(s) for s in universe) if t and t not in held_out]
    path = out_dir / "lm_text.txt"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (workers, engines, sox)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _write_utterance_table(path: Path, plan_order: list[Utterance], done: dict[str, tuple[Utterance, int]],
                           speakers: dict[str, Speaker]) -> None:
    """What was synthesised, one row per utterance, including the sentence read.

    This keeps the unlabeled split's text (withheld from its manifests) for checks and oracle
    toplines; training code must read the manifests, not this table.
    """
    rows = ["id\tsplit\tspeaker\tfamily\tvoice\ttempo\tpitch\tsnr_db\tseconds\ttext"]
    for utt in plan_order:
        if utt.id in done:
            spk = speakers[utt.speaker]
            rows.append("\t".join([utt.id, utt.split, utt.speaker, spk.family, spk.voice, f"{utt.tempo:g}",
                                   f"{utt.pitch:g}", f"{utt.snr_db:g}", f"{done[utt.id][1] / SAMPLE_RATE:.3f}",
                                   utt.text]))
    path.write_text("\n".join(rows) + "\n")


def _write_manifests(out_dir: Path, splits: list[str], plan_order: list[Utterance],
                     done: dict[str, tuple[Utterance, int]], speakers: dict[str, Speaker]) -> None:
    """Manifests of ``splits``, and of ``unlabeled_text``: the unlabeled recordings with transcripts."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from bljust.data.manifests import write_split

    entries: dict[str, list[tuple[Recording, Utterance]]] = defaultdict(list)
    for utt in plan_order:
        if utt.id not in done:
            continue
        rec = Recording.from_file(utt.path, recording_id=utt.id)
        if rec.num_samples != done[utt.id][1] or rec.sampling_rate != SAMPLE_RATE:
            raise RuntimeError(f"{utt.path}: audio on disk does not match what was written")
        entries[utt.split].append((rec, utt))

    def supervision(rec: Recording, utt: Utterance, with_text: bool) -> SupervisionSegment:
        return SupervisionSegment(
            id=utt.id, recording_id=utt.id, start=0.0, duration=rec.duration, channel=0,
            text=normalize_transcript(utt.text) if with_text else None,
            speaker=utt.speaker, language="English", custom={"group": speakers[utt.speaker].family})

    # unlabeled_text is written last: a crash in between must not leave a corpus whose only
    # unlabeled manifests are the transcribed ones.
    for split, manifest_split, with_text in [*((s, s, s != "unlabeled") for s in splits),
                                             ("unlabeled", "unlabeled_text", True)]:
        items = entries[split]
        write_split(out_dir, manifest_split, RecordingSet.from_recordings(rec for rec, _ in items),
                    SupervisionSet.from_segments(supervision(rec, utt, with_text) for rec, utt in items))


def _totals(items: Iterable[tuple[Utterance, int]]) -> dict[str, Any]:
    items = list(items)
    seconds = sum(n for _, n in items) / SAMPLE_RATE
    return {"hours": round(seconds / 3600.0, 4), "minutes": round(seconds / 60.0, 3),
            "seconds": round(seconds, 3), "utterances": len(items),
            "speakers": len({u.speaker for u, _ in items})}


def _summarize(plan_order: list[Utterance], done: dict[str, tuple[Utterance, int]],
               speakers: dict[str, Speaker], skipped: list[dict[str, str]], states: dict[str, _SplitState],
               stream_of: dict[str, str], scenario: Scenario, n_sentences: int, seed: int, jobs: int,
               wall: float, cpu: float) -> dict[str, Any]:
    finished = [done[u.id] for u in plan_order if u.id in done]

    def family(item: tuple[Utterance, int]) -> str:
        return speakers[item[0].speaker].family

    def entry(items: list[tuple[Utterance, int]], budget_s: float) -> dict[str, Any]:
        return {**_totals(items), "budget_minutes": round(budget_s / 60.0, 3),
                "families": {f: _totals(it for it in items if family(it) == f) for f in FAMILIES}}

    splits = {}
    for split in dict.fromkeys(st.split for st in states.values()):
        items = [it for it in finished if it[0].split == split]
        splits[split] = entry(items, sum(st.budget_s for st in states.values() if st.split == split))
    if "in_domain" in states:
        # The part of the unlabeled split that the dev and test speakers read.
        splits["unlabeled"]["in_domain"] = entry([it for it in finished if stream_of[it[0].id] == "in_domain"],
                                                 states["in_domain"].budget_s)
    total = _totals(finished)
    return {
        "seed": seed,
        "jobs": jobs,
        "scenario": scenario.name,
        # The values the corpus was made with: the scenario's, with any overrides applied.
        "scenario_settings": scenario.settings(),
        # Size of the sentence list the pools index (write_lm_text redraws a command list of it).
        "text_sentences": n_sentences,
        "splits": splits,
        "families": {f: _totals(it for it in finished if family(it) == f) for f in FAMILIES},
        "total": total,
        "skipped": skipped,
        "wall_seconds": round(wall, 2),
        "real_time_factor": round(total["seconds"] / wall, 1) if wall > 0 else None,
        # Audio seconds per CPU second (all processes): the speed the machine would give
        # without other load, per core.
        "cpu_seconds": round(cpu, 2),
        "real_time_factor_per_cpu": round(total["seconds"] / cpu, 1) if cpu > 0 else None,
        # JSON-ready (lists, not tuples), so the returned dict equals summary.json read back.
        "speaker_details": {s.id: json.loads(json.dumps({k: v for k, v in asdict(s).items() if k != "id"}))
                     for s in speakers.values()},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: the scenario, one row per split and voice family (and the in-domain part
    of the unlabeled split), then totals and speed."""
    header = f"{'split':<11} {'family':<9} {'hours':>7} {'minutes':>8} {'utts':>6} {'spkrs':>6}"
    lines = []
    if "scenario" in summary:  # corpora made before scenarios have none
        settings = summary["scenario_settings"]
        lines.append(f"scenario {summary['scenario']}: {settings['text']} text, "
                     + ", ".join(f"{k} {v:g}" for k, v in settings.items() if k != "text"))
    lines += [header, "-" * len(header)]

    def row(split: str, fam: str, t: dict[str, Any]) -> str:
        return (f"{split:<11} {fam:<9} {t['hours']:>7.3f} {t['minutes']:>8.1f} "
                f"{t['utterances']:>6d} {t['speakers']:>6d}")

    for split, s in summary["splits"].items():
        lines.append(row(split, "all", s))
        for fam, t in s["families"].items():
            lines.append(row("", fam, t))
        if "in_domain" in s:
            lines.append(row("", "in-domain", s["in_domain"]))
    lines.append("-" * len(header))
    for fam, t in summary["families"].items():
        lines.append(row("total", fam, t))
    lines.append(row("total", "all", summary["total"]))
    lines.append(f"synthesis: {summary['wall_seconds']:.1f} s wall clock, "
                 f"{summary['real_time_factor']}x real time with {summary['jobs']} job(s) "
                 f"({summary['real_time_factor_per_cpu']}x per CPU second); "
                 f"{len(summary['skipped'])} sentence(s) skipped")
    return "\n".join(lines)
