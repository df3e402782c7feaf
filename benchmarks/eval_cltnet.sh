#!/usr/bin/env bash
# Evaluates a CLTNet checkpoint (default: the validation-selected best_model.pt of benchmarks/train_cltnet.sh) on the
# held-out case of the BraTS FLAIR domains and on the CLTNet BraTS sample test folder, with otsu, threshold and watershed
# post-processing.  Output: runs/cltnet/<name>/eval_<set>_<post>/ (metrics.json/.csv/.md, overlays).
#   benchmarks/eval_cltnet.sh brats [checkpoint]
#   benchmarks/eval_cltnet.sh isic [checkpoint]   # ISIC-2016 test split (51) and the CLTNet ISIC testA samples (8)
#   CLTNET_TAG=inv_tta benchmarks/eval_cltnet.sh isic_x ckpt --invert_mask true --flip_tta true --zero_corners true
#       options after the checkpoint go to every evaluation; CLTNET_TAG names the folders eval_<set>_<post>_<tag>
# CLTNET_POSTS="otsu watershed" limits the post-processing modes (default: otsu threshold watershed).
# ISIC_DOMAINS=<folder> takes the ISIC-2016 test split from that domains folder (default runs/cltnet/isic_domains; every
# folder labelless weak_domains_images builds from the shared images holds the same 51 test images).
# Table with the baselines: python benchmarks/cltnet_baselines.py summarize "cltnet=runs/cltnet/brats" \
#     "baselines=runs/cltnet/baselines_brats"
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NAME="${1:?usage: $0 brats|isic[_<run>] [checkpoint]}"
DATA="${LABELLESS_DATA:-$ROOT/../shared/data}"
RUN="${LABELLESS_RUNS:-$ROOT/runs}/cltnet"
CKPT="${2:-$RUN/$NAME/models/best_model.pt}"
shift $(( $# >= 2 ? 2 : 1 ))
TAG="${CLTNET_TAG:+_$CLTNET_TAG}"
B="$ROOT/bundles/cltnet_weakly_supervised_segmentation"
ev() {  # <dataset_dir> <test_dir> <set name> <postprocess>
    python -m monai.bundle run --config_file "['$B/configs/train.json','$B/configs/evaluate.json']" --bundle_root "$B" \
        --dataset_dir "$1" --test_dir "$2" --eval_ckpt_path "$CKPT" --postprocess "$4" \
        --output_dir "$RUN/$NAME/eval_$3_$4$TAG" "${EXTRA[@]}"
}
EXTRA=("$@")
for post in ${CLTNET_POSTS:-otsu threshold watershed}; do
    case "$NAME" in
        isic*)
            ev "${ISIC_DOMAINS:-$RUN/isic_domains}" testA isic2016_test "$post"
            ev "$DATA/weak_samples/ISIC/isic_1" testA sample_test "$post" ;;
        *)
            ev "$RUN/brats_domains" testA heldout_case "$post"
            ev "$DATA/weak_samples/BraTS/brats_1" test sample_test "$post" ;;
    esac
done
