"""The comparison report: ``results.json`` from ``bljust compare`` → ``report.md``, ``report.html``, ``plots/``.

- ``numbers``: per-method means and spreads, ``metrics.jsonl`` rows, number formats, validation points;
- ``render``: the blocks both documents are rendered from (Markdown, self-contained HTML) and figure files;
- ``tables``, ``verdict``, ``curves``: the sections, in the order ``SECTIONS`` lists them.

Differences to PT+FT and supervised training are printed in points with their paired bootstrap interval
(``bljust.compare.significance``), which results.json holds from schema /6 on and the report computes from
the runs' hypothesis files for older results.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

# before any submodule imports pyplot (Python runs this file first): the report only writes files, so no
# display is needed and no window is opened
matplotlib.use("Agg")

from bljust.report import curves, tables, verdict
from bljust.report.numbers import load_inputs, methods_of, num, read_metrics, summarize
from bljust.report.render import md_table, to_html, to_markdown

__all__ = ["PLOTS", "SECTIONS", "headline_table", "read_metrics", "summarize", "write_report"]

SECTIONS = (tables.title, verdict.verdict, tables.setup, tables.errors, verdict.intervals, verdict.claims,
            tables.label_gap, tables.probe, curves.learning_curves, curves.gamma, curves.ssl_convergence,
            tables.ssl_health, tables.pseudo_labels, verdict.reach, tables.groups, tables.costs, tables.per_run)
"""The report's sections, in order: each turns the loaded inputs into blocks."""
PLOTS = ("bars", "curves_f", "curves_g", "dev_cer", "bljust_gamma", "ssl_convergence", "groups")


def write_report(out_dir: Path, results: dict | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out_dir``.

    ``results`` defaults to ``out_dir/results.json``; run directories in it are relative to
    ``out_dir``. Returns ``{"markdown": path, "html": path, "plots": plots_dir}``.
    """
    out_dir = Path(out_dir)
    if results is None:
        results = json.loads((out_dir / "results.json").read_text())
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for name in PLOTS:  # a figure left from an earlier rendering would contradict this one's notes
        (plots / f"{name}.png").unlink(missing_ok=True)
    inp = load_inputs(results, out_dir, plots)
    blocks = []
    for section in SECTIONS:
        blocks += section(inp)
    markdown, page = out_dir / "report.md", out_dir / "report.html"
    markdown.write_text(to_markdown(blocks, out_dir))
    page.write_text(to_html(blocks, blocks[0][2]))
    return {"markdown": markdown, "html": page, "plots": plots}


def headline_table(results: dict) -> str:
    """The Markdown table ``bljust demo`` prints: error rates (mean ± std, %), train minutes and audio hours."""
    methods, summary = methods_of(results), summarize(results.get("runs", []))
    header, rows = tables.error_rows(methods, summary, with_relative=False)
    for m, row in zip(methods, rows):
        mean = {k: v["mean"] for k, v in summary[m].items()}
        row += [num(mean["train_seconds"], ".1f", 1 / 60), num(mean["audio_hours"], ".2f")]
    return md_table(header + ["train min", "audio h"], rows)
