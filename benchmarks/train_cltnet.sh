#!/usr/bin/env bash
# Trains the CLTNet bundle (CPU profile of train.json: 128 px, ngf/ndf 16) on the BraTS FLAIR domains built from the
# shared cases (labelless weak_domains: 3 training cases, case pat0003 held out), selecting the model on the CLTNet
# BraTS sample validation folder only.  Output: runs/cltnet/<name>/ (models/, eval/ with val overlays, train.log).
#   benchmarks/train_cltnet.sh brats [n_steps] [overrides...]
#   benchmarks/train_cltnet.sh isic [n_steps] [overrides...]   # ISIC-2016 domains (loss weights "isic"), CLTNet ISIC val
# ISIC_PATCH_SCALE=image builds the B patches at the A images' scale (mirror-tiled; runs/cltnet/isic_domains_tile).
# ISIC_MIN_MEAN=<m> rejects corner patches darker than m (default 0.2, spec §1.2: vignetting only; 0.6 also rejects
# the dark corners of frame-filling lesions, runs/cltnet/isic_domains_m<m>).
# ISIC_VAL_FRACTION=<f> holds the last f of the ids before the test split out of training as a labelled val/ split
# (masks read for selection only), which then replaces the CLTNet ISIC val samples for the validation.
# ISIC_NORMALS=grid (with ISIC_LESION_CROPS) takes B from the crops of that grid that pass the lesion-free rules.
# ISIC_NORMALS=inpaint|both makes trainB of the training images with their dark blob painted over (alone, or with the
# corner patches; labelless.weak.domains.lesion_removed_image, not in the spec; runs/cltnet/isic_domains..._inpaint).
# ISIC_INPAINT='<json>' passes options to the painting over (e.g. '{"max_border":0.5,"max_area":0.8,"fill":"planar",
# "paint_corners":true}' keeps lesions cut by the frame); ISIC_INPAINT_TAG=<t> names those domains (..._<normals>_<t>).
# ISIC_LESION_CROPS=<n> makes trainA an n x n grid of crops of each training image at the corner patches'
# magnification (not in the spec; ..._crops<n>_lesion); train and evaluate such a model with --patch_zoom 3.333
# (1 / 0.3).
# Only the crops that fail the lesion-free rules are A crops; ISIC_A_CROPS=all keeps every crop (..._crops<n>, the
# domains of the tenth session, whose B patches were A crops as well).
# ISIC_SIDE=<f> sets the side of the corner patches and of the crops as a fraction of the image (default 0.3, spec
# §1.2; ..._s<f>); with ISIC_LESION_CROPS train and evaluate with --patch_zoom 1/f (e.g. ISIC_SIDE=0.2
# ISIC_LESION_CROPS=5 ... --patch_zoom 5).
# ISIC_CC=<p> maps each training image's illuminant to grey (shades of grey, power p; not in the spec) before its
# crops are cut (..._cc<p>); the validation during training, and evaluation / inference after it, then need
# --color_constancy <p> (passed to train.json here).
# CLTNET_EVERY=<n>: checkpoint and validate every n iterations (250).
# CLTNET_OUT=<folder> writes elsewhere (default runs/cltnet/brats). An interrupted run continues with the same
# command plus `--resume true` (from the newest complete checkpoint; the log is appended to).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME="${1:?usage: $0 brats|isic [n_steps] [overrides...]}"
N_STEPS="${2:-2500}"
shift $(( $# >= 2 ? 2 : 1 ))
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}"
RUN="${LABELLESS_RUNS:-$ROOT/runs}/cltnet"
B="$ROOT/bundles/cltnet_weakly_supervised_segmentation"
case "$NAME" in
    brats)
        DOMAINS="$RUN/brats_domains"
        [ -f "$DOMAINS/manifest.json" ] || labelless weak_domains "$DATA/brats2015" "$DOMAINS" --n_test 1
        VAL="$DATA/weak_samples/BraTS/brats_1/val"
        WEIGHTS=brats ;;
    isic)  # lesion images of ISIC-2016 (first 60 % of the ids) / their lesion-free corner patches; test = last 40 %
        SCALE="${ISIC_PATCH_SCALE:-resize}"  # image: B patches at the A images' scale, mirror-tiled
        MIN_MEAN="${ISIC_MIN_MEAN:-0.2}"
        DOMAINS="$RUN/isic_domains$([ "$SCALE" = image ] && echo _tile || true)"
        VAL_FRACTION="${ISIC_VAL_FRACTION:-0}"
        [ "$MIN_MEAN" = 0.2 ] || DOMAINS="${DOMAINS}_m$MIN_MEAN"
        [ "$VAL_FRACTION" = 0 ] || DOMAINS="${DOMAINS}_v$VAL_FRACTION"
        NORMALS="${ISIC_NORMALS:-corners}"
        [ "$NORMALS" = corners ] || DOMAINS="${DOMAINS}_$NORMALS"
        INPAINT="${ISIC_INPAINT:-{\}}"
        if [ "$INPAINT" != "{}" ]; then DOMAINS="${DOMAINS}_${ISIC_INPAINT_TAG:?set ISIC_INPAINT_TAG with ISIC_INPAINT}"; fi
        CROPS="${ISIC_LESION_CROPS:-0}"
        A_CROPS="${ISIC_A_CROPS:-lesion}"
        [ "$CROPS" = 0 ] || DOMAINS="${DOMAINS}_crops$CROPS$([ "$A_CROPS" = all ] || echo "_$A_CROPS")"
        SIDE="${ISIC_SIDE:-0.3}"
        [ "$SIDE" = 0.3 ] || DOMAINS="${DOMAINS}_s$SIDE"
        CC="${ISIC_CC:-0}"
        [ "$CC" = 0 ] || DOMAINS="${DOMAINS}_cc$CC"
        [ -f "$DOMAINS/manifest.json" ] || labelless weak_domains_images "$DATA/isic2016/images" "$DOMAINS" \
            --masks_dir "$DATA/isic2016/masks" --patch_scale "$SCALE" --min_mean "$MIN_MEAN" \
            --val_fraction "$VAL_FRACTION" --normals "$NORMALS" --inpaint_options "$INPAINT" --lesion_crops "$CROPS" \
            --a_crops "$A_CROPS" --side_fraction "$SIDE" --color_constancy "$CC"
        VAL="$DATA/weak_samples/ISIC/isic_1/val"
        [ "$VAL_FRACTION" = 0 ] || VAL="$DOMAINS/val"
        [ "$CC" = 0 ] || set -- --color_constancy "$CC" "$@"
        WEIGHTS=isic ;;
    *) echo "usage: $0 brats|isic [n_steps]" >&2; exit 2 ;;
esac
OUT="${CLTNET_OUT:-$RUN/$NAME}"
EVERY="${CLTNET_EVERY:-250}"  # iterations between checkpoints / validations
mkdir -p "$OUT"
python -m monai.bundle run --config_file "$B/configs/train.json" --bundle_root "$B" \
    --dataset_dir "$DOMAINS" --val_dir "$VAL" --loss_weights "$WEIGHTS" --n_steps "$N_STEPS" \
    --epoch_length "$EVERY" --save_interval "$EVERY" --val_interval "$EVERY" --keep_checkpoints 20 \
    --ckpt_dir "$OUT/models" --output_dir "$OUT/eval" "$@" 2>&1 | tee -a "$OUT/train.log"
