#!/usr/bin/env bash
# Trains the five methods on one data directory under an equal budget of batch passes
# (1200 forward/backward passes over batches of <= 60 s of audio: a joint step counts two),
# two single-threaded jobs at a time, then evaluates each on dev and test.
# Usage: benchmarks/methods_equal_budget.sh DATA_DIR OUT_DIR   (run inside the .venv)
set -euo pipefail
DATA=${1:?data dir}; OUT=${2:?output dir}
CFG=recipes/demo.yaml
COMMON=(--config "$CFG" --set train.num_threads=1 --set train.valid_every=200)
declare -A ARGS=(
  [supervised]="--set train.max_steps=1200"
  [ptft]="--set train.max_steps=1200"
  [pl]="--set train.max_steps=1200"
  [just]="--set train.max_steps=600"
  [bljust]="--set bljust.outer_epochs=10 --set bljust.finetune_steps=120"
)
train() {
  local m=$1
  # shellcheck disable=SC2086
  bljust train --method "$m" --data "$DATA" --out "$OUT/$m" "${COMMON[@]}" ${ARGS[$m]} \
    $( [ -d "$OUT/$m/checkpoints" ] && echo --resume ) > "$OUT/$m.log" 2>&1
}
mkdir -p "$OUT"
for pair in "supervised bljust" "ptft just" "pl"; do
  for m in $pair; do train "$m" & done
  wait
done
echo "| method | steps | labeled batches | unlabeled batches | train min | dev WER | dev CER | test WER | test CER |"
echo "|---|---|---|---|---|---|---|---|---|"
for m in supervised ptft just pl bljust; do
  bljust evaluate "$OUT/$m" --data "$DATA" --split dev > /dev/null 2>&1
  bljust evaluate "$OUT/$m" --data "$DATA" --split test > /dev/null 2>&1
  python - "$OUT/$m" "$m" <<'PY'
import json, sys
run, m = sys.argv[1], sys.argv[2]
s = json.load(open(f"{run}/summary.json"))
d, t = (json.load(open(f"{run}/eval/{x}.json")) for x in ("dev", "test"))
print(f"| {m} | {s['steps']} | {s['labeled_batches']} | {s['unlabeled_batches']} | {s['train_seconds'] / 60:.1f} | "
      f"{100 * d['wer']:.1f} | {100 * d['cer']:.1f} | {100 * t['wer']:.1f} | {100 * t['cer']:.1f} |")
PY
done
