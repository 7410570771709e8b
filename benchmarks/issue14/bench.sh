#!/usr/bin/env bash
# Issue 14's benchmark on commands-l60s24, as RESULTS.md "The benchmark's plan" fixes it, resumable across
# sessions and machines. Run from an empty or earlier work directory (default /work/exp):
#   bash benchmarks/issue14/bench.sh [STAGE...]     stages: passes ablations labeled auto posthoc (default: all, in order)
#   bash benchmarks/issue14/bench.sh archive        archive the finished runs now (before a session's stop)
# Every run trains with one pinned commit (a git worktree at $CODE_COMMIT), so later commits cannot change the
# code of runs still to come (training code as at 0a98ffa, where the tuning ran; 691c1e4 lets --reuse-from adopt
# an archived run). A finished run's directory, without its model files (*.pt), is archived as
# $ARCHIVE/<comparison>/{runs,probes}/<name>.tar.xz (a run whose linear probe has not run yet also keeps its best.pt as
# models/<name>.pt until it has); a later session on a fresh machine restores the archives and compare
# reuses those runs (a run is finished when its record.json carries its key), so only unfinished runs train.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-/work/exp}
CODE_COMMIT=${CODE_COMMIT:-691c1e4}
CODE=${CODE:-/work/bench-code}
ARCHIVE=${ARCHIVE:-$REPO/benchmarks/issue14/runs}
PY=${PY:-$REPO/.venv/bin/python}
DATA=data/commands-l60s24

mkdir -p "$WORK" && cd "$WORK"
bljust() { nice -n 5 "$PY" -m bljust "$@"; }

