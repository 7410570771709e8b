"""The report's tables: its title and set-up, the error rates (with their bar chart), the share of the label gap,
the linear probe, the health of g, the pseudo-labels, the voice families, the cost and every run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt

from bljust.compare.budget import ABLATIONS, RULE_TITLES, TOPLINE
from bljust.compare.jobs import RANDOM_INIT
from bljust.compare.significance import REFERENCES
from bljust.report.numbers import (DASH, KEY_NAMES, SCORED_SPLITS, Inputs, field, has_lm, label, mean_std, num,
                                   optional_splits, pct, relative, run_summary, run_value, summarize)
from bljust.report.render import Bold, save_figure

SPLIT_NOTES = {"test_unseen": "a test set of voices in no other split",
               "dev_other": ("the corpus's harder dev set (LibriSpeech's dev-other), reported only: the checkpoint and "
                             "the LM's weight and word score are chosen on dev alone"),
               "test_other": "the corpus's harder test set (LibriSpeech's test-other)"}
"""What the error table says of each of OPTIONAL_EVAL_SPLITS that it shows."""
GAP_KEYS = (*((f"{split}_cer", f"{split} CER") for split in SCORED_SPLITS),
            *((f"{split}_lm_wer", f"{split} WER (LM)") for split in SCORED_SPLITS))
"""The error rates whose label gap (supervised − topline) the report shares out, when both have them."""
COST_COLUMNS = (  # (header, results key, format, scale)
    ("labeled batches", "labeled_batches", ",.0f", 1), ("unlabeled batches", "unlabeled_batches", ",.0f", 1),
    ("batch passes", "batch_passes", ",.0f", 1), ("train min", "train_seconds", ".1f", 1 / 60),
    ("wall min", "wall_seconds", ".1f", 1 / 60), ("steps", "steps", ",.0f", 1),
    ("audio h", "audio_hours", ".2f", 1), ("labeled h", "labeled_hours", ".2f", 1),
    ("unlabeled h", "unlabeled_hours", ".2f", 1), ("labeled passes", "labeled_passes", ".1f", 1),
    ("unlabeled passes", "unlabeled_passes", ".1f", 1))
COST_NOTES = {
    "passes": ("The budget counts batch passes: one forward-backward pass over one batch, labeled or unlabeled, "
               "so batch passes = labeled + unlabeled batches."),
    "labeled": ("The budget counts supervised updates on labeled batches (PL's pseudo-labeled batches included); "
                "the unlabeled batches are the work each method's design adds on top, priced here in batch passes "
                "and minutes."),
}
SSL_HEALTH = (("ssl_acc", "masked acc %", 100.0), ("ssl_acc_majority", "majority class %", 100.0),
              ("ssl_acc_chance", "chance %", 100.0), ("ssl_masked_frac", "masked %", 100.0),
              ("ssl_code_usage", "code usage %", 100.0))


def _rule_title(results: dict) -> str | None:
    """The budget rule in a few words ("equal labeled updates"), None when results.json does not say."""
    rule = (results.get("budget") or {}).get("budget_rule")
    return RULE_TITLES.get(rule, rule) if rule else None


def title(inp: Inputs) -> list[tuple]:
    rule = _rule_title(inp.results)
    return [("h", 1, f"bljust compare{f' ({rule})' if rule else ''}: " + ", ".join(label(m) for m in inp.methods))]


def _code(inp: Inputs) -> str:
    """The code that wrote the results, and any run trained by other code (a run is reused across commits)."""
    from bljust.compare.results import code_text

    here = inp.results.get("code")
    others = [f"{label(run['method'])} seed {run.get('seed', DASH)}: {code_text(run.get('code'))}"
              for m in inp.methods for run in inp.runs[m]
              if run.get("code") != here and (run.get("code") or here)]
    return code_text(here) + ("; runs trained by other code: " + "; ".join(others) if others else "")


def _trained_on(inp: Inputs) -> str:
    """The processor and precision each run trained in (``TRAINED_ON_KEYS``; runs adopted from another machine or
    resumed on one bring theirs): train minutes compare only between runs with the same."""
    from bljust.compare.results import TRAINED_ON_KEYS

    counts = Counter(", ".join(r[k] for k in TRAINED_ON_KEYS if r.get(k)) or "not recorded"
                     for m in inp.methods for r in inp.runs[m])
    if len(counts) == 1:
        return f"{next(iter(counts))} (every run)"
    return ("; ".join(f"{where}: {n} run{'s' * (n > 1)}" for where, n in sorted(counts.items()))
            + " (train minutes compare only between runs trained on the same processor in the same precision)")


def setup(inp: Inputs) -> list[tuple]:
    r = inp.results
    budget = r.get("budget") or {}
    budget_text = f"{budget.get('value', DASH)} {budget.get('unit', '')}".replace("_", " ").strip()
    if budget.get("max_duration"):
        budget_text += f" (batches of at most {budget['max_duration']:g} s of audio)"
    machine = "; ".join(f"{k}: {v}" for k, v in (r.get("machine") or {}).items()) or DASH
    setup = [["date", field(r, "created")], ["data", field(r, "data")],
             ["config", r.get("config_file") or "package defaults"],
             ["overrides (all methods)", "; ".join(map(str, r.get("overrides") or [])) or "none"],
             ["methods", ", ".join(r.get("methods") or inp.methods)],
             ["seeds", ", ".join(str(s) for s in r.get("seeds", [])) or DASH], ["budget", budget_text],
             ["equal-budget rule", field(budget, "rule_text" if "rule_text" in budget else "rule")],
             ["machine", machine], ["trained on", _trained_on(inp)], ["code", _code(inp)],
             ["decoding", field(r, "decoding")], ["normalisation", field(r, "normalization")],
             ["checkpoint selection", field(r, "selection")]]
    corpus = [[split, num(c.get("hours"), ".2f"), field(c, "utterances"), field(c, "speakers")]
              for split, c in (r.get("corpus") or {}).items() if isinstance(c, dict)]
    blocks = [("h", 2, "Setup"), ("table", ["item", "value"], setup, 2)]
    if missing := [m for m in r.get("methods") or [] if m not in inp.methods]:
        blocks.append(("p", "Listed but without any run in results.json: " + ", ".join(missing) + "."))
    if corpus:
        blocks += [("h", 3, "Corpus"), ("table", ["split", "hours", "utterances", "speakers"], corpus)]
    plans = [f"{label(m)}: {row['text']}" for m in inp.methods for row in inp.curves(m)[:5]
             if row["kind"] == "plan" and row.get("text")]
    if plans:
        blocks += [("h", 3, "Schedules (as logged by each method's first run)")] + [("p", p) for p in plans]
    return blocks


def error_rows(methods: list[str], s: dict, with_relative: bool) -> tuple[list[str], list[list[str]]]:
    """The WER/CER table: one row per method; optionally the relative changes against REFERENCES."""
    optional = optional_splits(s, methods)
    header = ["method", "seeds", "dev WER %", "dev CER %", "test WER %", "test CER %",
              *(f"{split} {rate} %" for split in optional for rate in ("WER", "CER"))]
    lm = has_lm(s, methods)
    if lm:
        header += ["dev WER % (LM)", "test WER % (LM)", "test CER % (LM)",
                   *(f"{split} WER % (LM)" for split in optional)]
    refs = REFERENCES if with_relative else ()
    compared = ("test_wer", "test_cer") + (("test_lm_wer",) if lm else ())
    for ref in refs:
        header += [f"{KEY_NAMES[key]} vs {label(ref)}" for key in compared]
    # the topline is a reference and an ablation a variant of BL-JUST: neither is a contender for the best method
    cers = {m: s[m]["test_cer"]["mean"] for m in methods
            if s[m]["test_cer"]["mean"] is not None and m != TOPLINE and m not in ABLATIONS}
    best = min(cers, key=cers.get) if cers else None
    rows = []
    for m in methods:
        n = max(s[m][k]["n"] for k in ("dev_wer", "dev_cer", "test_wer", "test_cer"))
        cer = pct(s[m]["test_cer"])
        row = [label(m), str(n), pct(s[m]["dev_wer"]), pct(s[m]["dev_cer"]), pct(s[m]["test_wer"]),
               Bold(cer) if m == best else cer]
        row += [pct(s[m][f"{split}_{rate}"]) for split in optional for rate in ("wer", "cer")]
        if lm:
            row += [pct(s[m]["dev_lm_wer"]), pct(s[m]["test_lm_wer"]), pct(s[m]["test_lm_cer"])]
            row += [pct(s[m][f"{split}_lm_wer"]) for split in optional]
        for ref in refs:
            for key in compared:
                change = relative(s[m][key]["mean"], s[ref][key]["mean"] if ref in s else None)
                row.append(DASH if change is None else f"{change:+.1f} %")
        rows.append(row)
    return header, rows


def errors(inp: Inputs) -> list[tuple]:
    notes = "".join(f" {split}: {SPLIT_NOTES[split]}." for split in optional_splits(inp.summary, inp.methods))
    blocks = [("h", 2, "Word and character error rates"),
              ("p", ("Mean ± sample standard deviation over seeds, in %. Relative change = (x − ref) / ref "
                     "of the means, in %; negative is better; – when the reference method did not run. "
                     "Best test CER in bold."
                     + (" The topline (supervised training with every unlabeled utterance transcribed, same budget) "
                        "is a reference, not in the running." if TOPLINE in inp.methods else "")
                     + (" BL-JUST's ablations are variants of BL-JUST, not in the running either."
                        if any(m in ABLATIONS for m in inp.methods) else "")
                     + notes
                     + (" Columns marked (LM): a lexicon beam search with the word n-gram LM, its weight and word "
                        "score chosen per run on dev WER (each run's grid is in results.json); the others are "
                        "greedy CTC decoding." if has_lm(inp.summary, inp.methods) else ""))),
              ("table", *error_rows(inp.methods, inp.summary, with_relative=True))]
    # With an LM the verdict ranks by WER with it, so the figure shows that WER beside greedy decoding's.
    keys = (("test_wer", "test WER"),) + ((("test_lm_wer", "test WER (LM)"),) if has_lm(inp.summary, inp.methods)
                                          else ()) + (("test_cer", "test CER"),)
    fig, ax = plt.subplots(figsize=(max(6, (1.4 + 0.4 * (len(keys) - 2)) * len(inp.methods) + 2), 4))
    x, w = range(len(inp.methods)), 0.8 / len(keys)
    for i, (key, name) in enumerate(keys):
        st = [inp.summary[m][key] for m in inp.methods]
        bars = ax.bar([j + (i - (len(keys) - 1) / 2) * w for j in x], [100 * (v["mean"] or 0) for v in st], w,
                      label=name, yerr=[100 * (v["std"] or 0) for v in st], capsize=3, color=f"C{i}", alpha=.85)
        ax.bar_label(bars, labels=[num(v["mean"], ".1f", 100) for v in st], fontsize=8, padding=2)
    ax.set_xticks(list(x), [label(m) for m in inp.methods])
    ax.set_ylabel("%")
    ax.set_title("Test error rates (mean over seeds, bars = ± std)")
    ax.set_ylim(top=1.2 * ax.get_ylim()[1])  # room for the legend above the value labels
    ax.legend(ncol=len(keys), loc="upper right")
    names = [name.removeprefix("test ") for _, name in keys]
    caption = f"Test {', '.join(names[:-1])} and {names[-1]} per method"
    return blocks + [("figure", save_figure(fig, inp.plots / "bars.png"), caption)]


def label_gap(inp: Inputs) -> list[tuple]:
    """Each method's share of the gap between supervised training and the topline that it closes."""
    blocks = [("h", 2, "Share of the label gap recovered")]
    s = inp.summary
    if "supervised" not in s or TOPLINE not in s:
        return blocks + [("p", "Needs a supervised and a topline run (compare runs the topline, supervised training "
                               "with every unlabeled utterance transcribed, when the corpus has the unlabeled_text "
                               "split).")]
    keys = [(k, name) for k, name in GAP_KEYS
            if s["supervised"][k]["mean"] is not None and s[TOPLINE][k]["mean"] is not None]
    gaps = {k: s["supervised"][k]["mean"] - s[TOPLINE][k]["mean"] for k, _ in keys}
    rows = [["supervised − topline (points)"] + [f"{100 * gaps[k]:.1f}" for k, _ in keys]]
    for m in inp.methods:
        if m in ("supervised", TOPLINE):
            continue
        cells = []
        for k, _ in keys:
            mean = s[m][k]["mean"]
            share = None if mean is None or gaps[k] <= 0 else (s["supervised"][k]["mean"] - mean) / gaps[k]
            cells.append(DASH if share is None else f"{100 * share:.0f} %")
        rows.append([label(m)] + cells)
    return blocks + [
        ("p", ("(supervised − method) / (supervised − topline) of the mean error rates over seeds: 0 % is no "
               "better than supervised training on the labeled split alone, 100 % as good as the topline, the same "
               "training with every unlabeled utterance transcribed, under the same budget; negative is worse than "
               "supervised. – where the topline is not better than supervised (no gap to share). The first row is "
               "the gap itself.")),
        ("table", ["method"] + [f"{name} share" for _, name in keys], rows)]


