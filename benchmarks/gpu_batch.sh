#!/usr/bin/env bash
# One GPU batch, run on a lent CUDA machine in a single call (or on CPU with tiny budgets to check it):
#   1. CLTNet on the ISIC-2016 lesion / corner-patch domains (loss weights "isic"), validated on the CLTNet ISIC `val`
#      samples every VAL_EVERY iterations (best_model.pt = best val JA), then the selected generator evaluated on the
#      ISIC-2016 held-out 40 % (51 images) and on the CLTNet ISIC `testA` samples (8), with otsu / threshold / watershed.
#   2. FSMS, the shipped configuration (benchmarks/train_fsms_skin.sh surrogate: 5,000 iterations, width 16, 112 px)
#      for each arm of FSMS_ARMS (seed, surrogate on/off, pseudo-label fraction), in parallel; each arm's checkpoint
#      chosen on the validation pool only (100 episodes, 1-shot, every VAL_CKPT_EVERY-th checkpoint and the final one),
#      then the chosen one scored on the test pools (200 episodes x 5 tasks, 1- and 5-shot).
# Usage:  benchmarks/gpu_batch.sh <data_dir> <exported_classes_dir> <out_dir>
#   data_dir: a folder with isic2016/, ham10000/ and weak_samples/ISIC/ (the layouts of ../shared/data).
#   exported_classes_dir: the non-skin classes exported by `labelless fsms_classes` (FSMS meta-training; passed as a
#     class folder so the volumes they come from need not be present).
# Env: RUN_CLTNET (1), CLT_STEPS (6000), CLT_PATCH_SCALE (resize: how the B corner patches are made, or image), FSMS_STEPS (5000), SAVE_EVERY (500), VAL_EVERY (250),
#      FSMS_ARMS ("seed0=0,true,0 seed1=1,true,0 seed2=2,true,0": name=seed,surrogate,pseudo_fraction per FSMS run),
#      TRAIN_LIMIT_S (330: wall limit of each training), NUM_WORKERS (2), FSMS_VAL_EPISODES (100),
#      FSMS_TEST_EPISODES (200), VAL_CKPT_EVERY (1000: the interval checkpoints scored on the validation pool),
#      FSMS_EXTRA (extra train.json overrides of every FSMS arm, e.g. "--pseudo_kind dark --init_ckpt <model.pt>").
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="$(cd "${1:?data_dir}" && pwd)"; EXP="$(cd "${2:?exported_classes_dir}" && pwd)"; OUTD="${3:?out_dir}"
mkdir -p "$OUTD"; OUTD="$(cd "$OUTD" && pwd)"
CLT_STEPS="${CLT_STEPS:-6000}"; FSMS_STEPS="${FSMS_STEPS:-5000}"
FSMS_ARMS="${FSMS_ARMS:-seed0=0,true,0 seed1=1,true,0 seed2=2,true,0}"
SAVE_EVERY="${SAVE_EVERY:-500}"; VAL_EVERY="${VAL_EVERY:-250}"; LIMIT="${TRAIN_LIMIT_S:-330}"
NW="${NUM_WORKERS:-2}"; VAL_CKPT="${VAL_CKPT_EVERY:-1000}"; VAL_EP="${FSMS_VAL_EPISODES:-100}"; TEST_EP="${FSMS_TEST_EPISODES:-200}"
CB="$ROOT/bundles/cltnet_weakly_supervised_segmentation"
FB="$ROOT/bundles/fsms_fewshot_skin_segmentation"
run() { python -m monai.bundle run "$@"; }
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# ---- CLTNet, ISIC ----
clt() {
    local D="$OUTD/cltnet_isic"
    [ -d "$D/models" ] && [ ! -f "$D/models/best_model.pt" ] && rm -rf "$D/models"  # a failed first try
    mkdir -p "$D"
    [ -d "$D/domains" ] || python -m labelless weak_domains_images "$DATA/isic2016/images" "$D/domains" --masks_dir "$DATA/isic2016/masks" \
        --patch_scale "${CLT_PATCH_SCALE:-resize}" >"$D/domains.log" 2>&1 || { echo "domains failed"; return 1; }
    timeout "$LIMIT" python -m monai.bundle run --config_file "$CB/configs/train.json" --bundle_root "$CB" \
        --dataset_dir "$D/domains" --val_dir "$DATA/weak_samples/ISIC/isic_1/val" --loss_weights isic \
        --n_steps "$CLT_STEPS" --epoch_length "$VAL_EVERY" --save_interval "$VAL_EVERY" --val_interval "$VAL_EVERY" \
        --keep_checkpoints 100 --log_every 250 --ckpt_dir "$D/models" --output_dir "$D/train_eval" "$@" \
        >>"$D/train.log" 2>&1
    stamp "cltnet train rc=$?"
    [ -f "$D/models/best_model.pt" ] || { echo "no best_model.pt"; return 1; }
    for post in otsu threshold watershed; do
        run --config_file "['$CB/configs/train.json','$CB/configs/evaluate.json']" --bundle_root "$CB" \
            --dataset_dir "$D/domains" --test_dir testA --eval_ckpt_path "$D/models/best_model.pt" --postprocess "$post" \
            --n_overlays 4 --output_dir "$D/eval_test_$post" >"$D/eval_test_$post.log" 2>&1
        run --config_file "['$CB/configs/train.json','$CB/configs/evaluate.json']" --bundle_root "$CB" \
            --dataset_dir "$DATA/weak_samples/ISIC/isic_1" --test_dir testA \
            --eval_ckpt_path "$D/models/best_model.pt" --postprocess "$post" --n_overlays 4 \
            --output_dir "$D/eval_sample_test_$post" >"$D/eval_sample_test_$post.log" 2>&1
    done
    stamp "cltnet eval done"
}

