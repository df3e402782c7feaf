#!/usr/bin/env bash
# Trains the FSMS models behind docs/results.md (CPU, one thread per run; run both in parallel on a 2-core machine),
# with the same budget, seed and episodes for both: meta-training classes = the built-in synthetic shape classes +
# the non-skin structures exported from ../shared/data; unlabelled target pool = the first 40 % of ISIC-2016.
#   benchmarks/train_fsms_skin.sh surrogate   # with the denoising surrogate (alternating updates)
#   benchmarks/train_fsms_skin.sh baseline    # the few-shot baseline (--surrogate false)
# Extra arguments are passed to `monai.bundle run` (default --n_steps 5000). Outputs: runs/fsms/<name>/.
# The shipped models/model.pt is the `model` entry of runs/fsms/surrogate/fsms_surrogate_1shot.pt as a plain state dict.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME="${1:?usage: $0 surrogate|baseline [overrides...]}"
shift
case "$NAME" in
    surrogate) SUR=true ;;
    baseline) SUR=false ;;
    *) echo "usage: $0 surrogate|baseline [overrides...]" >&2; exit 2 ;;
esac
B="$ROOT/bundles/fsms_fewshot_skin_segmentation"
OUT="${LABELLESS_RUNS:-$ROOT/runs}/fsms/$NAME"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$B" \
    --shared_data_dir "${LABELLESS_DATA:-$ROOT/../shared/data}" --surrogate "$SUR" --n_steps 5000 \
    --epoch_length 500 --save_interval 500 --keep_checkpoints 20 --log_every 100 --ckpt_dir "$OUT" \
    --output_dir "$OUT/out" "$@"
