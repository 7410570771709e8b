#!/usr/bin/env bash
# Make a bljust data directory from a local copy of LibriSpeech, split as the papers do:
#   train-clean-100                   -> labeled
#   train-clean-360 + train-other-500 -> unlabeled (transcripts dropped; utterances longer than
#                                        WINDOW_SECONDS cut into windows)
#   dev-clean -> dev, test-clean -> test, dev-other -> dev_other, test-other -> test_other
# It runs lhotse's own recipe (`lhotse prepare librispeech`, offline) and then `bljust corpus
# import` per split, which checks every file; audio stays where it is.
set -euo pipefail

usage() {
    cat >&2 <<EOF
usage: $0 LIBRISPEECH_DIR DATA_DIR [MANIFEST_DIR]

LIBRISPEECH_DIR  the corpus: the LibriSpeech/ directory the openslr archives unpack to (holding
                 train-clean-100/, dev-clean/, ...), or the directory above it
DATA_DIR         the bljust data directory to write
MANIFEST_DIR     where lhotse writes its manifests (default: DATA_DIR/lhotse); a re-run reuses them

train-clean-100, dev-clean and test-clean are required; train-clean-360, train-other-500,
dev-other and test-other are used when present.
Environment: WINDOW_SECONDS (default 20) cuts longer unlabeled utterances into windows of that
length; JOBS (default: the number of cores) is lhotse's threads.
EOF
    exit 2
}

[[ $# -eq 2 || $# -eq 3 ]] || usage
corpus=$1
data=$2
manifests=${3:-$data/lhotse}
# 20 s: every window fits under the default data.max_utterance_seconds (30 s), so the duration
# filter drops none (bar a last window under data.min_utterance_seconds), and a batch holds many.
window=${WINDOW_SECONDS:-20}
jobs=${JOBS:-$(nproc)}

die() { echo "prepare_librispeech: error: $*" >&2; exit 1; }
say() { echo "prepare_librispeech: $*" >&2; }

[[ -d $corpus ]] || die "no such directory: $corpus"
# The archives unpack to LibriSpeech/<part>; accept that directory or its parent.
if [[ ! -d $corpus/train-clean-100 && -d $corpus/LibriSpeech ]]; then
    corpus=$corpus/LibriSpeech
fi

# bljust from PATH, else from this checkout's venv; lhotse from the same environment, so that
# both read the manifests with one lhotse version.
if ! command -v bljust >/dev/null; then
    venv_bin=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin
    [[ -x $venv_bin/bljust ]] ||
        die "bljust not found: activate its environment (source .venv/bin/activate) or run 'make demo' first"
    PATH=$venv_bin:$PATH
fi
lhotse=$(dirname "$(command -v bljust)")/lhotse
[[ -x $lhotse ]] || die "lhotse's command line is not installed beside bljust ($lhotse)"

parts=()
missing=()
unlabeled=()
for part in train-clean-100 train-clean-360 train-other-500 dev-clean dev-other test-clean test-other; do
    if [[ -d $corpus/$part ]]; then
        parts+=("$part")
        if [[ $part == train-clean-360 || $part == train-other-500 ]]; then
            unlabeled+=("$part")
        fi
    elif [[ $part == train-clean-100 || $part == dev-clean || $part == test-clean ]]; then
        missing+=("$part")
    else
        say "skipping $part: not in $corpus"
    fi
done
if (( ${#missing[@]} )); then
    die "$corpus lacks the required part(s) ${missing[*]} (expected $corpus/${missing[0]}/<speaker>/<chapter>/*.flac)"
fi

say "lhotse prepare librispeech: ${parts[*]} -> $manifests"
part_args=()
for part in "${parts[@]}"; do part_args+=(-p "$part"); done
"$lhotse" prepare librispeech "${part_args[@]}" -j "$jobs" "$corpus" "$manifests"

import_split() { bljust corpus import "$data" --lhotse-dir "$manifests" "$@"; }
import_split --split labeled --part train-clean-100
if (( ${#unlabeled[@]} )); then
    import_split --split unlabeled --part "${unlabeled[@]}" --window-seconds "$window"
else
    say "neither train-clean-360 nor train-other-500 is in $corpus: $data gets no unlabeled split, so only" \
        "supervised training runs on it"
fi
import_split --split dev --part dev-clean
import_split --split test --part test-clean
for part in dev-other test-other; do
    if [[ -d $corpus/$part ]]; then
        import_split --split "${part/-/_}" --part "$part"
    fi
done
say "done: $data"
