"""The demo corpus's synthetic speakers and the engines that voice them (see :mod:`bljust.data.synth` for the corpus).

Each *speaker* is a voice of one of three speech synthesis engines in Debian main (espeak-ng, flite, festival;
see docs/data.md) plus fixed offsets: speaking rate, pitch, a sox ``speed`` factor that also moves the formants,
a recording channel, a noise colour and level. Each utterance gets a little jitter of rate and pitch and additive
noise at 5-40 dB SNR. ``synthesize_task`` renders a task (utterances of one engine family) in a worker process:
per utterance one engine process and one sox process (resample, speed, channel); festival is started once per
batch of up to 60 sentences of one voice, because starting it per sentence is ~10x slower.

The engines and sox (in repeatable mode, without dither, with float output) are deterministic, and noise is added
in numpy from a per-utterance seed, so an utterance's audio depends on its plan alone.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
import soundfile as sf

from bljust.data.manifests import SAMPLE_RATE, SPLITS

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


def synthesize_task(items: Task) -> list[Result]:
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

