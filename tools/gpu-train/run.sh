#!/usr/bin/env bash
# One remote-GPU call: train MS-SPADE and the residual UNet from the carried latent pack, export, evaluate on
# the carried validation scans; everything lands in $OUT (the model folder, the runs' logs, the report).
#
#   bash tools/gpu-train/run.sh [DEVICE]           # DEVICE: cuda (default) or cpu (a smoke test)
#
# Env: MINUTES_SPADE (3), MINUTES_DIFFUSION (4.5): per-stage time limits; STEPS_SPADE / STEPS_DIFFUSION
# override the configs' steps; EVAL_ARGS: extra `mrtranslate evaluate` arguments; INIT_SPADE: the first
# stage whose MS-SPADE starts training (default: the bundled brats-2mm); RESUME_FROM: a folder of runs/ from an
# earlier call to continue.
set -euo pipefail
device=${1:-cuda}
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); carry=$root/gpu-carry
out=${OUT:-/tmp/gpu-train-out}; work=/tmp/gpu-train-work
mkdir -p "$out" "$work"
if ! python3 -c "import nibabel" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$carry"/whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$root:${PYTHONPATH:-} PYTHONUNBUFFERED=1
mt() { python3 -m mrtranslate "$@"; }
[ -f "$work/training.safetensors" ] || xz -dc "$carry/training.safetensors.xz" > "$work/training.safetensors"
steps() { local v="STEPS_$1"; if [ -n "${!v:-}" ]; then echo --steps "${!v}"; fi; }
if [ -n "${RESUME_FROM:-}" ]; then cp -r "$RESUME_FROM" "$work/runs"; fi
t0=$(date +%s)
if [ -f "$work/runs/spade/run.json" ]; then
    mt train spade --run "$work/runs/spade" --resume --device "$device" --max-minutes "${MINUTES_SPADE:-3}" $(steps SPADE) -q
else
    mt train spade --data "$work/training.safetensors" --run "$work/runs/spade" --config "$here/spade.json" \
        --first-stage "${INIT_SPADE:-brats-2mm}" --device "$device" --max-minutes "${MINUTES_SPADE:-3}" $(steps SPADE) -q
fi
t1=$(date +%s)
if [ -f "$work/runs/diffusion/run.json" ]; then
    mt train diffusion --run "$work/runs/diffusion" --resume --device "$device" --max-minutes "${MINUTES_DIFFUSION:-4.5}" $(steps DIFFUSION) -q
else
    mt train diffusion --data "$work/training.safetensors" --run "$work/runs/diffusion" --config "$here/diffusion.json" \
        --first-stage "$work/runs/spade" --device "$device" --max-minutes "${MINUTES_DIFFUSION:-4.5}" $(steps DIFFUSION) -q
fi
t2=$(date +%s)
mt export "$work/runs/diffusion" --out "$out/model" --name brats-2mm --overwrite -q \
    --default-solver unipc --default-steps 15 --default-eta 0 --default-samples 3
# shellcheck disable=SC2086
mt evaluate --data "$carry/val" --model "$out/model" --source all --method aldm spade --out "$out/report" \
    --no-figures --quiet --device "$device" ${EVAL_ARGS:-}
t3=$(date +%s)
mkdir -p "$out/runs"
for r in spade diffusion; do
    mkdir -p "$out/runs/$r"; cp -r "$work/runs/$r"/{config.json,run.json,metrics.csv,checkpoint} "$out/runs/$r/"
done
echo "{\"spade_s\": $((t1 - t0)), \"diffusion_s\": $((t2 - t1)), \"export_evaluate_s\": $((t3 - t2))}" > "$out/times.json"
cat "$out/times.json"; cat "$out/report/summary.md"
