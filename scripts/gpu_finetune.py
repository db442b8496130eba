"""One call on a lent GPU machine: fine-tune the bundled demo model's MS-SPADE, then its diffusion UNet (in one
variant first its VQ-GAN), for several config variants side by side (one process each), all within ``--total-s``
seconds (issue 5).

    OUT=/tmp/out python3 scripts/gpu_finetune.py --total-s 540 [--variants uniform weighted]

Each variant: for ``sharper`` first ``train autoencoder --init MODEL`` (the whole VQ-GAN), then ``train spade
--first-stage MODEL`` (or that autoencoder run: either way the model's MS-SPADE continues), then ``train diffusion
--first-stage SPADE_RUN --init MODEL`` (continues its UNet on the new MS-SPADE's latents), then ``export``.
The ``gated*`` variants have no spade stage: ``train diffusion --first-stage MODEL --init MODEL`` continues the
UNet on the conditioning of the model's own MS-SPADE (with its source gate).
A stage is first run for ``--probe-s`` seconds to measure its speed on this machine, then resumed with
the step count that fills its share of the time, so the cosine learning rate ends where the time does (the runs
record both commands, as ``mrtranslate train ... --resume --steps N``). The phantoms are made there (nibabel and
nilearn travel as wheels in ``.whl/``), byte-identical to ``mrtranslate phantom DATA --n N --seed 1 --spacing 2
--tumor-fraction 0.5`` here. Results in $OUT: ``models.tar.part-*`` (the exported folders, split under the
transfer's 16 MiB file limit) and ``meta.tar.gz`` (logs, configs, metrics, run records). A dry run on a CPU:
``OUT=/tmp/o python3 scripts/gpu_finetune.py --device cpu --subjects 3 --total-s 420 --probe-s 20 --threads 1``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from gpu_session import ROOT, Clock, add_worker_args, keep_run_records, open_session, pack, wait_all

VARIANTS = {  # name: (autoencoder config or None, spade config, diffusion config) in configs/phantom-demo/f2/
    "uniform": (None, "spade-gpu.json", "diffusion-gpu.json"),
    "weighted": (None, "spade-gpu-pw.json", "diffusion-gpu-pw.json"),
    # a second round from a first round's model, at lower learning rates
    "continue": (None, "spade-gpu2.json", "diffusion-gpu2.json"),
    # the same after fine-tuning the whole VQ-GAN (v1's had 1852 steps): a sharper first stage, new latents
    "sharper": ("autoencoder-gpu.json", "spade-gpu2.json", "diffusion-gpu2.json"),
    # "continue" and "sharper" with the T1 -> T1ce targets anchored to the T1's brain median (anchor_targets)
    "anchored": (None, "spade-gpu2-anchored.json", "diffusion-gpu2-anchored.json"),
    "sharper-anchored": ("autoencoder-gpu.json", "spade-gpu2-anchored.json", "diffusion-gpu2-anchored.json"),
    # the UNet alone (no spade stage: --first-stage is the model itself), on the conditioning of a model whose
    # MS-SPADE has a source gate (v9's T1 -> T1ce): timesteps [0, 200), only [0, 50), or T1 -> T1ce drawn 3x
    "gated": (None, None, "diffusion-gpu2.json"),
    "gated-lowt": (None, None, "diffusion-gpu-gate-lowt.json"),
    "gated-pw": (None, None, "diffusion-gpu-gate-pw.json"),
}


def rate(run: Path) -> float | None:
    """Steps a second between the first and the last row of the run's metrics.csv."""
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    dt = float(b["elapsed_s"]) - float(a["elapsed_s"])
    return (int(b["step"]) - int(a["step"])) / dt if dt > 0 else None


def timed_stage(stage: str, run: Path, data: Path, config: Path, first: Path | None, init: Path | None,
                seconds: float, args: argparse.Namespace, clock: Clock) -> None:
    """Probe ``stage`` for ``args.probe_s`` seconds, then resume it with the steps that fill ``seconds``."""
    from mrtranslate.training.trainer import train

    start = time.monotonic()
    argv = ["mrtranslate", "train", stage, "--data", str(data), "--run", str(run), "--config", str(config)]
    argv += (["--first-stage", str(first)] if first else []) + (["--init", str(init)] if init else [])
    probe_min = args.probe_s / 60
    result = train(stage, run, data, config, max_minutes=probe_min, device=args.device,
                   first_stage=None if first is None else str(first),
                   init=None if init is None else str(init), progress=False,
                   command=argv + ["--max-minutes", f"{probe_min:.2f}", "--device", args.device], threads=args.threads)
    r = rate(run)
    if r is None:  # loading ate the probe: probe again, the data now cached in the run
        result = train(stage, run, None, resume=True, max_minutes=probe_min, device=args.device, progress=False,
                       threads=args.threads, command=["mrtranslate", "train", stage, "--run", str(run), "--resume",
                                                      "--max-minutes", f"{probe_min:.2f}", "--device", args.device])
        r = rate(run)
    left = seconds - (time.monotonic() - start)
    steps = result.step + max(1, int((r or 0.0) * left * 0.93))
    clock.say(f"{run.parent.name} {stage}: probe ended at step {result.step}, {r or 0:.2f} steps/s; "
              f"{left:.0f} s left -> --steps {steps}")
    minutes = max(0.05, left / 60)
    result = train(stage, run, None, resume=True, steps=steps, max_minutes=minutes, device=args.device,
                   progress=False, threads=args.threads,
                   command=["mrtranslate", "train", stage, "--run", str(run), "--resume", "--steps", str(steps),
                            "--max-minutes", f"{minutes:.2f}", "--device", args.device])
    clock.say(f"{run.parent.name} {stage}: step {result.step} ({result.status}) after "
              f"{time.monotonic() - start:.0f} s; { {k: round(x, 5) for k, x in result.metrics.items()} }")


