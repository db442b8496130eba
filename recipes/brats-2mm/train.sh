#!/usr/bin/env bash
# Rebuild the brats-2mm model from the brats-samples and brats-2mm-pool subjects (see README.md).
#
#   bash recipes/brats-2mm/train.sh SAMPLES POOL WORK [DEVICE]
#
# SAMPLES, POOL: folders of subject folders (BraTS 2018 / BraTS 2023 / BraTS-toolkit names, 1 mm or 2 mm);
# every case of split.json must be in one of them. WORK: where the split, the runs and the exported model go.
# DEVICE: cuda (default) or cpu. Each stage stops at its config's steps, or earlier at MINUTES_<STAGE> minutes
# if set (e.g. on a CPU); rerunning the script resumes every stage from its last checkpoint.
set -euo pipefail
samples=$(cd "$1" && pwd)
pool=$(cd "$2" && pwd)
work=$3
device=${4:-cuda}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"

# The fixed split: symbolic links to the subject folders named in split.json, one folder per part.
python3 - "$here/split.json" "$samples" "$pool" "$work" <<'PY'
import json, os, sys
split, roots, work = json.load(open(sys.argv[1])), sys.argv[2:4], sys.argv[4]
for part, cases in split.items():
    os.makedirs(os.path.join(work, part), exist_ok=True)
    for case in cases:
        found = [os.path.join(r, case) for r in roots if os.path.isdir(os.path.join(r, case))]
        if not found:
            sys.exit(f"subject {case} of split.json ({part}) is in neither {roots[0]} nor {roots[1]}")
        link = os.path.join(work, part, case)
        if not os.path.lexists(link):
            os.symlink(found[0], link)
PY

stage() {  # stage STAGE RUN CONFIG DATA [extra args...]: train (or resume) one run of a stage
    local cmd=$1 name=$2 config=$3 data=$4; shift 4
    local limit=()
    local var="MINUTES_${name^^}"
    if [ -n "${!var:-}" ]; then limit=(--max-minutes "${!var}"); fi
    if [ -f "$work/runs/$name/run.json" ]; then
        mrtranslate train "$cmd" --run "$work/runs/$name" --resume --device "$device" "${limit[@]}"
    else
        mrtranslate train "$cmd" --data "$data" --run "$work/runs/$name" \
            --config "$here/$config" --device "$device" "${limit[@]}" "$@"
    fi
}

# The first stage (VQ-GAN and MS-SPADE) as first released, on the 11 subjects of first_stage_training.
stage autoencoder autoencoder autoencoder.json "$work/first_stage_training"
stage spade spade spade.json "$work/first_stage_training" --first-stage "$work/runs/autoencoder"
# The residual UNet on the 42 training subjects, encoded once by that first stage into a latent pack.
if [ ! -f "$work/training.safetensors" ]; then
    mrtranslate train encode --data "$work/training" --first-stage "$work/runs/spade" \
        --out "$work/training.safetensors" --device "$device"
fi
stage diffusion diffusion diffusion.json "$work/training.safetensors" --first-stage "$work/runs/spade"
mrtranslate export "$work/runs/diffusion" --out "$work/brats-2mm-v2" --name brats-2mm --overwrite
# Version 3: MS-SPADE continued on the 42 training subjects (published latent L1, no discriminator) for 160
# steps, then resumed with a new cosine schedule to step 420; the UNet fine-tuned on its outputs.
stage spade spade2 spade-continue.json "$work/training" --first-stage "$work/runs/spade"
mrtranslate train spade --run "$work/runs/spade2" --resume --steps 420 --device "$device"
stage diffusion diffusion2 diffusion-finetune.json "$work/training.safetensors" --first-stage "$work/runs/spade2" \
    --init "$work/brats-2mm-v2"
# Sampling as released, each chosen on the validation subjects: the mean of 6 samples of 4 UniPC steps
# (benchmarks/sampling_defaults.py); T1, T1ce and T2 from MS-SPADE alone, strength 0, FLAIR sampled
# (benchmarks/pair_strength.py, on the standardised outputs).
mrtranslate export "$work/runs/diffusion2" --out "$work/brats-2mm" --name brats-2mm --overwrite \
    --default-solver "${DEFAULT_SOLVER:-unipc}" --default-steps "${DEFAULT_STEPS:-4}" --default-eta "${DEFAULT_ETA:-0}" \
    --default-samples "${DEFAULT_SAMPLES:-6}" \
    --pair-strength 't1ce->t1=0' --pair-strength 't2->t1=0' --pair-strength 'flair->t1=0' \
    --pair-strength 't1->t1ce=0' --pair-strength 't2->t1ce=0' --pair-strength 'flair->t1ce=0' \
    --pair-strength 't1->t2=0' --pair-strength 't1ce->t2=0' --pair-strength 'flair->t2=0' \
    --best-source t1=t1ce --best-source t1ce=t1 --best-source t2=t1ce --best-source flair=t2
# T1ce and FLAIR outputs standardised to the histogram of the 1 mm training scans of those contrasts
# (pipeline/standard.py; the targets chosen on the validation subjects: benchmarks/output_standard.py).
mrtranslate train standard --model "$work/brats-2mm" --data "$work/first_stage_training" --to t1ce flair
# The detail refiner, for inputs at 1 mm: learnt from the exported model's own outputs on the 11 training subjects
# at 1 mm (at its default sampling), refining the T1 and T1ce outputs (the targets chosen on the validation
# subjects); written into WORK/brats-2mm when it finishes.
mrtranslate evaluate --model "$work/brats-2mm" --data "$work/first_stage_training" --source all --method aldm \
    --no-figures --out "$work/reports/refiner_data" --device "$device"
if [ -f "$work/runs/refiner/run.json" ]; then
    mrtranslate train refiner --run "$work/runs/refiner" --resume --device "$device" \
        ${MINUTES_REFINER:+--max-minutes "$MINUTES_REFINER"}
else
    mrtranslate train refiner --model "$work/brats-2mm" --report "$work/reports/refiner_data" \
        --data "$work/first_stage_training" --run "$work/runs/refiner" --config "$here/refiner.json" \
        --device "$device" ${MINUTES_REFINER:+--max-minutes "$MINUTES_REFINER"}
fi
# The error model behind --uncertainty: the exported model's own errors on training subjects that its VQ-GAN
# never saw (split.json's uncertainty_fit; version 3's MS-SPADE and UNet did), at its default sampling, kept
# for the pairs where it ranks errors better than the samples' spread on both validation sets
# (pipeline/error_model.py, training/uncertainty.py).
for part in uncertainty_fit validation validation_2mm; do
    mrtranslate evaluate --model "$work/brats-2mm" --data "$work/$part" --source all --uncertainty \
        --no-figures --out "$work/reports/$part" --device "$device"
done
mrtranslate train uncertainty --model "$work/brats-2mm" --report "$work/reports/uncertainty_fit" \
    --data "$work/uncertainty_fit" \
    --validation "validation=$work/validation=$work/reports/validation" \
    --validation "validation_2mm=$work/validation_2mm=$work/reports/validation_2mm"
