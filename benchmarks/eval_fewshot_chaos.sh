#!/usr/bin/env bash
# Evaluates the CHAOS fold-0 models trained by benchmarks/train_fewshot_chaos.sh (docs/results.md).
#   benchmarks/eval_fewshot_chaos.sh <bundle> s1          # Setting 1: protocol + GT-free modes
#   benchmarks/eval_fewshot_chaos.sh <bundle> s2          # Setting 2: label sets 0 and 1, protocol + GT-free modes
#   benchmarks/eval_fewshot_chaos.sh <bundle> ablate NAME overrides...
#        # the Setting-1 model evaluated with overrides (test-time ablation), protocol mode, into eval_ablate_NAME
# Outputs: runs/<bundle>/eval_* (metrics.json/.csv/.md + overlays).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUNDLE="${1:?usage: $0 <bundle> s1|s2|ablate NAME [overrides...]}"
WHICH="${2:?usage: $0 <bundle> s1|s2|ablate NAME [overrides...]}"
shift 2
B="$ROOT/bundles/$BUNDLE"
OUT="${LABELLESS_RUNS:-$ROOT/runs}/$BUNDLE"
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}/chaos_t2spir"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ev() {
    python -m monai.bundle run --config_file "['$B/configs/train.json','$B/configs/evaluate.json']" --bundle_root "$B" \
        --dataset_dir "$DATA" --folds "[0]" "$@"
}
case "$WHICH" in
    s1) ev --eval_ckpt_path "$OUT/chaos_s1/fold0_setting1.pt" --output_dir "$OUT/eval_s1" "$@" ;;
    s2) ev --setting 2 --label_set 0 --ckpt_dir "$OUT/chaos_s2" --output_dir "$OUT/eval_s2_ls0" "$@"
        ev --setting 2 --label_set 1 --ckpt_dir "$OUT/chaos_s2" --output_dir "$OUT/eval_s2_ls1" "$@" ;;
    ablate) NAME="${1:?ablation name}"; shift
        ev --eval_ckpt_path "$OUT/chaos_s1/fold0_setting1.pt" --output_dir "$OUT/eval_ablate_$NAME" \
            --eval_modes "['protocol']" --n_overlays 0 "$@" ;;
    *) echo "usage: $0 <bundle> s1|s2|ablate NAME [overrides...]" >&2; exit 2 ;;
esac