def run_variant(args: argparse.Namespace) -> int:
    from mrtranslate.training.export import export

    work = Path(args.work)
    clock = Clock(args.start, args.deadline, work / "meta" / "session.log")
    runs, cfg = work / "runs" / args.variant, ROOT / "configs" / "phantom-demo" / "f2"
    ae_cfg, spade_cfg, diff_cfg = VARIANTS[args.variant]
    model = Path(args.model)
    first = model
    if ae_cfg:  # the whole VQ-GAN from the model's (its MS-SPADE comes along and continues in the spade stage)
        left = clock.left() - args.export_s
        timed_stage("autoencoder", runs / "autoencoder", work / "data", cfg / ae_cfg, None, model,
                    left * args.ae_share, args, clock)
        first = runs / "autoencoder"
    if spade_cfg:
        left = clock.left() - args.export_s
        timed_stage("spade", runs / "spade", work / "data", cfg / spade_cfg, first, None, left * args.spade_share,
                    args, clock)
        first = runs / "spade"
    timed_stage("diffusion", runs / "diffusion", work / "data", cfg / diff_cfg, first, model,
                clock.left() - args.export_s, args, clock)
    export(runs / "diffusion", work / "models" / args.variant, name="phantom-demo", default_steps=50,
           default_strength=0.05, default_samples=args.default_samples)
    clock.say(f"{args.variant} exported")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-s", type=float, default=540)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--subjects", type=int, default=120)
    ap.add_argument("--variants", nargs="+", default=["uniform", "weighted"], choices=list(VARIANTS))
    ap.add_argument("--model", default=str(ROOT / "mrtranslate" / "bundled" / "phantom-demo"))
    ap.add_argument("--work", default="/tmp/mrt")
    ap.add_argument("--threads", type=int, default=6, help="CPU threads of each variant's process")
    ap.add_argument("--probe-s", type=float, default=25.0)
    ap.add_argument("--ae-share", type=float, default=0.4,
                    help="the autoencoder's share of a variant's time, where the variant has that stage")
    ap.add_argument("--spade-share", type=float, default=0.42, help="MS-SPADE's share of the time after it")
    ap.add_argument("--export-s", type=float, default=45.0, help="seconds kept for the export and the packing")
    ap.add_argument("--default-samples", type=int, default=4, help="the exported models' default_samples")
    add_worker_args(ap)
    args = ap.parse_args()
    if args.variant:
        return run_variant(args)

    import torch

    from mrtranslate.training.phantom import write_dataset

    out, work, clock = open_session(args.work, args.total_s)
    meta = work / "meta"
    write_dataset(work / "data", n=args.subjects, seed=1, spacing=2.0, tumor_fraction=0.5,
                  workers=max(1, (os.cpu_count() or 2) - 2), progress=False)
    clock.say(f"phantoms: {len(list((work / 'data').glob('Phantom_*')))} subjects")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    for v in args.variants:
        cmd = [sys.executable, __file__, "--variant", v, "--device", args.device, "--work", str(work),
               "--model", args.model, "--threads", str(args.threads), "--probe-s", str(args.probe_s),
               "--ae-share", str(args.ae_share), "--spade-share", str(args.spade_share),
               "--export-s", str(args.export_s), "--default-samples", str(args.default_samples),
               "--start", str(clock.start), "--deadline", str(clock.deadline - 10)]
        procs.append((v, subprocess.Popen(cmd, stdout=(meta / f"{v}.log").open("w"), stderr=subprocess.STDOUT,
                                          env=env)))
    wait_all(procs, clock, 8)
    if torch.cuda.is_available():
        clock.say(subprocess.run(["nvidia-smi", "--query-gpu=name,memory.used", "--format=csv"],
                                 capture_output=True, text=True).stdout.strip().replace("\n", "; "))
    keep_run_records(work, args.variants)
    if (work / "models").is_dir():
        pack(work / "models", "models", out)
    clock.say("packed")
    with tarfile.open(out / "meta.tar.gz", "w:gz") as t:
        t.add(meta, arcname="meta")
    return 0


if __name__ == "__main__":
    sys.exit(main())
