#!/usr/bin/env bash
# One command that checks bljust on a GPU in at most 8 minutes (issue 15):
#   1. trains the demo model a few hundred steps with every method under bf16 (and a transducer),
#   2. runs a 2-process DDP BL-JUST run (joint steps included) if two GPUs are visible,
#   3. runs `bljust bench` on the GPU,
# then prints one table. It never falls back to the CPU: without CUDA it exits 1 at once, and every
# run asks for train.device=cuda, which fails when CUDA is unavailable.
#
#   scripts/gpu_check.sh [OUT]        (default OUT: /tmp/bljust-gpu-check; STEPS=300 to change the steps)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BLJUST=("$PY" -m bljust)
OUT=${1:-/tmp/bljust-gpu-check}
STEPS=${STEPS:-300}
DATA=$OUT/data

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: CUDA is not available (torch %s); this check never runs on the CPU" % torch.__version__)
name = torch.cuda.get_device_name(0)
print(f"gpu_check: {torch.cuda.device_count()} GPU(s), {name}; bf16: {torch.cuda.is_bf16_supported()}; torch {torch.__version__}")
EOF

mkdir -p "$OUT"
if [ ! -f "$DATA/summary.json" ]; then
  # a small demo corpus: 20 labeled and 40 unlabeled minutes, synthesised on every core
  "${BLJUST[@]}" corpus synth "$DATA" --labeled-minutes 20 --unlabeled-minutes 40 --dev-minutes 4 --test-minutes 4 \
    --jobs "$(nproc)" --quiet
fi
# PL labels the unlabeled split with the LM beam search (recipes/demo.yaml: pl.decode=lm)
[ -f "$DATA/lm3.arpa" ] || "${BLJUST[@]}" lm "$DATA/lm_text.txt" "$DATA/lm3.arpa" --order 3 > /dev/null

COMMON=(--config recipes/demo.yaml --set train.device=cuda --set train.amp_dtype=bf16 --set "train.max_steps=$STEPS"
        --set train.valid_every=100000 --set train.checkpoint_every=100000)
runs=()
for method in supervised ptft pl just bljust; do
  rm -rf "${OUT:?}/$method"
  extra=(); [ "$method" = pl ] && extra=(--set "decode.lm=$DATA/lm3.arpa")
  "${BLJUST[@]}" train --method "$method" --data "$DATA" --out "$OUT/$method" "${COMMON[@]}" "${extra[@]}" \
    > "$OUT/$method.log" 2>&1 \
    || { tail -30 "$OUT/$method.log"; echo "gpu_check: $method FAILED" >&2; exit 1; }
  runs+=("$method")
done
rm -rf "${OUT:?}/rnnt"
"${BLJUST[@]}" train --method supervised --data "$DATA" --out "$OUT/rnnt" "${COMMON[@]}" --set model.loss=rnnt \
  > "$OUT/rnnt.log" 2>&1 || { tail -30 "$OUT/rnnt.log"; echo "gpu_check: rnnt FAILED" >&2; exit 1; }
runs+=(rnnt)

gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then
  rm -rf "${OUT:?}/ddp"
  "$PY" -m torch.distributed.run --nproc_per_node=2 -m bljust train --method bljust --data "$DATA" --out "$OUT/ddp" \
    "${COMMON[@]}" --set train.max_steps=100 > "$OUT/ddp.log" 2>&1 \
    || { tail -30 "$OUT/ddp.log"; echo "gpu_check: 2-process DDP FAILED" >&2; exit 1; }
  runs+=(ddp)
else
  echo "gpu_check: one GPU visible; the 2-process DDP run is skipped (the CPU tests run DDP on gloo)"
fi

"${BLJUST[@]}" bench --config recipes/demo.yaml --set train.device=cuda --data "$DATA" > "$OUT/bench.md" 2> "$OUT/bench.log" \
  || { tail -30 "$OUT/bench.log"; echo "gpu_check: bench FAILED" >&2; exit 1; }

"$PY" - "$OUT" "${runs[@]}" <<'EOF'
import json
import sys
from pathlib import Path

out, runs = Path(sys.argv[1]), sys.argv[2:]
print("\n| run | steps | train s | steps/s | labeled h | unlabeled h | dev CER % | bad steps |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in runs:
    s = json.loads((out / name / "summary.json").read_text())
    cer = s.get("best_dev_cer")
    print(f"| {name} | {s['steps']} | {s['train_seconds']:.0f} | {s['steps'] / max(s['train_seconds'], 1e-9):.1f} | "
          f"{s['labeled_hours_processed']:.2f} | {s['unlabeled_hours_processed']:.2f} | "
          f"{'–' if cer is None else f'{100 * cer:.1f}'} | {s['bad_steps']} |")
print()
print((out / "bench.md").read_text())
EOF
