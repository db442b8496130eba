#!/usr/bin/env bash
# Rebuild the bundled phantom-demo model (v10) from scratch, stage by stage, as it was trained.
#
#   bash recipes/phantom-demo/reproduce.sh [WORK_DIR] [DEVICE]
#
# WORK_DIR (default: phantom-demo-work) receives the phantom data sets, the run folders and one model folder
# per version (models/v1 ... models/v10). DEVICE: auto (default), cpu or cuda. Step counts are the ones the
# released weights were trained for; the weights are not bit-identical (GPU kernels, thread counts), the
# recipe is. The whole chain takes roughly 10 minutes of GPU time plus about 8 hours on a 2-core CPU.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
WORK="${1:-phantom-demo-work}"
DEVICE="${2:-auto}"
mkdir -p "$WORK"
cd "$WORK"

train() { mrtranslate train "$@" --device "$DEVICE"; }
export_model() { mrtranslate export "$@" --name phantom-demo --default-steps 50 --overwrite -q; }

# data: 120 synthetic subjects for the GPU stages, the first 40 of them for the CPU fine-tunes
mrtranslate phantom data/train120 --n 120 --seed 1 --spacing 2 --tumor-fraction 0.5 --workers 2 -q
mrtranslate phantom data/train40 --n 40 --seed 1 --spacing 2 --tumor-fraction 0.5 --workers 2 -q

# v1: the three stages from scratch
train autoencoder --data data/train120 --run runs/v1/autoencoder --config "$HERE/autoencoder.json" --steps 1852
train spade --data data/train120 --run runs/v1/spade --config "$HERE/spade.json" --first-stage runs/v1/autoencoder --steps 514
train diffusion --data data/train120 --run runs/v1/diffusion --config "$HERE/diffusion.json" --first-stage runs/v1/spade --steps 1762
export_model runs/v1/diffusion --out models/v1 --default-strength 0.1

# v2: MS-SPADE fine-tuned with L1 only; the v1 UNet packed with it (a 0-step diffusion run)
train spade --data data/train40 --run runs/v2/spade --config "$HERE/spade-finetune.json" --first-stage models/v1
train diffusion --data data/train40 --run runs/v2/diffusion --config "$HERE/diffusion-repack.json" --first-stage runs/v2/spade --init models/v1
export_model runs/v2/diffusion --out models/v2 --default-strength 0.1

# v3: the UNet fine-tuned on v2's MS-SPADE latents
train diffusion --data data/train40 --run runs/v3/diffusion --config "$HERE/diffusion-finetune.json" --first-stage models/v2 --init models/v2
export_model runs/v3/diffusion --out models/v3 --default-strength 0.1

# v4: MS-SPADE fine-tuned again
train spade --data data/train40 --run runs/v4/spade --config "$HERE/spade-finetune2.json" --first-stage models/v3
train diffusion --data data/train40 --run runs/v4/diffusion --config "$HERE/diffusion-repack.json" --first-stage runs/v4/spade --init models/v3
export_model runs/v4/diffusion --out models/v4 --default-strength 0.1

# v5: the UNet fine-tuned on the timesteps it samples at (t < 200)
train diffusion --data data/train40 --run runs/v5/diffusion --config "$HERE/diffusion-lowt.json" --first-stage models/v4 --init models/v4
export_model runs/v5/diffusion --out models/v5 --default-strength 0.05

# v6: MS-SPADE, then the UNet, at batch 8 on all 120 subjects (a GPU)
train spade --data data/train120 --run runs/v6/spade --config "$HERE/spade-gpu.json" --first-stage models/v5 --steps 1090
train diffusion --data data/train120 --run runs/v6/diffusion --config "$HERE/diffusion-gpu.json" --first-stage runs/v6/spade --init models/v5 --steps 3004
export_model runs/v6/diffusion --out models/v6 --default-strength 0.05

# v7: the decoder alone fine-tuned (encoder and codebook kept, so MS-SPADE and the UNet stay valid)
train autoencoder --data data/train40 --run runs/v7/decoder --config "$HERE/decoder-finetune.json" --init models/v6 --steps 340
train spade --data data/train40 --run runs/v7/spade --config "$HERE/spade-gpu.json" --first-stage runs/v7/decoder --steps 0
train diffusion --data data/train40 --run runs/v7/diffusion --config "$HERE/diffusion-repack.json" --first-stage runs/v7/spade --init models/v6
export_model runs/v7/diffusion --out models/v7 --default-strength 0.05

# v8: the decoder again, background voxels weighing 0.1 in its L1
train autoencoder --data data/train40 --run runs/v8/decoder --config "$HERE/decoder-edge.json" --init models/v7
train diffusion --data data/train40 --run runs/v8/diffusion --config "$HERE/diffusion-repack.json" --first-stage runs/v8/decoder --init models/v7
export_model runs/v8/diffusion --out models/v8 --default-strength 0.05

# v9: MS-SPADE's per-pair source gate, trained for T1 -> T1ce alone; the mean of 4 samples by default
train spade --data data/train40 --run runs/v9/spade --config "$HERE/spade-gate-t1-t1ce.json" --first-stage models/v8
train diffusion --data data/train40 --run runs/v9/diffusion --config "$HERE/diffusion-repack.json" --first-stage runs/v9/spade --init models/v8
export_model runs/v9/diffusion --out models/v9 --default-strength 0.05 --default-samples 4

# v10 (the bundled model): v9's weights, T1 -> T1ce sampled at its own strength
export_model runs/v9/diffusion --out models/v10 --default-strength 0.05 --default-samples 4 --pair-strength 't1->t1ce=0.02'
echo "done: $WORK/models/v10"