restore() {  # $1: comparison directory under runs/regime
  local dir=runs/regime/$1 kind a name
  for kind in runs probes; do
    [ -d "$ARCHIVE/$1/$kind" ] || continue
    mkdir -p "$dir/$kind"
    for a in "$ARCHIVE/$1/$kind"/*.tar.xz; do
      name=$(basename "$a" .tar.xz)
      [ -f "$dir/$kind/$name/record.json" ] || tar -C "$dir/$kind" -xJf "$a" \
        || { echo "bench.sh: cannot restore $a (corrupt? restore it from git or delete it to retrain that run)" >&2; exit 1; }
    done
  done
  for a in "$ARCHIVE/$1"/models/*.pt; do  # the models kept for probes still to run
    [ -f "$a" ] || continue
    name=$(basename "$a" .pt)
    [ -f "$dir/runs/$name/best.pt" ] || cp "$a" "$dir/runs/$name/best.pt"
  done
}
archive() {  # $1: comparison directory; each finished run and probe once, without model files
  local dir=runs/regime/$1 kind r name drop
  for kind in runs probes; do
    [ -d "$dir/$kind" ] || continue
    mkdir -p "$ARCHIVE/$1/$kind"
    for r in "$dir/$kind"/*/; do
      name=$(basename "$r")
      [ -f "$r/record.json" ] && [ ! -f "$ARCHIVE/$1/$kind/$name.tar.xz" ] || continue
      # The labeled rule's random-init probe reads the architecture from supervised seed 0's model: keep it.
      if [ "$1/$kind/$name" = bench-passes/runs/supervised-seed0 ]; then drop=checkpoints; else drop='*.pt'; fi
      tar -C "$dir/$kind" --exclude="$drop" -cJf "$ARCHIVE/$1/$kind/$name.tar.xz.tmp" "$name"
      mv "$ARCHIVE/$1/$kind/$name.tar.xz.tmp" "$ARCHIVE/$1/$kind/$name.tar.xz"
    done
  done
  # The linear probes read the models and start only once every run of a compare has trained: a run archived
  # before its probe finished keeps its best.pt under models/ until then (a session may stop in between).
  for r in "$dir"/runs/*/; do
    name=$(basename "$r")
    if [ -f "$dir/probes/$name/record.json" ]; then rm -f "$ARCHIVE/$1/models/$name.pt"
    elif [ -f "$r/record.json" ] && [ -f "$r/best.pt" ] && [ ! -f "$ARCHIVE/$1/models/$name.pt" ]; then
      mkdir -p "$ARCHIVE/$1/models"
      cp "$r/best.pt" "$ARCHIVE/$1/models/$name.pt.tmp" && mv "$ARCHIVE/$1/models/$name.pt.tmp" "$ARCHIVE/$1/models/$name.pt"
    fi
  done
}
# float32 on every machine: train.amp's default resolves to bf16 on CPUs with native bf16 and to float32 elsewhere,
# and a run resumed by a session on another machine type must not change precision midway.
compare() {  # $1: comparison directory, then compare's options
  local name=$1; shift
  restore "$name"
  bljust compare --data "$DATA" --out "runs/regime/$name" --config "$CODE/recipes/benchmark.yaml" --budget 4500 \
    --jobs 2 --no-progress --set decode.lm="$DATA/lm3.arpa" --set train.amp=false "$@" || { archive "$name"; return 1; }
  archive "$name"
}

# Runs of one comparison may train on several machines (a session's machine is not always the last one's), so each
# start leaves a line naming its CPU; with the runs' train.log timestamps it tells which run trained where.
if [ "${1:-}" != archive ]; then
  cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
  grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo && bf16="native bf16" || bf16="no native bf16"
  echo "$(date -u '+%F %T UTC') start: $cpu ($bf16), $(nproc) cores, stages: ${*:-all}" >> "$ARCHIVE/machines.log"
fi
if [ "${1:-}" = archive ]; then
  for d in runs/regime/bench-*/; do [ -d "$d" ] && archive "$(basename "$d")"; done
  exit 0
fi
if [ -d "$CODE/src" ]; then git -C "$CODE" checkout -q --detach "$CODE_COMMIT"  # nothing of ours runs yet
else git -C "$REPO" worktree add --detach "$CODE" "$CODE_COMMIT"; fi
[ "$(git -C "$CODE" rev-parse --short=7 HEAD)" = "${CODE_COMMIT:0:7}" ] || { echo "$CODE is not at $CODE_COMMIT" >&2; exit 1; }
export PYTHONPATH=$CODE/src OMP_NUM_THREADS=1
if [ ! -f "$DATA/summary.json" ]; then  # deterministic per seed: the corpus the tuning runs trained on
  bljust corpus synth "$DATA" --scenario commands --labeled-minutes 60 --labeled-speakers 24 \
    --unlabeled-minutes 400 --seed 0 --jobs 2
fi
[ -f "$DATA/lm3.arpa" ] || bljust lm "$DATA/lm_text.txt" "$DATA/lm3.arpa" --order 3

METHODS=supervised,ptft,just,pl,bljust,topline
stages=${*:-passes ablations labeled auto posthoc}
for stage in $stages; do
  case $stage in
    passes)  # seed by seed, so that every seed's comparison (and its report) is complete before the next starts
      for n in 1 2 3; do compare bench-passes --methods $METHODS --seeds $n; done ;;
    ablations)
      compare bench-passes --methods $METHODS,bljust-no-finetune,bljust-const-gamma --seeds 3 ;;
    labeled)  # supervised, PL and the topline train the same model under both rules: copied, not retrained
      restore bench-passes
      for n in 1 2 3; do
        compare bench-labeled --budget-rule labeled --reuse-from runs/regime/bench-passes \
          --methods $METHODS,bljust-no-finetune,bljust-const-gamma --seeds $n
      done ;;
    auto)  # issue 16's automatic penalty (auto_ratio 0.5, cap γ_max), 3 seeds, against the tuned schedule
      compare bench-auto --methods bljust --seeds 3 --set bljust.gamma_schedule=auto ;;
    posthoc)  # after the benchmark, and reported as post hoc (RESULTS.md, passes rule): BL-JUST's tuning grid left out
      # bljust.lr_schedule. Judged on dev CER against the tuned BL-JUST's passes-rule seeds; test read only as post hoc.
      compare bench-posthoc-global --methods bljust --seeds 3 --set bljust.lr_schedule=global ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
