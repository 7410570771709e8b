"""Sentences for the demo corpus, and LibriSpeech-style transcript normalisation.

The text is Jane Austen's six novels (public domain), as shipped by the Debian package
``r-cran-janeaustenr``: an R lazy-load database (``data/Rdata.rdx`` index + ``data/Rdata.rdb``
blobs) that the pure-Python package ``rdata`` parses, so R itself is not needed.

Two forms of each sentence exist:

* the *engine input* returned by :func:`austen_sentences`: the original punctuation (which the
  synthesis engines turn into prosody and pauses), with titles expanded ("Mr." -> "Mister") so
  that the spoken words and the transcript agree, and typographic marks the engines would read
  aloud (``_`` italics, ``"`` quotes) removed;
* the *transcript*, :func:`normalize_transcript` of the engine input: LibriSpeech style, upper
  case A-Z, apostrophes and single spaces.
"""

from __future__ import annotations

import bz2
import functools
import lzma
import os
import re
import struct
import unicodedata
import warnings
import zlib
from pathlib import Path

APT_PACKAGE = "r-cran-janeaustenr"
APT_INSTALL = f"apt-get install -y --no-install-recommends {APT_PACKAGE}"

# R library trees Debian/Ubuntu and source installs use; R_LIBS* (colon separated) come first.
_R_LIBRARY_DIRS = (
    "/usr/lib/R/site-library",
    "/usr/local/lib/R/site-library",
    "/usr/lib/R/library",
    "/usr/local/lib/R/library",
    "/usr/share/R/library",
)

# Publication order, so the sentence list has a stable, meaningful order whatever the
# order of the database index.
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")

# Abbreviated titles -> spoken form. Matched only *with* their period, case-insensitively:
# without the period "St"/"Dr" could be something else, and requiring it keeps
# normalize_transcript idempotent (its output has no periods left).
TITLES = {
    "Mr": "Mister",
    "Mrs": "Missus",
    "Messrs": "Messieurs",
    "Dr": "Doctor",
    "St": "Saint",
    "Esq": "Esquire",
    "Rev": "Reverend",
    "Hon": "Honourable",
    "Col": "Colonel",
    "Capt": "Captain",
    "Lieut": "Lieutenant",
    "Gen": "General",
    "Sgt": "Sergeant",
}
_TITLE_RE = re.compile(r"\b(" + "|".join(sorted(TITLES, key=len, reverse=True)) + r")\.", re.IGNORECASE)
_TITLE_LOOKUP = {k.lower(): v for k, v in TITLES.items()}
# Persuasion writes the common titles without a period ("Mr Elliot", "Mr and Mrs Musgrove").
# Only the title-case spelling is taken that way, so an upper-case "DR" in an already
# normalised transcript stays as it is (idempotence).
_BARE_TITLE_RE = re.compile(r"\b(Mr|Mrs|Messrs|Dr|St)\b(?=\s)")

# A sentence ends at . ! or ? (possibly followed by closing quotes/brackets/italics marks)
# when whitespace and then an upper-case letter (possibly after opening marks) follow.
_BOUNDARY_RE = re.compile(r"[.!?]+[\"'_)\]]*\s+(?=[\"'_(\[]*[A-Z])")
# An initial such as "E." in "Mister E. Weston" is not a sentence end.
_INITIAL_RE = re.compile(r"(?:^|[\s\"'(_])[A-Z]\.$")
# Sentences with these are dropped rather than spelled out: digits (money, dates, chapter
# numbers), "&c."/"etc." and editorial marks have no single obvious spoken form.
_REJECT_RE = re.compile(r"[0-9&*\[\]£#@/\\]|\betc\b", re.IGNORECASE)


def expand_titles(text: str) -> str:
    """Replace abbreviated titles ("Mr.", "MRS.", "St.", "Mr Elliot") by their spoken form."""
    def repl(m: re.Match[str]) -> str:
        word = _TITLE_LOOKUP[m.group(1).lower()]
        # Keep the case style of the source so "MR." becomes "MISTER", "Mr." "Mister".
        return word.upper() if m.group(1).isupper() and len(m.group(1)) > 1 else word
    text = _TITLE_RE.sub(repl, text)
    return _BARE_TITLE_RE.sub(lambda m: TITLES[m.group(1)], text)


def normalize_transcript(text: str) -> str:
    """LibriSpeech-style transcript: upper case A-Z, apostrophes inside words, single spaces.

    Titles are expanded, hyphens and other punctuation become word breaks, digits and other
    symbols are dropped (the corpus avoids them at sentence selection), accents are stripped.
    Idempotent, so evaluation can apply it to references and hypotheses alike.
    """
    if not text.isascii():  # the common case skips this (it is most of the cost)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = expand_titles(text).upper()
    # Typographic apostrophes are apostrophes.
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = re.sub(r"[^A-Z']+", " ", text)
    # An apostrophe is kept only inside a word ("DON'T", "TAYLOR'S"); at a word edge it is a
    # quotation mark ('Tis -> TIS is the price of that simple rule).
    text = re.sub(r"(?<![A-Z])'+|'+(?![A-Z])", "", text)
    return " ".join(text.split())


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    for var in ("R_LIBS", "R_LIBS_USER", "R_LIBS_SITE"):
        dirs += [Path(p) for p in os.environ.get(var, "").split(os.pathsep) if p]
    dirs += [Path(p) for p in _R_LIBRARY_DIRS]
    return dirs


