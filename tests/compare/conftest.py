"""Helpers of the ``bljust compare`` tests: the command, the tiny comparison's arguments and a corpus with the
optional splits."""

from __future__ import annotations

import os
import subprocess
import sys

from bljust.methods import METHOD_NAMES
from tests.conftest import REPO, TINY

DEMO = REPO / "recipes" / "demo.yaml"
BUDGET = 4
# tiny.yaml pins N1 = 1 and N2 = 2. Under equal passes a budget of 4 shrinks BL-JUST's one outer epoch to
# N1 = 1, N2 = 1 (3 passes) and N3 = 1; under equal labeled updates it is K = 2 epochs of N1 = 1 + N2 = 2.
ARGS = ["--config", str(TINY), "--budget", str(BUDGET), "--jobs", "2", "--no-progress"]
ALL = ["--methods", ",".join(METHOD_NAMES), "--seeds", "1"]


def compare(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bljust", "compare", *args], capture_output=True, text=True, check=False,
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}, timeout=900)


COPIED = {"test_unseen": "test", "dev_other": "dev", "test_other": "test"}
"""The scored optional splits ``linked_corpus`` makes, as copies of these, when the source corpus lacks them."""


def linked_corpus(src, dst, optional: bool):
    """``src``'s four splits (linked), and with ``optional`` every optional split: ``src``'s own, or made here
    (test_unseen, dev_other and test_other: copies of the splits ``COPIED`` names; unlabeled_text: the unlabeled split with the
    transcripts that utterances.tsv keeps) when ``src`` lacks it."""
    import dataclasses

    from lhotse import SupervisionSet

    from bljust.data.manifests import OPTIONAL_SPLITS, SPLITS, has_split, load_split, manifest_paths, write_split
    from bljust.data.text import normalize_transcript

    dst.mkdir()
    for split in (*SPLITS, *(OPTIONAL_SPLITS if optional else ())):
        if has_split(src, split):
            for path in manifest_paths(src, split):
                (dst / path.name).symlink_to(path)
    (dst / "lm_text.txt").symlink_to(src / "lm_text.txt")
    for split, source in COPIED.items():
        if optional and not has_split(dst, split):
            write_split(dst, split, *load_split(src, source).decompose()[:2])
    if optional and not has_split(dst, "unlabeled_text"):
        rows = [line.split("\t") for line in (src / "utterances.tsv").read_text().splitlines()[1:]]
        texts = {row[0]: normalize_transcript(row[-1]) for row in rows}  # as the synthesiser writes transcripts
        recordings, supervisions, _ = load_split(src, "unlabeled").decompose()
        write_split(dst, "unlabeled_text", recordings,
                    SupervisionSet.from_segments(dataclasses.replace(s, text=texts[s.id]) for s in supervisions))
    return dst
