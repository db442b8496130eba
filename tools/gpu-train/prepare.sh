#!/usr/bin/env bash
# Prepare the carry folder for one remote-GPU training call (run on the development machine):
#
#   bash tools/gpu-train/prepare.sh TRAINING_DIR VALIDATION_DIR [FIRST_STAGE]
#
# TRAINING_DIR / VALIDATION_DIR: dataset folders, e.g. links to the subjects of split.json's "training" and
# "validation_2mm" (brats-samples and brats-2mm-pool together).
# Writes gpu-carry/ (git-ignored, never committed): the training subjects encoded into an xz-compressed latent
# pack, the validation scans (without labels), and the nibabel wheel the GPU image lacks. Name gpu-carry in
# the call's carry; together with the working tree it must stay under 64 MiB.
set -euo pipefail
train=$1; val=$2; first=${3:-brats-2mm}
root=$(cd "$(dirname "$0")/../.." && pwd)
carry=$root/gpu-carry
rm -rf "$carry"; mkdir -p "$carry/val" "$carry/whl"
mrtranslate train encode --data "$train" --first-stage "$first" --out "$carry/training.safetensors" --quiet
xz -T1 -6 "$carry/training.safetensors"
for d in "$val"/*/; do
    case=$(basename "$d"); mkdir -p "$carry/val/$case"
    find -L "$d" -maxdepth 1 -name '*.nii*' ! -name '*seg*' -exec cp -L {} "$carry/val/$case/" \;
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$carry/whl" nibabel
du -sh "$carry"; (cd "$root" && git ls-files -z | xargs -0 du -cb | tail -1)
