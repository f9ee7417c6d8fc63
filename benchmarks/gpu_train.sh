#!/usr/bin/env bash
# One command that trains a larger hvq model on one GPU in at most 9 minutes (bf16 autocast), exports it with
# its integer priors into OUT/models, and runs the CUDA-vs-CPU check. Every stage runs on a time budget.
#
#   bash benchmarks/gpu_train.sh runs/gpu                        # on a GPU machine (DATA: training photos)
#   SCALE=tiny DEVICE=cpu DATA=photos/ bash benchmarks/gpu_train.sh /tmp/smoke   # a CPU smoke test
#
# DATA defaults to ../shared/datasets/train (VAL to its cid22/validation). On a lent machine without ../shared,
# carry a folder of training crops and point DATA at it.
set -euo pipefail
OUT=${1:-runs/gpu}
DATA=${DATA:-../shared/datasets/train}
VAL=${VAL:-$DATA/cid22/validation}
DEVICE=${DEVICE:-cuda}
NAME=${NAME:-hvq-gpu}
if [ "${SCALE:-full}" = tiny ]; then
    AE_MINUTES=0.1; PRIOR_MINUTES=0.05; BATCH=2; CROP=32; CODE_CROPS=8; CAL_IMAGES=1; CAL_CROP=32
    ARCH="--widths 8,8,8 --encoder-depths 1,1,1 --decoder-depths 1,1,1 --codebook-sizes 16,16,16 --code-dim 4
          --refine-stages 1 --refine-groups 1 --refine-codebook-size 8 --refine-lambdas 0.01 --bottom-lambdas 0,0.05
          --detail-head"
    PRIOR_ARCH="--channels 8 --causal-blocks 1 --cond-blocks 1 --stage-channels 8 --stage-blocks 1"
else
    # 6 + 2 minutes of training, about a minute of export, calibration and checks.
    AE_MINUTES=6; PRIOR_MINUTES=2; BATCH=64; CROP=256; CODE_CROPS=20000; CAL_IMAGES=6; CAL_CROP=512
    ARCH="--widths 96,144,192 --encoder-depths 3,3,4 --decoder-depths 3,4,6 --refine-stages 3 --refine-groups 1
          --refine-codebook-size 256 --refine-lambdas 0.002,0.0007,0.0002 --bottom-lambdas 0,0,0.003,0.01,0.02
          --detail-head"
    # hvq-vr3's prior design (sub-position conditioning, 6 conditioning blocks): its width keeps CPU decoding
    # within its budget, and its layers within the 8-bit tables' float32-exact bound.
    PRIOR_ARCH="--channels 64 --causal-blocks 2 --cond-blocks 6 --subpixel-cond --stage-channels 32 --stage-blocks 2"
fi
VAL_ARGS=()
# cid22/validation's 844297 duplicates a training picture (any suffix: packed data is WebP)
[ -d "$VAL" ] && VAL_ARGS=(--val "$VAL" --exclude '*844297.*')
mkdir -p "$OUT/models"
export HVQCODEC_MODELS="$OUT/models"
# shellcheck disable=SC2086
hvqcodec train autoencoder --device "$DEVICE" --data "$DATA" "${VAL_ARGS[@]}" --out "$OUT/ae" $ARCH \
    --steps 1000000 --time-budget "$AE_MINUTES" --batch-size "$BATCH" --crop "$CROP" --lr 2e-3 --warmup 200
hvqcodec models export "$OUT/ae/checkpoint.pt" --name "$NAME" --models-dir "$OUT/models" --force
# shellcheck disable=SC2086
hvqcodec train priors --device "$DEVICE" --model "$NAME" --data "$DATA" "${VAL_ARGS[@]}" --out "$OUT/priors" \
    $PRIOR_ARCH --steps 1000000 --time-budget "$PRIOR_MINUTES" --batch-size "$BATCH" --crop "$CROP" \
    --code-crops "$CODE_CROPS"
hvqcodec models export "$OUT/ae/checkpoint.pt" --name "$NAME" --models-dir "$OUT/models" \
    --priors "$OUT/priors/checkpoint.pt" --force --default
hvqcodec models calibrate "$NAME" --models-dir "$OUT/models" --data "$DATA" --exclude '*/cid22/validation/*' \
    --images "$CAL_IMAGES" \
    --crop "$CAL_CROP" --device "$DEVICE"
if [ "$DEVICE" = cuda ]; then
    python benchmarks/gpu_check.py --model "$NAME" --json "$OUT/gpu_check.json" | tee "$OUT/gpu_check.txt"
fi
echo "done: $OUT/models holds $NAME"