def probe(inp: Inputs) -> list[tuple]:
    """The linear probe's dev CER per method beside the random-init encoder's."""
    blocks = [("h", 2, "Linear probe dev CER")]
    probe = inp.results.get("probe") or {}
    base, settings = probe.get(RANDOM_INIT), probe.get("settings") or {}
    methods = [m for m in inp.methods if inp.summary[m]["probe_cer"]["n"]]
    if not methods and base is None:
        return blocks + [("p", "No linear probe in these results.")]
    rows = []
    for m in methods:
        st = inp.summary[m]["probe_cer"]
        diff = DASH if base is None else f"{100 * (st['mean'] - base['cer']):+.1f}"
        rows.append([label(m), str(st["n"]), pct(st), diff, pct(inp.summary[m]["dev_cer"])])
    if base is not None:
        rows.append([label(RANDOM_INIT), "1", f"{100 * base['cer']:.1f}", DASH, DASH])
    steps = settings.get("steps", DASH)
    return blocks + [
        ("p", (f"Each encoder frozen and read out by a fresh linear CTC head trained for {steps} steps on the labeled "
               "split (the same steps, batches and seed for every encoder), dev decoded greedily: what the encoder "
               "learned that a linear read-out can turn into characters, whatever schedule trained it, against the "
               "same architecture with random weights. Mean ± std over seeds, in %; the difference to random init "
               "in points (negative: better); own dev CER: the run's own CTC head, trained with its encoder.")),
        ("table", ["encoder", "seeds", "probe dev CER %", "vs random init", "own dev CER %"], rows)]