def find_janeaustenr_rdb() -> Path:
    """Path of janeaustenr's ``data/Rdata.rdb``, or a FileNotFoundError saying how to install it."""
    tried = []
    for d in _candidate_dirs():
        rdb = d / "janeaustenr" / "data" / "Rdata.rdb"
        tried.append(str(rdb))
        if rdb.is_file() and rdb.with_suffix(".rdx").is_file():
            return rdb
    raise FileNotFoundError(
        f"Jane Austen's novels not found (looked for {', '.join(tried)}). They come from the "
        f"Debian package {APT_PACKAGE}: run '{APT_INSTALL}' (without --no-install-recommends "
        f"apt pulls in hundreds of R packages).")


def _unserialize(blob: bytes):
    import rdata  # imported lazily: only corpus generation needs it

    # extension=".rds" tells rdata the blob is a bare serialisation (it warns otherwise).
    return rdata.conversion.convert(rdata.parser.parse_data(blob, extension=".rds"))


def _read_lazyload_entry(rdb: bytes, offset: int, length: int, compressed: int) -> bytes:
    """Decompress one object of an R lazy-load database (see R's ``lazyLoadDBinsertValue``).

    Layout: a 4-byte big-endian uncompressed length, then zlib data (compress=TRUE/1), or for
    compress=2/3 a one-byte method tag ('Z' zlib, '2' bzip2, 'X' xz, '0' none) and the data.
    """
    blob = rdb[offset:offset + length]
    (size,) = struct.unpack(">I", blob[:4])
    if compressed in (2, 3):
        method, payload = blob[4:5], blob[5:]
        data = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress,
                b"0": bytes}[method](payload)
    else:
        data = zlib.decompress(blob[4:])
    if len(data) != size:
        raise ValueError(f"corrupt R lazy-load entry at offset {offset}: {len(data)} != {size} bytes")
    return data


@functools.lru_cache(maxsize=1)
def austen_novels() -> dict[str, tuple[str, ...]]:
    """The six novels as {name: lines}, in publication order (parsed once per process)."""
    rdb_path = find_janeaustenr_rdb()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns about R version details we don't use
        import rdata

        index = rdata.read_rds(rdb_path.with_suffix(".rdx"))
    compressed = int(index.get("compressed", [1])[0])
    rdb = rdb_path.read_bytes()
    variables = index["variables"]
    novels = {}
    for name in sorted(variables, key=lambda n: (NOVELS.index(n) if n in NOVELS else len(NOVELS), n)):
        offset, length = (int(x) for x in variables[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lines = _unserialize(_read_lazyload_entry(rdb, offset, length, compressed))
        novels[str(name)] = tuple(str(x) for x in lines)
    return novels


def _paragraphs(lines: tuple[str, ...]) -> list[str]:
    """Blank-line separated paragraphs, joined into single lines, headings dropped."""
    paragraphs, current = [], []
    for line in (*lines, ""):
        if line.strip():
            current.append(line.strip())
            continue
        if current:
            para = " ".join(current)
            # Headings ("CHAPTER IV", "VOLUME II", titles) have no lower-case letter.
            if re.search(r"[a-z]", para):
                paragraphs.append(para)
            current = []
    return paragraphs


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences (titles are expected to be expanded already)."""
    sentences, start = [], 0
    for m in _BOUNDARY_RE.finditer(paragraph):
        if _INITIAL_RE.search(paragraph[start:m.start() + 1]):
            continue
        sentences.append(paragraph[start:m.end()].strip())
        start = m.end()
    sentences.append(paragraph[start:].strip())
    return [s for s in sentences if s]


def engine_text(sentence: str) -> str:
    """Clean a sentence for the engines: drop marks they would read aloud or that carry nothing."""
    s = sentence.replace("_", "").replace('"', "")
    s = " ".join(s.split())
    # Quotes and dashes left dangling at the edges by the splitter ('--I wish', "sir.'").
    s = re.sub(r"^[\s'\-,;:)]+", "", s)
    s = re.sub(r"[\s'\-(]+$", "", s)
    return s


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[tuple[str, int], ...]:
    """Every usable sentence once, as (engine text, word count), in reading order."""
    out, seen = [], set()
    for lines in austen_novels().values():
        for para in _paragraphs(lines):
            # Italics marks go first: they would hide titles ("_Mr._ Bertram", "_Mr_. Dixon").
            for sent in split_sentences(expand_titles(para.replace("_", ""))):
                if _REJECT_RE.search(sent):
                    continue
                text = engine_text(sent)
                norm = normalize_transcript(text)
                # Unique transcripts, so splits that must not share sentences can't share one
                # by accident ("I do not know what you mean." occurs in several novels).
                if not norm or norm in seen:
                    continue
                seen.add(norm)
                out.append((text, len(norm.split())))
    return tuple(out)


def austen_sentences(min_words: int = 5, max_words: int = 30) -> list[str]:
    """Engine-input sentences of ``min_words``..``max_words`` words, in reading order.

    Original punctuation, titles expanded, no digits; transcripts (``normalize_transcript``)
    are unique. About 14k sentences for the default 5-30 words.
    """
    return [text for text, n in _all_sentences() if min_words <= n <= max_words]
