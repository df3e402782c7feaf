#!/usr/bin/env bash
# Trains the few-shot models behind docs/results.md on CHAOS fold 0 (CPU, one thread per run; run s1 and s2 in
# parallel on a 2-core machine), with the same budget and seed for every method. The shipped models/model.pt of a
# bundle is the `model` entry of runs/<bundle>/chaos_s1/fold0_setting1.pt saved as a plain state dict.
#   benchmarks/train_fewshot_chaos.sh ssl_alpnet_fewshot_segmentation s1   # Setting 1, 7,000 iterations
#   benchmarks/train_fewshot_chaos.sh dspnet_fewshot_segmentation s2       # Setting 2, label sets 0 and 1, 3,500 each
# Extra arguments are passed to every `monai.bundle run` call (e.g. --use_bcma false for an ablation).
# Outputs: runs/<bundle>/chaos_s1 and runs/<bundle>/chaos_s2 (the SSL-ALPNet runs of results.md used runs/chaos_s1|2).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="${1:?usage: $0 <bundle> s1|s2 [overrides...]}"
WHICH="${2:?usage: $0 <bundle> s1|s2 [overrides...]}"
shift 2
B="$ROOT/bundles/$BUNDLE"
OUT="${LABELLESS_RUNS:-$ROOT/runs}/$BUNDLE"
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}/chaos_t2spir"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {
    python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$B" \
        --dataset_dir "$DATA" --derived_dir "$ROOT/runs/derived_chaos" \
        --epoch_length 500 --save_interval 500 --log_every 100 "$@"
}
case "$WHICH" in
    s1) run --ckpt_dir "$OUT/chaos_s1" --output_dir "$OUT/chaos_s1" --setting 1 --n_steps 7000 "$@" ;;
    s2) run --ckpt_dir "$OUT/chaos_s2" --output_dir "$OUT/chaos_s2/ls0" --setting 2 --label_set 0 --n_steps 3500 "$@"
        run --ckpt_dir "$OUT/chaos_s2" --output_dir "$OUT/chaos_s2/ls1" --setting 2 --label_set 1 --n_steps 3500 "$@" ;;
    *) echo "usage: $0 <bundle> s1|s2 [overrides...]" >&2; exit 2 ;;
esac
