#!/usr/bin/env bash
# Evaluates the FSMS models of benchmarks/train_fsms_skin.sh with the bundle's evaluate.json (200 seeded episodes x
# 5 tasks, 1- and 5-shot) on the shared data's test pools, or on the validation pool (the CLTNet ISIC val samples).
#   benchmarks/eval_fsms_skin.sh surrogate            # test pools, final checkpoint -> runs/fsms/eval_surrogate
#   benchmarks/eval_fsms_skin.sh baseline             # -> runs/fsms/eval_baseline
#   benchmarks/eval_fsms_skin.sh surrogate val        # validation pool, every saved checkpoint, 1-shot, 100 episodes
#                                                     # -> runs/fsms/val_surrogate/<iteration>
#   benchmarks/eval_fsms_skin.sh surrogate ckpts      # test pools, every saved checkpoint, 1-shot: the checkpoint
#                                                     # spread (not a selection) -> runs/fsms/ckvar_surrogate/<iteration>
# Extra arguments go to `monai.bundle run`. Print the table with
#   python benchmarks/fsms_skin.py summarize "baseline=runs/fsms/eval_baseline" "surrogate=runs/fsms/eval_surrogate"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME="${1:?usage: $0 surrogate|baseline [test|val|ckpts] [overrides...]}"
SPLIT="${2:-test}"
shift $(( $# >= 2 ? 2 : 1 ))
B="$ROOT/bundles/fsms_fewshot_skin_segmentation"
RUN="${LABELLESS_RUNS:-$ROOT/runs}/fsms"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
ev() {
    python -m monai.bundle run --config_file "['$B/configs/train.json','$B/configs/evaluate.json']" --bundle_root "$B" \
        --shared_data_dir "${LABELLESS_DATA:-$ROOT/../shared/data}" --eval_label "$NAME" "$@"
}
case "$SPLIT" in
    test) ev --eval_ckpt_path "$RUN/$NAME/fsms_${NAME}_1shot.pt" --output_dir "$RUN/eval_$NAME" "$@" ;;
    val|ckpts)
        # interval checkpoints (train_fsms_skin.sh keeps 20; snap_<name>/ holds copies taken during a run)
        for ckpt in "$RUN/$NAME"/checkpoint_iteration=*.pt "$RUN/snap_$NAME"/checkpoint_iteration=*.pt \
            "$RUN/$NAME/fsms_${NAME}_1shot.pt"; do
            [ -f "$ckpt" ] || continue
            it="$(basename "$ckpt" .pt)"; it="${it##*=}"
            if [ "$SPLIT" = val ]; then
                [ -f "$RUN/val_$NAME/$it/metrics.json" ] && continue
                ev --eval_split val --eval_ckpt_path "$ckpt" --output_dir "$RUN/val_$NAME/$it" --n_overlays 0 \
                    --eval_shots "[1]" --n_eval_episodes 100 "$@"
            else
                [ -f "$RUN/ckvar_$NAME/$it/metrics.json" ] && continue
                ev --eval_ckpt_path "$ckpt" --output_dir "$RUN/ckvar_$NAME/$it" --n_overlays 0 --eval_shots "[1]" "$@"
            fi
        done ;;
    *) echo "usage: $0 surrogate|baseline [test|val|ckpts] [overrides...]" >&2; exit 2 ;;
esac
