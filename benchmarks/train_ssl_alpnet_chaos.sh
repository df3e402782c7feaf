#!/usr/bin/env bash
# Trains the SSL-ALPNet models behind docs/results.md on CHAOS fold 0 (CPU, one thread per run; run s1 and s2 in
# parallel on a 2-core machine). The shipped models/model.pt is the `model` entry of runs/chaos_s1/fold0_setting1.pt
# saved as a plain state dict.
#   benchmarks/train_ssl_alpnet_chaos.sh s1    # Setting 1, 7,000 iterations
#   benchmarks/train_ssl_alpnet_chaos.sh s2    # Setting 2, label sets 0 and 1, 3,500 iterations each
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
B="$ROOT/bundles/ssl_alpnet_fewshot_segmentation"
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}/chaos_t2spir"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
run() {
    python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$B" \
        --dataset_dir "$DATA" --derived_dir "$ROOT/runs/derived_chaos" \
        --epoch_length 500 --save_interval 500 --log_every 100 "$@"
}
case "${1:-}" in
    s1) run --ckpt_dir "$ROOT/runs/chaos_s1" --output_dir "$ROOT/runs/chaos_s1" --setting 1 --n_steps 7000 ;;
    s2) run --ckpt_dir "$ROOT/runs/chaos_s2" --output_dir "$ROOT/runs/chaos_s2/ls0" --setting 2 --label_set 0 --n_steps 3500
        run --ckpt_dir "$ROOT/runs/chaos_s2" --output_dir "$ROOT/runs/chaos_s2/ls1" --setting 2 --label_set 1 --n_steps 3500 ;;
    *) echo "usage: $0 s1|s2" >&2; exit 2 ;;
esac