def ssl_health(inp: Inputs) -> list[tuple]:
    """The last logged health of g per run, and the HuBERT targets it trained on."""
    rows, targets = [], {}
    for m in inp.methods:
        for run in inp.runs[m]:
            last = next((r for r in reversed(inp.rows[id(run)]) if "ssl_acc" in r), None)
            if last is not None:
                rows.append([label(m), field(run, "seed"), str(last.get("step", DASH)),
                             *[num(last.get(k), ".1f", scale) for k, _, scale in SSL_HEALTH]])
            if t := run_summary(inp, run).get("ssl_targets"):
                targets[t["path"]] = t
    if not rows:
        return []
    blocks = [("h", 2, "Health of the self-supervised loss"),
              ("p", "At the last step that took g (training batches, masked frames only): masked accuracy against what "
                    "always guessing the batch's most frequent target scores (HuBERT) or against chance (CPC, wav2vec "
                    "2.0), the share of encoder frames masked, and the share of codes in use."),
              ("table", ["method", "seed", "step", *[h for _, h, _ in SSL_HEALTH]], rows, 2)]
    if targets:
        trows = []
        for path, t in targets.items():
            h = t.get("health", {})
            spec = t.get("spec", {})
            source = f"layer {spec.get('layer')} of {spec.get('run')}" if spec.get("source") == "run" else spec.get("source")
            trows.append([Path(path).name, str(source), str(t.get("clusters")), num(h.get("code_usage"), ".1f", 100),
                          num(h.get("code_perplexity"), ".1f"), num(h.get("pnmi"), ".3f"),
                          num(h.get("cluster_purity"), ".3f")])
        blocks += [("p", "HuBERT targets (k-means cluster ids per encoder frame of the unlabeled split). PNMI and "
                         "cluster purity are measured against a CTC run's alignments of the labeled split, when the "
                         "targets were made with one (bljust ssl-targets --from or --align)."),
                   ("table", ["file", "clustered", "clusters", "code usage %", "perplexity", "PNMI", "purity"],
                    trows, 2)]
    return blocks


