#!/usr/bin/env bash
# Label-free adaptation across a domain shift (docs/results.md, "Label-free adaptation: phantoms -> CHAOS"):
# an SSL-ALPNet model trained only on the embedded synthetic phantoms is adapted with `labelless adapt` to the
# unlabelled CHAOS T2-SPIR fold-0 training scans (images only, the 15 scans the shipped CHAOS model trains on), under a
# CPU-time budget, and evaluated on CHAOS fold 0 (Setting 1, protocol and GT-free modes) before and after.
#   benchmarks/adapt_phantom_chaos.sh phantom       # 2,000 iterations on the phantoms -> $OUT/phantom/model.pt
#   benchmarks/adapt_phantom_chaos.sh adapt [min]   # adapt for [min] CPU-minutes (default 60), snapshots at 15, 30
#   benchmarks/adapt_phantom_chaos.sh eval <ckpt> <name>   # CHAOS fold 0 -> $OUT/eval/<name>/metrics.json
#   benchmarks/adapt_phantom_chaos.sh scratch [min] # control: the same budget from random initial weights
# One thread per process (OMP_NUM_THREADS=1). OUT defaults to runs/adapt_phantom. Extra `labelless adapt` options in
# ADAPT_ARGS and another output name in ADAPT_NAME, e.g.
#   ADAPT_ARGS="--augmentation strong" ADAPT_NAME=adapted_strong benchmarks/adapt_phantom_chaos.sh adapt 15
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
B="$ROOT/bundles/ssl_alpnet_fewshot_segmentation"
OUT="${LABELLESS_RUNS:-$ROOT/runs}/adapt_phantom"
CHAOS="${LABELLESS_DATA:-$ROOT/../shared/data}/chaos_t2spir"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
# the fold-0 training scans of CHAOS (test scans 1, 2, 3, 5 and the support scan 8 left out), linked, images only
volumes() {
    mkdir -p "$OUT/chaos_train"
    for i in 10 13 15 19 20 21 22 31 32 33 34 36 37 38 39; do
        ln -sf "$(realpath "$CHAOS/image_$i.nii.gz")" "$OUT/chaos_train/image_$i.nii.gz"
    done
}
case "${1:?usage: $0 phantom|adapt|scratch|eval}" in
    phantom)
        python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$B" --setting 1 \
            --n_steps 2000 --epoch_length 500 --save_interval 500 --log_every 100 \
            --ckpt_dir "$OUT/phantom" --output_dir "$OUT/phantom" 2>&1 | tee "$OUT/phantom.log"
        python -c "import sys, torch; ck = torch.load(sys.argv[1], map_location='cpu', weights_only=False); \
torch.save(ck['model'], sys.argv[2])" "$OUT/phantom/fold0_setting1.pt" "$OUT/phantom/model.pt" ;;
    adapt|scratch)
        volumes
        MIN="${2:-60}"
        INIT="$OUT/phantom/model.pt"; NAME="${ADAPT_NAME:-adapted}"
        [ "$1" = scratch ] && { INIT=null; NAME="${ADAPT_NAME:-scratch}"; }
        # shellcheck disable=SC2086
        labelless adapt "$B" "$OUT/chaos_train" --minutes "$MIN" --clock cpu --steps 100000 \
            --snapshot_minutes "[15,30]" --init_ckpt "$INIT" --out "$OUT/$NAME" ${ADAPT_ARGS:-} 2>&1 | tee "$OUT/$NAME.log" ;;
    eval)
        CKPT="${2:?ckpt}"; NAME="${3:?name}"
        python -m monai.bundle run --config_file "['$B/configs/train.json','$B/configs/evaluate.json']" \
            --bundle_root "$B" --dataset_dir "$CHAOS" --folds "[0]" --setting 1 --eval_ckpt_path "$CKPT" \
            --n_overlays 0 --output_dir "$OUT/eval/$NAME" > "$OUT/eval_$NAME.log" 2>&1
        python -c "import json, sys; d = json.load(open(sys.argv[1])); \
print(sys.argv[2], 'protocol', round(100 * d['mean_dice'], 2), 'gt_free', round(100 * d['gt_free']['mean_dice'], 2), \
{c: round(100 * v['dice'], 2) for c, v in d['per_class'].items()})" "$OUT/eval/$NAME/metrics.json" "$NAME" ;;
    *) echo "usage: $0 phantom|adapt|scratch|eval" >&2; exit 2 ;;
esac
