"""The ``bljust`` command line: corpus, train, ssl-targets, evaluate, transcribe, probe, lm, compare, demo, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from bljust.methods import METHOD_NAMES

REPO_RECIPES = Path(__file__).resolve().parents[2] / "recipes"

log = logging.getLogger("bljust")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


DEMO_METHODS = ["supervised", "ptft", "pl", "bljust"]
"""What ``bljust demo`` runs with the demo recipe unless ``--methods`` says otherwise: the bar (supervised), the
two-stage baseline and the strongest one, and BL-JUST. Six runs (JUST and the topline too) took 41 minutes on a
2-core CPU without bf16 (benchmarks/RESULTS.md); ``--scenario benchmark`` runs them all."""


def _recipe(name: str) -> Path:
    path = REPO_RECIPES / name
    if not path.is_file():
        raise SystemExit(f"bljust: recipe {path} not found; pass --config explicitly")
    return path


# ---------------------------------------------------------------- corpus


def cmd_corpus_synth(args) -> int:
    from bljust.data.synth import format_summary, synthesize_corpus

    # Options left unset (None) take the scenario's value.
    summary = synthesize_corpus(args.out_dir, labeled_minutes=args.labeled_minutes,
                                unlabeled_minutes=args.unlabeled_minutes, dev_minutes=args.dev_minutes,
                                test_minutes=args.test_minutes, seed=args.seed, jobs=args.jobs,
                                progress=not args.quiet, labeled_speakers=args.labeled_speakers,
                                scenario=args.scenario, in_domain_minutes=args.in_domain_minutes,
                                test_unseen_minutes=args.test_unseen_minutes, text=args.text)
    print(format_summary(summary))
    print(f"corpus written to {args.out_dir}")
    return 0


def cmd_corpus_import(args) -> int:
    from bljust.data import importers

    labeled = False if args.unlabeled else None
    if args.part and not args.lhotse_dir:
        raise SystemExit("bljust corpus import: --part names parts of --lhotse-dir; give --lhotse-dir too")
    if args.audio_dir:
        report = importers.import_folder(Path(args.audio_dir), Path(args.out_dir), args.split,
                                         transcripts=Path(args.transcripts) if args.transcripts else None,
                                         resample=args.resample, window_seconds=args.window_seconds)
    elif args.manifests:
        rec, sup = (Path(p) for p in args.manifests)
        report = importers.import_lhotse_manifests(rec, sup, Path(args.out_dir), args.split, labeled=labeled,
                                                   resample=args.resample, window_seconds=args.window_seconds)
    elif args.lhotse_dir:
        if not args.part:
            raise SystemExit("bljust corpus import: --lhotse-dir needs --part (e.g. train-clean-100)")
        report = importers.import_lhotse_parts(Path(args.lhotse_dir), args.part, Path(args.out_dir), args.split,
                                               labeled=labeled, resample=args.resample,
                                               window_seconds=args.window_seconds)
    else:
        raise SystemExit("bljust corpus import: give --audio-dir, --manifests REC SUP, or --lhotse-dir DIR --part P")
    print(report.summary())
    return 0


def cmd_corpus_check(args) -> int:
    from bljust.config import load_config
    from bljust.data.check import check_clean_target, check_corpus, default_jobs, write_clean

    if args.jobs is not None and args.jobs < 1:
        raise ValueError("--jobs must be at least 1")
    cfg = load_config(args.config, args.set or [])
    if args.write_clean:
        check_clean_target(args.data_dir, args.write_clean)  # before the long read, not after
    report = check_corpus(args.data_dir, cfg, jobs=args.jobs or default_jobs(), progress=not args.quiet)
    print(report.format())
    if args.write_clean:
        kept = write_clean(report, args.data_dir, args.write_clean)
        print(f"clean copy: {args.write_clean} ("
              + ", ".join(f"{split} {n} utterances kept, {d} dropped" for split, (n, d) in kept.items()) + ")")
    return 0 if report.ok else 1


# ---------------------------------------------------------------- training and use


def _load_train_config(args):
    from bljust.config import load_config

    config = args.config
    if config is None and args.resume and (Path(args.out) / "config.yaml").is_file():
        config = Path(args.out) / "config.yaml"  # resume what was run, unless told otherwise
    return load_config(config, args.set or [])


def cmd_train(args) -> int:
    from bljust.methods import METHODS

    cfg = _load_train_config(args)
    summary = METHODS[args.method](cfg, args.data, args.out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_ssl_targets(args) -> int:
    from bljust.ssl_targets import TargetSpec, compute_targets, load_targets

    if args.from_run:
        spec = TargetSpec(source="run", run=str(args.from_run), layer=args.layer, clusters=args.clusters,
                          fit_frames=args.fit_frames, seed=args.seed)
    else:
        spec = TargetSpec(source=args.features, clusters=args.clusters, fit_frames=args.fit_frames, seed=args.seed)
    path = compute_targets(args.data, spec, aligner=args.align, device=args.device, progress=not args.quiet)
    meta = load_targets(path).meta
    print(json.dumps({"path": str(path), **{k: meta[k] for k in ("clusters", "utterances", "frames", "health")}},
                     indent=2))
    print(f"train on them with: --set ssl.loss=hubert --set ssl.targets={path}")
    return 0


def cmd_features(args) -> int:
    from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, has_split
    from bljust.data.precomputed import compute_features

    num_mel_bins = args.num_mel_bins
    if args.config:
        from bljust.config import load_config

        num_mel_bins = load_config(args.config, []).features.num_mel_bins
    splits = args.splits or [s for s in SPLITS + OPTIONAL_SPLITS if has_split(args.data, s)]
    for split in splits:
        print(compute_features(args.data, split, num_mel_bins, jobs=args.jobs).line(), flush=True)
    print("train on them with: --set data.features=precomputed")
    return 0


def _word_decoder(args, tokenizer):
    if not args.lm:
        return None
    from bljust.lm import WordDecoder

    return WordDecoder(tokenizer, args.lm, beam_size=args.beam_size, lm_weight=args.lm_weight,
                       word_score=args.word_score)


def cmd_evaluate(args) -> int:
    from bljust.evaluate import NORMALIZATION, evaluate_run
    from bljust.inference import model_path

    run, split = Path(args.run), args.split
    scores = evaluate_run(run, Path(args.data), (split,), args.device, lm=args.lm, lm_weight=args.lm_weight,
                          word_score=args.word_score, beam_size=args.beam_size, rnnt_beam=args.rnnt_beam)[split]
    greedy = {k: v for k, v in scores.items() if k != "lm"}
    if args.lm:  # the scores asked for are the beam search's; greedy decoding's are kept beside them
        result = {**{k: v for k, v in scores["lm"].items() if k not in ("lm_weight", "word_score")},
                  "loss": scores["loss"], "skipped_audio": scores["skipped_audio"],
                  "greedy": {k: greedy[k] for k in ("wer", "cer")}}
        decoding = (f"lexicon beam search (beam {args.beam_size}) with the LM {args.lm}, LM weight "
                    f"{args.lm_weight:g}, word score {args.word_score:g}")
    else:
        result, decoding = greedy, scores["decoding"]
    result.update({"split": split, "data": str(args.data), "model": str(model_path(run)),
                   "normalization": NORMALIZATION, "decoding": decoding})
    out_dir = (run if run.is_dir() else run.parent) / "eval"
    (out_dir / f"{split}.json").write_text(json.dumps(result, indent=2))
    print(f"{split}: WER {100 * result['wer']:.2f}%  CER {100 * result['cer']:.2f}%  "
          f"({result['num_utterances']} utterances, {result['num_words']} words; {result['decoding']}; "
          f"normalisation: {result['normalization']})")
    if skipped := scores["skipped_audio"]:
        print(f"{split}: {sum(skipped.values())} utterances skipped for bad audio, not scored ("
              + ", ".join(f"{n} {reason}" for reason, n in skipped.items()) + "; the log names each file)")
    return 0


def cmd_transcribe(args) -> int:
    failures = 0
    for path, text, error in _transcribe_onnx(args) if args.model else _transcribe_run(args):
        if error is not None:
            failures += 1
            print(f"bljust transcribe: {path}: {error}", file=sys.stderr)
        else:
            print(f"{path}\t{text}", flush=True)
    return 1 if failures else 0


def _transcribe_run(args):
    import torch

    from bljust.evaluate import check_lm_decodable
    from bljust.inference import load_trained, transcribe_files

    if not args.files:
        raise ValueError("give the audio files to transcribe after the run")
    model, tokenizer, cfg = load_trained(args.run, args.device)
    if args.lm:
        check_lm_decodable(cfg, args.run)
    decoder = _word_decoder(args, tokenizer)
    beam = cfg.decode.rnnt_beam if args.rnnt_beam is None else args.rnnt_beam
    return transcribe_files(model, tokenizer, args.files, torch.device(args.device), word_decoder=decoder,
                            amp=cfg.train.amp, beam=beam)


def _transcribe_onnx(args):
    """``transcribe --model``: an exported ONNX model decodes every positional argument, the first included."""
    from bljust.export import OnnxCTC
    from bljust.inference import transcribe_files_onnx

    if args.rnnt_beam is not None:
        raise ValueError("--rnnt-beam is for transducer models; an exported model is a CTC model")
    model = OnnxCTC(args.model, args.device)
    return transcribe_files_onnx(model, [args.run, *args.files], word_decoder=_word_decoder(args, model.tokenizer))


def cmd_export(args) -> int:
    from bljust.export import export_model

    meta = export_model(args.run, args.format, args.out)
    out = Path(args.out)
    use = {"onnx": f"bljust transcribe --model {out} FILE...",
           "torchscript": f"torch.jit.load('{out}'); its units are in the extra file 'bljust.json'",
           "sherpa-onnx": f"sherpa_onnx.OfflineRecognizer.from_omnilingual_asr_ctc(model='{out / 'model.onnx'}', "
                          f"tokens='{out / 'tokens.txt'}')"}[args.format]
    size = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else out.stat().st_size
    print(f"{out}: {args.format} export of {meta['bljust.source']} "
          f"({len(json.loads(meta['bljust.units']))} units, {size / 1e6:.1f} MB); use it with: {use}")
    return 0


def cmd_probe(args) -> int:
    from bljust.probe import ProbeConfig, default_output, probe_run, summary_line

    given = {"steps": args.steps, "seed": args.seed, "layer": args.layer}
    cfg = ProbeConfig(random_init=args.random_init, **{k: v for k, v in given.items() if v is not None})
    result = probe_run(args.run, args.data, cfg, args.device)
    out = Path(args.out) if args.out else default_output(args.run, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{summary_line(result)}; written to {out}")
    return 0


def _compare_args(args) -> dict:
    seeds = list(range(args.seeds))
    if not seeds:
        raise ValueError("--seeds must be at least 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    return {"methods": methods, "seeds": seeds, "overrides": args.set or [], "budget": args.budget,
            "budget_rule": args.budget_rule, "jobs": args.jobs, "device": args.device,
            "progress": not args.no_progress, "reuse_from": args.reuse_from}


def _print_results(results: dict, out: Path) -> int:
    from bljust.report import headline_table

    if results["runs"]:
        b = results["budget"]
        print(f"budget: {b['value']} {b['unit'].replace('_', ' ')} per run ({b['budget_rule']} rule)\n")
        print(headline_table(results))
        print(f"\nreport: {out / 'report.html'} (also report.md, results.json, runs/)")
    for f in results["failed"]:
        print(f"bljust compare: {f['method']} seed {f['seed']} failed (exit code {f['exit_code']}); see {f['log']}",
              file=sys.stderr)
    return 1 if results["failed"] else 0


def cmd_compare(args) -> int:
    from bljust.compare import compare

    results = compare(args.data, args.out, config=args.config, **_compare_args(args))
    return _print_results(results, Path(args.out))


def cmd_sweep(args) -> int:
    from bljust.compare.sweep import sweep

    results = sweep(args.data, args.out, grid=args.grid, method=args.method, seeds=args.seeds,
                    random_points=args.random, config=args.config, overrides=args.set or [], budget=args.budget,
                    budget_rule=args.budget_rule, jobs=args.jobs, device=args.device, progress=not args.no_progress,
                    metric=args.metric)
    chosen = results["chosen"]
    print(f"chosen on {results['metric']}: " + ", ".join(f"{k}={v}" for k, v in chosen["settings"].items()))
    for s in results["sensitivity"]:
        print(f"{s['knob']}: {s['verdict']}")
    print(f"report: {Path(args.out) / 'report.md'}")
    for f in results["failed"]:
        print(f"bljust sweep: {f['point']} seed {f['seed']} failed (exit code {f['exit_code']}); see {f['log']}",
              file=sys.stderr)
    return 1 if results["failed"] else 0


def cmd_demo(args) -> int:
    from bljust.compare import compare
    from bljust.data.manifests import SPLITS, has_split

    data = Path(args.data or f"data/{args.scenario}")
    out = Path(args.out or f"runs/{args.scenario}")
    if not all(has_split(data, s) for s in SPLITS):
        from bljust.data.synth import format_summary, synthesize_corpus

        print(f"generating the {args.scenario} corpus in {data} ...", file=sys.stderr)
        print(format_summary(synthesize_corpus(data, scenario=args.scenario, seed=args.corpus_seed,
                                               jobs=args.synth_jobs)))
    else:
        from bljust.data.synth import read_summary, write_lm_text

        if not (data / "lm_text.txt").is_file() and (data / "utterances.tsv").is_file():
            write_lm_text(data)  # a demo corpus made before corpora carried LM text
        # A synthesised corpus made before scenarios existed is the unseen one; an imported one has no summary.
        summary = read_summary(data)
        made_as = summary.get("scenario", "unseen") if summary else args.scenario
        if made_as != args.scenario:  # e.g. a data/demo from before the demo moved to the commands regime
            log.warning("%s holds a corpus of scenario %s, not %s: the demo runs on it as it is (delete it, or "
                        "give another --data, to make the %s corpus)", data, made_as, args.scenario, args.scenario)
    # A scenario with a recipe of its own (benchmark) runs it; the rest run the demo's.
    recipe = f"{args.scenario}.yaml" if (REPO_RECIPES / f"{args.scenario}.yaml").is_file() else "demo.yaml"
    kwargs = _compare_args(args)
    if kwargs["methods"] is None and recipe == "demo.yaml":
        kwargs["methods"] = DEMO_METHODS
    results = compare(data, out, config=args.config or _recipe(recipe), **kwargs)
    return _print_results(results, out)


def cmd_lm(args) -> int:
    import time

    from bljust.lm import read_text, write_arpa

    t0 = time.time()
    sentences = read_text(args.text)
    counts = write_arpa(sentences, args.out, args.order)
    print(f"{args.out}: {args.order}-gram LM from {len(sentences)} sentences of {args.text} "
          f"({', '.join(f'{n}-grams {c}' for n, c in counts.items())}) in {time.time() - t0:.1f} s")
    return 0


def cmd_bench(args) -> int:
    import torch

    from bljust.bench import main as bench_main

    if args.threads:
        torch.set_num_threads(args.threads)
    print(bench_main(args.config, args.set or [], args.repeats, args.data, args.data_steps))
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bljust", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="make or import a data directory").add_subparsers(dest="corpus_command",
                                                                                             required=True)
    from bljust.data.scenarios import SCENARIOS, TEXT_DOMAINS

    scenarios = "; ".join(f"{name}: {sc.description.rstrip('.')}" for name, sc in SCENARIOS.items())
    s = corpus.add_parser("synth", help="generate the synthetic demo corpus",
                          description="Synthesise a corpus of one scenario; the size and text options override "
                                      f"the scenario's values. Scenarios: {scenarios}.")
    s.add_argument("out_dir")
    s.add_argument("--scenario", choices=list(SCENARIOS), default="unseen",
                   help="preset split sizes, voices and text (default: unseen, the original demo corpus)")
    unseen = SCENARIOS["unseen"]
    s.add_argument("--labeled-minutes", type=float, help=f"labeled audio (unseen: {unseen.labeled_minutes:g})")
    s.add_argument("--labeled-speakers", type=int, help=f"labeled voices (unseen: {unseen.labeled_speakers})")
    s.add_argument("--unlabeled-minutes", type=float,
                   help=f"unlabeled audio from the 40 unlabeled voices (unseen: {unseen.unlabeled_minutes:g})")
    s.add_argument("--in-domain-minutes", type=float,
                   help="extra unlabeled audio read by the dev and test voices, other sentences (in-domain: "
                        f"{SCENARIOS['in-domain'].in_domain_minutes:g}, unseen: 0)")
    s.add_argument("--test-unseen-minutes", type=float,
                   help="a test_unseen split from 6 voices in no other split; 0: none (in-domain: "
                        f"{SCENARIOS['in-domain'].test_unseen_minutes:g}, unseen: 0)")
    s.add_argument("--dev-minutes", type=float, help=f"dev audio (unseen: {unseen.dev_minutes:g})")
    s.add_argument("--test-minutes", type=float, help=f"test audio (unseen: {unseen.test_minutes:g})")
    s.add_argument("--text", choices=TEXT_DOMAINS,
                   help="what the voices read: Austen's novels or voice-assistant commands (commands scenario)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--jobs", type=int, default=2, help="parallel synthesis processes")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_corpus_synth)

    i = corpus.add_parser("import", help="import lhotse manifests or a folder of audio as one split")
    i.add_argument("out_dir")
    # (bljust.data.manifests' SPLITS and OPTIONAL_SPLITS, spelt out so that the parser does not import lhotse)
    i.add_argument("--split", required=True,
                   choices=["labeled", "unlabeled", "dev", "test", "test_unseen", "unlabeled_text", "dev_other",
                            "test_other"],
                   help="test_unseen: a second test set (e.g. voices no other split has); unlabeled_text: the "
                        "unlabeled split's transcripts, for compare's topline; dev_other, test_other: "
                        "LibriSpeech's harder dev and test sets")
    i.add_argument("--manifests", nargs=2, metavar=("RECORDINGS", "SUPERVISIONS"),
                   help="a lhotse recordings and supervisions manifest")
    i.add_argument("--lhotse-dir", help="output directory of 'lhotse prepare ...'")
    i.add_argument("--part", nargs="+", metavar="PART",
                   help="which part(s) of --lhotse-dir, e.g. train-clean-100; several are imported as one split "
                        "(e.g. --part train-clean-360 train-other-500)")
    i.add_argument("--audio-dir", help="a folder of audio files (searched recursively)")
    i.add_argument("--transcripts", help="with --audio-dir: lines '<utt-id> <transcript>'")
    i.add_argument("--unlabeled", action="store_true", help="drop transcripts (use labeled data as unlabeled)")
    i.add_argument("--resample", action="store_true", help="resample audio that is not 16 kHz when loaded")
    i.add_argument("--window-seconds", type=float, metavar="S",
                   help="--split unlabeled only: cut every utterance longer than S seconds into back-to-back "
                        "windows of S seconds (the last one shorter), one utterance each, e.g. 20 for "
                        "LibriLight's recordings of minutes to hours, which the training duration filter "
                        "would drop whole")
    i.set_defaults(func=cmd_corpus_import)

    c = corpus.add_parser("check", help="read every recording and utterance of a data directory; list what "
                                         "training cannot use, by reason",
                          description="Read every audio file of every split and compare it with its manifest, and "
                                      "put every utterance through the training filter. Prints a table of counts per "
                                      "split and reason, then every bad file and utterance. Exit code 0: nothing "
                                      "bad; 1: something bad (also when --write-clean wrote a clean copy); 2: usage "
                                      "error.")
    c.add_argument("data_dir", help="a bljust data directory (per split: recordings and supervisions manifests)")
    c.add_argument("--config", help="YAML config whose data.* duration limits, tokenizer and model decide the "
                                    "training checks (default: the built-in defaults)")
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. "
                                                                        "data.max_utterance_seconds=20")
    c.add_argument("--jobs", type=int, help="processes reading audio (default: one per CPU core)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.add_argument("--write-clean", metavar="OUT",
                   help="also write the manifests without the bad recordings and utterances to OUT (a new "
                        "directory; audio stays where it is). Only manifests are written, which is all training "
                        "reads: copy other files such as lm_text.txt yourself. The exit code is 1 all the same "
                        "when anything was bad")
    c.set_defaults(func=cmd_corpus_check)

    t = sub.add_parser("train", help="train a model")
    t.add_argument("--data", required=True, help="data directory (labeled, unlabeled, dev splits)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--method", default="supervised", choices=METHOD_NAMES,
                   help="training method (default: supervised)")
    t.add_argument("--config", help="YAML config (e.g. recipes/demo.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value, e.g. train.max_steps=100")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    t.set_defaults(func=cmd_train)

    st = sub.add_parser("ssl-targets", help="k-means targets for ssl.loss=hubert: of normalised MFCC/log-mel frames "
                        "(iteration 1) or of a trained run's encoder layer (iteration 2), cached in DATA/ssl_targets/")
    st.add_argument("data", help="data directory; its unlabeled split gets targets")
    st.add_argument("--from", dest="from_run", metavar="RUN", help="cluster this trained run's encoder layer "
                    "(e.g. a supervised run on the labeled split: supervision-guided targets)")
    st.add_argument("--layer", type=int, default=-1, help="with --from: the encoder block (default -1, the last)")
    st.add_argument("--features", choices=["mfcc", "fbank"], default="mfcc", help="without --from: what to cluster")
    st.add_argument("--clusters", type=int, default=100)
    st.add_argument("--fit-frames", type=int, default=250_000, help="frames the k-means is fitted on (at most)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--align", metavar="RUN", help="a trained CTC run whose alignments of the labeled split score "
                    "the clusters (PNMI, purity); default: the --from run")
    st.add_argument("--device", default="cpu")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=cmd_ssl_targets)

    fe = sub.add_parser("features", help="precompute the log-mel features of a data directory's splits (lhotse "
                        "lilcom archives) for data.features=precomputed")
    fe.add_argument("data", help="data directory")
    fe.add_argument("--splits", nargs="+", metavar="SPLIT", help="default: every split the directory has")
    fe.add_argument("--num-mel-bins", type=int, default=80, help="must equal the runs' features.num_mel_bins")
    fe.add_argument("--config", help="take --num-mel-bins from this YAML config (e.g. recipes/librispeech.yaml)")
    fe.add_argument("--jobs", type=int, default=1, help="parallel processes, each writing one archive")
    fe.set_defaults(func=cmd_features)

    e = sub.add_parser("evaluate", help="WER/CER of a trained model on a split")
    e.add_argument("run", help="run directory or model file")
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("transcribe", help="transcribe audio files: one 'FILE<TAB>TEXT' line each")
    tr.add_argument("run", help="run directory or model file (with --model: the first audio file)")
    tr.add_argument("files", nargs="*")
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--model", metavar="ONNX", help="a model written by 'bljust export --format onnx': decode with "
                                                    "onnxruntime, no run needed; every positional argument is then "
                                                    "an audio file")
    tr.set_defaults(func=cmd_transcribe)
    for c in (e, tr):
        c.add_argument("--lm", help="ARPA word LM (bljust lm): decode with a lexicon beam search instead of greedily")
        c.add_argument("--lm-weight", type=float, default=1.0, help="with --lm: weight of the LM score (default 1)")
        c.add_argument("--word-score", type=float, default=0.0, help="with --lm: score added per word (default 0)")
        c.add_argument("--beam-size", type=int, default=50, help="with --lm: hypotheses kept per frame")
        c.add_argument("--rnnt-beam", type=int, help="transducer models (model.loss=rnnt; --lm is CTC-only): "
                                                     "hypotheses of their beam search, 0: greedy (default: the "
                                                     "model's decode.rnnt_beam, 4)")

    ex = sub.add_parser("export", help="write a trained CTC model as one ONNX or TorchScript file: waveforms in, CTC "
                                       "log-posteriors out, units inside",
                        description="Export a CTC model with its log-mel front-end inside the graph: inputs wav (B, S) "
                                    "float32 16 kHz and wav_lens (B,) int64, outputs log_probs (B, T, V) and "
                                    "log_prob_lens (B,), any batch size and length. The units, the blank (0) and the "
                                    "tokenizer go into the file (ONNX metadata_props; TorchScript extra file "
                                    "bljust.json). The export is checked against PyTorch before it is written.")
    ex.add_argument("run", help="run directory or model file")
    ex.add_argument("out", help="file to write, e.g. model.onnx (sherpa-onnx: a directory)")
    # (bljust.export's FORMATS, spelt out so that the parser does not import onnxruntime)
    ex.add_argument("--format", choices=["onnx", "torchscript", "sherpa-onnx"], default="onnx",
                    help="onnx (decode with 'bljust transcribe --model', conformer encoders), torchscript "
                         "(torch.jit.load; either encoder) or sherpa-onnx (a directory of model.onnx and tokens.txt "
                         "for sherpa-onnx's omnilingual-asr CTC recognizer; models with features.normalize=utterance) "
                         "(default: onnx)")
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("probe", help="linear-probe a run's frozen encoder: dev CER of a fresh linear CTC head",
                        description="Freeze the run's encoder, run it once over the labeled split and dev (eval mode, "
                                    "no augmentation), train a fresh linear CTC head on its cached outputs for a fixed "
                                    "number of steps (AdamW, fixed seed), and decode dev greedily. Writes a JSON "
                                    "(dev CER and WER, the head's train loss before and after, the settings, seconds) "
                                    "and prints one line.")
    pr.add_argument("run", help="run directory (its best.pt, else its newest checkpoint) or model file")
    pr.add_argument("--data", required=True, help="data directory (labeled and dev splits)")
    pr.add_argument("--steps", type=int, help="optimiser steps of the head (default 300)")
    pr.add_argument("--random-init", action="store_true",
                    help="probe the run's architecture with random weights (seeded) instead: the baseline")
    pr.add_argument("--layer", type=int, help="encoder block whose output the head reads (0-based, negative from "
                                              "the end; default -1, the final output)")
    pr.add_argument("--seed", type=int,
                    help="seed of the head, the batch order and --random-init's weights (default 0)")
    pr.add_argument("--out", help="JSON file to write (default: RUN/eval/probe[-random-init][-layerL].json)")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=cmd_probe)

    lm = sub.add_parser("lm", help="estimate a word n-gram LM (ARPA) from a text file, one sentence per line")
    lm.add_argument("text")
    lm.add_argument("out", help="ARPA file to write")
    lm.add_argument("--order", type=int, default=3)
    lm.set_defaults(func=cmd_lm)

    from bljust.compare.budget import ABLATIONS, BUDGET_RULES
    from bljust.compare.sweep import METRICS

    for name, help_ in (("compare", "train every method × seed under one budget; write results.json and a report"),
                        ("demo", "generate the demo corpus (if absent) and run compare on it")):
        c = sub.add_parser(name, help=help_)
        if name == "compare":
            c.add_argument("--data", required=True, help="data directory (labeled, unlabeled, dev, test splits)")
            c.add_argument("--out", required=True, help="report directory (results.json, report.html, runs/)")
            c.add_argument("--config", help="YAML config shared by every method (e.g. recipes/demo.yaml)")
        else:
            c.add_argument("--scenario", choices=list(SCENARIOS), default="demo",
                           help="corpus to generate when --data holds none (default demo; benchmark is the "
                                "method benchmark's regime, with --seeds 3 --budget 4500)")
            c.add_argument("--data", help="data directory (default data/SCENARIO; generated if absent)")
            c.add_argument("--out", help="report directory (default runs/SCENARIO)")
            c.add_argument("--config", help="defaults to recipes/SCENARIO.yaml where there is one (benchmark), "
                                            "else recipes/demo.yaml")
            c.add_argument("--corpus-seed", type=int, default=0, help="seed of the generated corpus")
            c.add_argument("--synth-jobs", type=int, default=2, help="parallel synthesis processes")
        default = (f"all: {','.join(METHOD_NAMES)}, and topline when the corpus has unlabeled_text" if name == "compare"
                   else f"{','.join(DEMO_METHODS)}; with --scenario benchmark all: {','.join(METHOD_NAMES)}, and "
                        f"topline")
        c.add_argument("--methods", help=f"comma-separated (default {default}); BL-JUST's ablations only when named: "
                                         f"{','.join(ABLATIONS)}")
        c.add_argument("--seeds", type=int, default=1, help="train seeds 0..N-1 of every method (default 1)")
        c.add_argument("--budget", type=int, help="per run: batch passes (--budget-rule passes) or supervised updates "
                                                  "on labeled batches (labeled); default: the config's train.max_steps")
        c.add_argument("--budget-rule", choices=BUDGET_RULES, default=BUDGET_RULES[0],
                       help="what every method gets equally: forward/backward batch passes (passes, the default) or "
                            "supervised updates on labeled batches, its unlabeled work on top (labeled)")
        c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value for every run")
        c.add_argument("--jobs", type=int, help="runs at a time (default: one per CPU core, or one per GPU)")
        c.add_argument("--device", default="auto", help="auto (GPUs when present), cpu or cuda")
        c.add_argument("--no-progress", action="store_true", help="no progress bar")
        c.add_argument("--reuse-from", action="append", metavar="DIR",
                       help="an earlier comparison's or sweep point's directory: its finished runs that trained "
                            "the model a run here would (same method, data, seed and resolved training settings, "
                            "under either budget rule) are copied, not trained again (repeatable)")
        c.set_defaults(func=cmd_compare if name == "compare" else cmd_demo)
    sw = sub.add_parser("sweep", help="train one method over a grid of its settings under one budget; report the "
                                      "dev error per point, heatmaps and which knobs matter; test only the chosen point")
    sw.add_argument("--data", required=True)
    sw.add_argument("--out", required=True, help="sweep directory (sweep.json, report.md, points/)")
    sw.add_argument("--config", help="YAML config (e.g. recipes/demo.yaml)")
    sw.add_argument("--method", default="bljust", help="the method swept (default bljust)")
    sw.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...",
                    help="a knob and its values, e.g. bljust.gamma_max=0.1,0.3,1 (repeat for more knobs; list values "
                         "in brackets: data.speed_perturb=[],[0.9,1.1])")
    sw.add_argument("--random", type=int, metavar="K", help="run K points drawn from the grid instead of all of it")
    sw.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per point (default 1; 2+ gives a seed spread)")
    sw.add_argument("--budget", type=int, help="per run, as compare's (default: the config's train.max_steps)")
    sw.add_argument("--budget-rule", choices=BUDGET_RULES, default=BUDGET_RULES[0])
    sw.add_argument("--metric", choices=tuple(METRICS),
                    help="what points are judged by on dev: WER with the LM (the default when there is an LM) or "
                         "greedy CER (the default without one)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value for every point")
    sw.add_argument("--jobs", type=int, help="runs at a time (default: one per CPU core, or one per GPU)")
    sw.add_argument("--device", default="auto")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    b = sub.add_parser("bench", help="time a supervised, an SSL and a BL-JUST joint step side by side")
    b.add_argument("--config", help="YAML config (default: the built-in defaults)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE")
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    b.add_argument("--data", metavar="DIR", help="a data directory: also measure the share of step time spent "
                                                 "waiting for its batches, through the training data pipeline")
    b.add_argument("--data-steps", type=int, default=20, help="steps per kind that measure the data wait")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from bljust.checkpoint import UnsafeFileError
    from bljust.config import ConfigError
    from bljust.engine import TrainingFailed

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"bljust: error: {e}", file=sys.stderr)
        return 2
    except (UnsafeFileError, TrainingFailed) as e:
        print(f"bljust: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