def pseudo_labels(inp: Inputs) -> list[tuple]:
    """Each pseudo-labeling round: what was kept, and (when the corpus has the unlabeled audio's transcripts)
    how wrong the labels were."""
    rows = []
    for m in inp.methods:
        for run in inp.runs[m]:
            for name, st in run_summary(inp, run).get("pseudo_labels", {}).items():
                rows.append([label(m), field(run, "seed"), name.removeprefix("round"),
                             f"{st.get('kept', DASH)} / {st.get('decoded', DASH)}", num(st.get("kept_hours"), ".2f"),
                             num(st.get("label_cer_all"), ".1f", 100), num(st.get("label_cer_kept"), ".1f", 100),
                             num(st.get("label_wer_kept"), ".1f", 100)])
    if not rows:
        return []
    return [("h", 2, "Pseudo-labels"),
            ("p", "Each round's labels of the unlabeled split: utterances kept of those decoded, and their error "
                  "rates against the true transcripts where the corpus has them (the unlabeled_text split the topline "
                  "trains on; training never reads them). Labels much worse than the model's dev error teach it its "
                  "own mistakes."),
            ("table", ["method", "seed", "round", "kept / decoded", "kept hours", "label CER % (all)",
                       "label CER % (kept)", "label WER % (kept)"], rows, 2)]


