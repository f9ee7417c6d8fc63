#!/usr/bin/env bash
# What one `run` call on a lent GPU machine executes: hvqcodec without installing it (the machine's python3 has
# torch, click, numpy, pillow and rich; constriction comes as a carried wheel), benchmarks/gpu_train.sh on the
# carried training photos, and the results copied into $OUT (the device tool brings back at most 8 files).
#
# Prepare here (see README, "Training on a lent GPU"):
#   python benchmarks/gpu_pack.py --quality 88          # runs/gpu-data: the training photos, about 42 MiB
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d runs/gpu-wheels constriction==0.5.0
#   bash benchmarks/gpu_session.sh --aside               # models/*.pt out of the tree (49 MB; not needed there)
#   bash benchmarks/gpu_session.sh --check               # what would travel: must stay under 64 MiB
# then the device tool's run, with carry ["runs/gpu-data", "runs/gpu-wheels"] and timeout_s 600:
#   OUT=$OUT bash benchmarks/gpu_session.sh
# and afterwards, here: bash benchmarks/gpu_session.sh --restore
# A CPU smoke test of the whole path: SCALE=tiny DEVICE=cpu OUT=/tmp/gpu-out bash benchmarks/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ASIDE=runs/models-aside
case "${1:-}" in
    --aside)  # the shipped weights are not needed on the GPU machine: out of the working tree until --restore
        mkdir -p "$ASIDE" && mv models/*.pt "$ASIDE"/ && echo "models/*.pt moved to $ASIDE: run --restore afterwards"
        exit 0 ;;
    --restore)
        mv "$ASIDE"/*.pt models/ && rmdir "$ASIDE" && git status --short models && echo "models restored"
        exit 0 ;;
esac
if [ "${1:-}" = --check ]; then
    [ -d "$ASIDE" ] && echo "note: models/*.pt are aside in $ASIDE; bash benchmarks/gpu_session.sh --restore afterwards"
    # Tracked files as they are in the working tree, untracked files git does not ignore, the carried folders.
    { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1
      du -cb runs/gpu-data runs/gpu-wheels 2>/dev/null | tail -1 | cut -f1; } |
        awk '{ total += $1 } END { printf "would travel: %.1f MiB (limit 64 MiB)\n", total / 1048576;
                                   exit total > 64 * 1048576 }' ||
        { echo "over the limit: move models/*.pt aside (they are not needed there) or pack less"; exit 1; }
    exit 0
fi
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
WORK=${WORK:-/tmp/hvq-gpu}
if ! python3 -c "import constriction" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        runs/gpu-wheels/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# This checkout's hvqcodec, whatever else is installed: a `hvqcodec` command that runs it with this python3.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p /tmp/hvq-bin
printf '#!/bin/sh\nexec python3 -c "import sys; from hvqcodec.cli import main; sys.argv[0] = \\"hvqcodec\\"; main()" "$@"\n' \
    > /tmp/hvq-bin/hvqcodec
chmod +x /tmp/hvq-bin/hvqcodec
export PATH="/tmp/hvq-bin:$PATH"
mkdir -p "$OUT"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee "$OUT/train.log"
status=0
DATA=${DATA:-runs/gpu-data} bash benchmarks/gpu_train.sh "$WORK" 2>&1 | tee -a "$OUT/train.log" || status=$?
# What comes back: the exported model and its manifest, the training logs, the CUDA check, and the priors'
# float weights without their optimizer state (needed to train the priors further; the model file holds only
# their integer tables; the autoencoder's fp16 weights are in the model file, enough for --init-from).
cp "$WORK"/models/*.pt "$WORK"/models/manifest.json "$OUT"/ 2>/dev/null || true
cp "$WORK"/ae/train_log.jsonl "$OUT"/ae_log.jsonl 2>/dev/null || true
cp "$WORK"/priors/train_log.jsonl "$OUT"/priors_log.jsonl 2>/dev/null || true
cp "$WORK"/gpu_check.json "$OUT"/ 2>/dev/null || true
python3 - "$WORK/priors/checkpoint.pt" "$OUT/priors_weights.pt" <<'PY' || true
import sys, torch
checkpoint = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
checkpoint.pop("optimizer", None)
torch.save(checkpoint, sys.argv[2])
PY
ls -la "$OUT" | tee -a "$OUT/train.log"
exit "$status"