# ---- FSMS, one seed ----
CLASSES="\$labelless.fewshot.image.workflow.meta_class_source([labelless.fewshot.image.synthetic.default_fsms_data(n_classes=40, n_instances=6)['classes'], '$EXP'], None, None, @n_shots, @image_size)"
fev() {  # <ckpt> <out> [overrides]
    local ck="$1" o="$2"; shift 2
    run --config_file "['$FB/configs/train.json','$FB/configs/evaluate.json']" --bundle_root "$FB" \
        --shared_data_dir "$DATA" --class_source "$CLASSES" --eval_ckpt_path "$ck" --output_dir "$o" "$@" \
        >"$o.log" 2>&1
}
fsms() {  # <arm name> <seed> <surrogate> <pseudo_fraction> [extra overrides]
    local name="$1" s="$2" sur="$3" pf="$4" D="$OUTD/fsms_$1"
    mkdir -p "$D"
    timeout "$LIMIT" python -m monai.bundle run --config_file "$FB/configs/train.json" --bundle_root "$FB" \
        --shared_data_dir "$DATA" --class_source "$CLASSES" --surrogate "$sur" --pseudo_fraction "$pf" --seed "$s" \
        --n_steps "$FSMS_STEPS" \
        --epoch_length "$SAVE_EVERY" --save_interval "$SAVE_EVERY" --keep_checkpoints 100 --log_every 500 \
        --num_workers "$NW" --ckpt_dir "$D/models" --output_dir "$D/out" ${FSMS_EXTRA:-} "${@:5}" >>"$D/train.log" 2>&1
    stamp "fsms $name train rc=$?"
    ls "$D"/models/*.pt >/dev/null 2>&1 || return 1
    local cks=() ck it best bestd
    for ck in "$D"/models/checkpoint_iteration=*.pt "$D"/models/fsms_*_1shot.pt; do
        [ -f "$ck" ] || continue
        it="$(basename "$ck" .pt)"; it="${it##*=}"
        # every VAL_CKPT_EVERY-th interval checkpoint and the final one, scored in parallel
        case "$it" in *[!0-9]*) ;; *) [ $(( it % VAL_CKPT )) -eq 0 ] || continue ;; esac
        cks+=("$ck")
        fev "$ck" "$D/val_$it" --eval_split val --eval_shots "[1]" --n_eval_episodes "$VAL_EP" --n_overlays 0 &
    done
    wait
    # the checkpoint with the best validation 1-shot episode Dice (ties: the first), as "<dice> <path>"
    read -r bestd best < <(python - "$D" "${cks[@]}" <<'PY'
import json, sys
from pathlib import Path
d, scores = Path(sys.argv[1]), []
for ck in sys.argv[2:]:
    m = d / f"val_{Path(ck).stem.split('=')[-1]}" / "metrics.json"
    if m.is_file():
        scores.append((json.loads(m.read_text())["results"][0]["episode_dice"], ck))
if scores:
    top = max(scores, key=lambda s: s[0])
    print(top[0], top[1])
PY
)
    [ -n "${best:-}" ] || { echo "$name: no checkpoint scored"; return 1; }
    echo "{\"arm\": \"$name\", \"seed\": $s, \"surrogate\": $sur, \"pseudo_fraction\": $pf, \"checkpoint\": \"$(basename "$best")\", \"val_1shot_episode_dice\": $bestd}" >"$D/selected.json"
    cp "$best" "$D/selected.pt"
    stamp "fsms $name selected $(basename "$best") val $bestd"
    fev "$best" "$D/test" --n_eval_episodes "$TEST_EP" --n_overlays 2
    stamp "fsms $name test done"
}

# the synthetic meta-training classes are generated once here, not by the parallel trainings at the same time
python -c "from labelless.fewshot.image.synthetic import default_fsms_data; default_fsms_data(n_classes=40, n_instances=6)"
stamp "start on $(python -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")')"
if [ "${RUN_CLTNET:-1}" = 1 ]; then
    { clt || { stamp "cltnet: retry with --amp false"; clt --amp false; }; } > "$OUTD/cltnet.out" 2>&1 &
fi
for arm in $FSMS_ARMS; do
    name="${arm%%=*}"; IFS=, read -r s sur pf <<<"${arm#*=}"
    { fsms "$name" "$s" "$sur" "$pf" || ls "$OUTD/fsms_$name"/models/*.pt >/dev/null 2>&1 \
        || { stamp "fsms $name: retry with --amp false"; fsms "$name" "$s" "$sur" "$pf" --amp false; }; } \
        > "$OUTD/fsms_$name.out" 2>&1 &
done
wait
stamp "all done"
cat "$OUTD"/*.out