def _test_groups(run: dict) -> dict:
    groups = (run.get("test") or {}).get("groups")
    return groups if isinstance(groups, dict) else {}


def groups(inp: Inputs) -> list[tuple]:
    blocks = [("h", 2, "Test error rates per voice family")]
    names = list(dict.fromkeys(g for m in inp.methods for r in inp.runs[m] for g in _test_groups(r)))
    if not names:
        return blocks + [("p", "The test set has no voice-family groups; nothing to break down.")]
    stats = {m: {(g, k): mean_std(run_value({"test": _test_groups(r).get(g) or {}}, f"test_{k}") for r in inp.runs[m])
                 for g in names for k in ("wer", "cer")} for m in inp.methods}
    header = ["method"] + [f"{g} {k.upper()} %" for g in names for k in ("wer", "cer")]
    rows = [[label(m)] + [pct(stats[m][(g, k)]) for g in names for k in ("wer", "cer")] for m in inp.methods]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    w = 0.8 / len(inp.methods)
    for ax, k in zip(axes, ("wer", "cer")):
        for i, m in enumerate(inp.methods):
            st = [stats[m][(g, k)] for g in names]
            ax.bar([j + (i - (len(inp.methods) - 1) / 2) * w for j in range(len(names))],
                   [100 * (s["mean"] or 0) for s in st], w, yerr=[100 * (s["std"] or 0) for s in st],
                   capsize=2, color=inp.color(m), label=label(m))
        ax.set_xticks(range(len(names)), names)
        ax.set(title=f"test {k.upper()} per voice family", ylabel="%")
        ax.grid(axis="y", alpha=.3)
    axes[0].legend(fontsize=8)
    return blocks + [("p", "Mean ± std over seeds, in %."), ("table", header, rows),
                     ("figure", save_figure(fig, inp.plots / "groups.png"), "Test WER and CER per voice family")]


