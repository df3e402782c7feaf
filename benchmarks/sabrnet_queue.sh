#!/usr/bin/env bash
# Runs the SABR-Net results table on two workers (one CPU thread each): SABR-Net, supervised-only and mean teacher
# at 20 % and 50 % labelled on HC18 and DDTI, then the ablations on HC18 20 % (no shadow imitation, acoustic shadows,
# no refinement). Each line of runs/sabrnet/queue_<worker>.out is printed by benchmarks/train_sabrnet.sh.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$ROOT/runs/sabrnet"
worker() {
    local name="$1"; shift
    for job in "$@"; do
        # shellcheck disable=SC2086
        "$ROOT/benchmarks/train_sabrnet.sh" $job >> "$ROOT/runs/sabrnet/queue_$name.out" 2>&1 \
            || echo "FAILED: $job" >> "$ROOT/runs/sabrnet/queue_$name.out"
    done
}
worker a "hc18 0.2 sabrnet" "hc18 0.2 sabrnet_norefine" "ddti 0.2 sabrnet" "ddti 0.2 mean_teacher" "hc18 0.5 sabrnet" \
    "hc18 0.5 mean_teacher" "ddti 0.5 supervised" "hc18 0.2 sabrnet_noshadow" &
worker b "hc18 0.2 supervised" "hc18 0.2 mean_teacher" "ddti 0.2 supervised" "hc18 0.5 supervised" "ddti 0.5 sabrnet" \
    "ddti 0.5 mean_teacher" "hc18 0.2 sabrnet_acoustic" &
wait
