"""The demo corpus: Austen (or voice-assistant commands) read by many synthetic voices, split for semi-supervised ASR.

No real speech corpus is reachable from these machines, so bljust makes its own from speech
synthesis engines in Debian main (see docs/data.md): espeak-ng, flite and festival. The speakers
(an engine voice with fixed offsets and a channel) and the rendering of one utterance are in
:mod:`bljust.data.voices`; this module plans the corpus, runs the rendering in worker processes
and writes the manifests and summaries.

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
for a 5-minute corpus.

Everything is deterministic for a seed: the plan (speakers, sentences, jitter, noise seeds) is
drawn in the parent process from seeded generators, and an utterance's audio depends on its plan
alone (:mod:`bljust.data.voices`), so the result does not depend on ``jobs`` or on scheduling.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from bljust.data.grammar import COMMAND_SENTENCES, command_sentences
from bljust.data.manifests import SAMPLE_RATE, SPLITS
# SCENARIOS is re-exported: callers of synthesize_corpus pick presets from it.
from bljust.data.scenarios import SCENARIOS, TEXT_DOMAINS, Scenario, resolve_scenario  # noqa: F401
from bljust.data.text import austen_sentences, normalize_transcript
from bljust.data.voices import (ENGINE_BINARIES, FAMILIES, RELATIVE_COST, SNR_RANGE_DB, Result, Speaker, Task,
                                Utterance, check_engines, make_speakers, synthesize_task)

logger = logging.getLogger("bljust.synth")

# First guess of audio seconds per word (engine pauses included) before any measurement;
# later rounds use the measured ratio of each split.
SECONDS_PER_WORD_GUESS = 0.37
MAX_ROUNDS = 20


# ---------------------------------------------------------------------------------------------
# planning and the main loop


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
            on_done(synthesize_task(task))
        return
    for fut in as_completed([pool.submit(synthesize_task, task) for task in tasks]):
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