def costs(inp: Inputs) -> list[tuple]:
    keys = tuple(c[1] for c in COST_COLUMNS) + ("parameters", "inference_parameters")
    mean = {m: {k: v["mean"] for k, v in st.items()} for m, st in summarize(inp.results["runs"], keys).items()}
    rows = [[label(m)] + [num(mean[m][key], fmt, scale) for _, key, fmt, scale in COST_COLUMNS]
            + [f"{num(mean[m]['parameters'], '.2f', 1e-6)} M / {num(mean[m]['inference_parameters'], '.2f', 1e-6)} M"]
            for m in inp.methods]
    header = ["method"] + [c[0] for c in COST_COLUMNS] + ["parameters (train / inference)"]
    rule = (inp.results.get("budget") or {}).get("budget_rule")
    note = ("Means over seeds. " + COST_NOTES.get(rule, "A batch pass is one forward-backward pass over one batch.")
            + " Train min: the training steps alone; wall min: training with its validation, checkpoints and PL's "
              "decoding of the unlabeled split, summed over the processes of a resumed run.")
    return [("h", 2, "Cost" + (f" ({RULE_TITLES.get(rule, rule)})" if rule else "")), ("p", note),
            ("table", header, rows)]


def per_run(inp: Inputs) -> list[tuple]:
    lm = has_lm(inp.summary, inp.methods)
    optional = optional_splits(inp.summary, inp.methods)
    probed = any(inp.summary[m]["probe_cer"]["n"] for m in inp.methods)
    scores = (("dev_wer", "dev_cer", "test_wer", "test_cer")
              + tuple(f"{split}_{rate}" for split in optional for rate in ("wer", "cer"))
              + (("dev_lm_wer", "test_lm_wer") if lm else ()) + (("probe_cer",) if probed else ()))
    rows = [[label(r["method"]), str(r.get("seed", DASH))]
            + [num(run_value(r, k), ".1f", 100) for k in scores]
            + [field(r, "best_step"), field(r, "steps"), num(run_value(r, "train_seconds"), ".1f", 1 / 60),
               field(r, "run_dir"), "; ".join(map(str, r.get("settings") or [])) or DASH]
            for m in inp.methods for r in inp.runs[m]]
    header = (["method", "seed", "dev WER %", "dev CER %", "test WER %", "test CER %"]
              + [f"{split} {rate} %" for split in optional for rate in ("WER", "CER")]
              + (["dev WER % (LM)", "test WER % (LM)"] if lm else []) + (["probe dev CER %"] if probed else [])
              + ["best step", "steps", "train min", "run directory", "settings"])
    blocks = [("h", 2, "Every run"), ("table", header, rows, 3)]
    for job, text in (("train", "Runs that failed, left out of every table above:"),
                      ("probe", "Linear probes that failed, left out of the probe table:")):
        failed = [[label(str(f.get("method"))), field(f, "seed"), field(f, "exit_code"), field(f, "log")]
                  for f in inp.results.get("failed") or [] if isinstance(f, dict) and f.get("job", "train") == job]
        if failed:
            blocks += [("p", text), ("table", ["method", "seed", "exit code", "log"], failed, 2)]
    return blocks
