#!/usr/bin/env bash
# Rebuild the brats-2mm model from a folder holding the 15 sample subjects (see README.md).
#
#   bash recipes/brats-2mm/train.sh DATA WORK [DEVICE]
#
# DATA: the subjects' folders (BraTS 2018 / BraTS 2023 / BraTS-toolkit names, 1 mm or 2 mm).
# WORK: where the split, the runs and the exported model go. DEVICE: cuda (default) or cpu.
# Each stage stops at its config's steps, or earlier at MINUTES_<STAGE> minutes if set (e.g. on a CPU);
# rerunning the script resumes every stage from its last checkpoint.
set -euo pipefail
data=$(cd "$1" && pwd)
work=$2
device=${3:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work/training" "$work/validation"

# The fixed split: symbolic links to the subject folders named in split.json.
python3 - "$here/split.json" "$data" "$work" <<'PY'
import json, os, sys
split, data, work = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
for part, cases in split.items():
    for case in cases:
        link = os.path.join(work, part, case)
        if not os.path.lexists(link):
            os.symlink(os.path.join(data, case), link)
PY

stage() {  # stage NAME [extra args...]: train (or resume) one stage
    local name=$1; shift
    local limit=()
    local var="MINUTES_${name^^}"
    if [ -n "${!var:-}" ]; then limit=(--max-minutes "${!var}"); fi
    if [ -f "$work/runs/$name/run.json" ]; then
        mrtranslate train "$name" --run "$work/runs/$name" --resume --device "$device" "${limit[@]}"
    else
        mrtranslate train "$name" --data "$work/training" --run "$work/runs/$name" \
            --config "$here/$name.json" --device "$device" "${limit[@]}" "$@"
    fi
}

stage autoencoder
stage spade --first-stage "$work/runs/autoencoder"
stage diffusion --first-stage "$work/runs/spade"
mrtranslate export "$work/runs/diffusion" --out "$work/brats-2mm" --name brats-2mm --overwrite \
    --default-solver "${DEFAULT_SOLVER:-unipc}" --default-steps "${DEFAULT_STEPS:-15}" --default-eta "${DEFAULT_ETA:-0}" \
    --default-samples "${DEFAULT_SAMPLES:-3}" \
    --best-source t1=t1ce --best-source t1ce=t1 --best-source t2=t1ce --best-source flair=t2
