#!/usr/bin/env bash
# Trains and evaluates one SABR-Net method on a shared dataset with the bundle's CPU profile (128 px, network
# profile "cpu", stage-1 profile "lite"), selecting every checkpoint on the validation split of the seeded
# 70/10/20 split by patient/fetus, then evaluating on its test split (coarse and refined).
#   benchmarks/train_sabrnet.sh <hc18|ddti> <ratio> <method> [scale] [overrides...]
# methods: sabrnet (pretrain -> finetune -> boundary), sabrnet_noshadow, sabrnet_acoustic, sabrnet_norefine (same
# model as sabrnet, evaluated without refinement), supervised (labelled images only, same budget), mean_teacher.
# scale multiplies every iteration budget (default 1: pretrain 400, finetune 600, boundary 200, baselines 800).
# Learning rate 1e-3 for every stage and method (SABRNET_LR; the spec's rates under-train at these budgets:
# supervised HC18 20 %, 400 iterations: val Dice 0.77 at 8e-5, 0.83 at 1e-3). Batch 2 after stage 1 (SABRNET_BATCH), EMA decay 0.99 (time constant 100 iterations, for these short budgets; the spec's 0.99778 suits 60k iterations).
# Output: runs/sabrnet/<dataset>_r<ratio>/<method>/{models,eval,*.log}
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DS="${1:?usage: $0 <hc18|ddti> <ratio> <method> [scale]}"; RATIO="${2:?ratio}"; METHOD="${3:?method}"
SCALE="${4:-1}"; shift $(( $# >= 4 ? 4 : 3 ))
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}"
B="$ROOT/bundles/sabrnet_semisupervised_ultrasound_segmentation"
OUT="${LABELLESS_RUNS:-$ROOT/runs}/sabrnet/${DS}_r${RATIO}/${METHOD}"
mkdir -p "$OUT"
steps() { python -c "print(max(1, int(round($1 * $SCALE))))"; }
run_stage() {  # stage n_steps [overrides]
    local stage="$1" n="$2"; shift 2
    python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$OUT" --stage "$stage" \
        --dataset_dir "$DATA/$DS" --labeled_ratio "$RATIO" --n_steps "$n" --epoch_length 100 --val_interval 100 \
        --save_interval 100000 --ema_decay 0.99 --batch_size "$BATCH" --learning_rate "$LR" \
        --ckpt_dir "$OUT/models/$stage" --output_dir "$OUT/eval/$stage" "$@" \
        > "$OUT/$stage.log" 2>&1
}
SHADOW=freeform
BATCH="${SABRNET_BATCH:-2}"  # labelled batch of the stages after pretraining (stage 1 pairs one labelled + one unlabelled)
LR="${SABRNET_LR:-0.001}"  # every stage and method (the spec's 8e-5..1.6e-4 under-train at these budgets)
case "$METHOD" in
    sabrnet|sabrnet_norefine) ;;
    sabrnet_noshadow) SHADOW=none ;;
    sabrnet_acoustic) SHADOW=acoustic ;;
    supervised|mean_teacher) ;;
    *) echo "unknown method $METHOD" >&2; exit 2 ;;
esac
REFINE=true
case "$METHOD" in
    sabrnet*)
        if [ "$METHOD" = sabrnet_norefine ]; then
            REFINE=false
            SRC="$(dirname "$OUT")/sabrnet/models/model.pt"
            [ -f "$SRC" ] || { echo "run sabrnet first ($SRC missing)" >&2; exit 2; }
            mkdir -p "$OUT/models"; cp "$SRC" "$OUT/models/model.pt"
        else
            BATCH=1 run_stage pretrain "$(steps 400)" --shadow_mode "$SHADOW" "$@"
            run_stage finetune "$(steps 600)" --init_ckpt "$OUT/models/pretrain/model.pt" "$@"
            run_stage boundary "$(steps 200)" --init_ckpt "$OUT/models/finetune/model.pt" "$@"
            cp "$OUT/models/boundary/model.pt" "$OUT/models/model.pt"
        fi ;;
    supervised)
        REFINE=false  # no boundary heads trained: coarse = refined
        run_stage supervised "$(steps 800)" "$@"
        cp "$OUT/models/supervised/model.pt" "$OUT/models/model.pt" ;;
    mean_teacher)
        REFINE=false
        run_stage mean_teacher "$(steps 800)" "$@"
        cp "$OUT/models/mean_teacher/model.pt" "$OUT/models/model.pt" ;;
esac
python -m monai.bundle run --config_file "['$B/configs/train.json','$B/configs/evaluate.json']" --bundle_root "$OUT" \
    --dataset_dir "$DATA/$DS" --labeled_ratio "$RATIO" --eval_split test --refine "$REFINE" \
    --eval_ckpt_path "$OUT/models/model.pt" --output_dir "$OUT/eval/test" > "$OUT/evaluate.log" 2>&1
python -c "import json,sys; m=json.load(open('$OUT/eval/test/metrics.json')); print('$DS r$RATIO $METHOD', 'coarse', round(100*m['coarse']['mean_dice'],2), 'refined', round(100*m['refined']['mean_dice'],2))"
