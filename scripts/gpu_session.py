"""One call on a lent GPU machine: the GPU inference benchmark (issue 7), then the demo model's three
training stages for first-stage variants side by side (issue 5), all within ``--total-s`` seconds.

    OUT=/tmp/out python3 scripts/gpu_session.py --total-s 560

That machine has PyTorch but not every dependency of mrtranslate's CLI, so this drives the library directly
(the training calls record the equivalent ``mrtranslate train ...`` command lines in each run, for the
model card). Wheels it lacks (nibabel, nilearn) travel in ``.whl/`` and are installed into /tmp/site by the
caller. The phantom data are made there, byte-identical to the same command here. Results land in $OUT:
``<variant>.tar.part-*`` (each exported model folder, split under the 16 MiB file limit of the transfer) and
``meta.tar.gz`` (benchmark results, logs, metrics, run records). A dry run on a CPU:
``python3 scripts/gpu_session.py --device cpu --subjects 4 --bench-sizes 16x32x16 --bench-steps 2 --total-s 300``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    """Seconds since the session's start and until its deadline (wall clock, shared by the processes)."""

    def __init__(self, start: float, deadline: float, log: Path):
        self.start, self.deadline, self.log = start, deadline, log

    def left(self) -> float:
        return self.deadline - time.time()

    def say(self, msg: str) -> None:
        line = f"[{time.time() - self.start:6.1f}s] {msg}"
        print(line, flush=True)
        with self.log.open("a") as fh:
            fh.write(line + "\n")


def add_worker_args(ap: argparse.ArgumentParser) -> None:
    """The hidden arguments with which main() starts each variant's own process."""
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)


def open_session(work_dir: str, total_s: float) -> tuple[Path, Path, Clock]:
    """$OUT, the work folder (with meta/ made) and the session's clock; says which torch and GPU run."""
    import torch

    out, work = Path(os.environ["OUT"]), Path(work_dir)
    (work / "meta").mkdir(parents=True, exist_ok=True)
    now = time.time()
    clock = Clock(now, now + total_s, work / "meta" / "session.log")
    clock.say(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}"
              f"{', ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}")
    return out, work, clock


def wait_all(procs: list[tuple[str, subprocess.Popen]], clock: Clock, margin_s: float) -> None:
    """Wait for each variant's process until ``margin_s`` before the deadline, then kill it."""
    for v, p in procs:
        try:
            rc: int | str = p.wait(timeout=max(1.0, clock.left() - margin_s))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "killed"
        clock.say(f"{v}: rc {rc}")


def keep_run_records(work: Path, variants: list[str], suffixes: tuple[str, ...] = (".json", ".csv")) -> None:
    """Copy each variant's run records (config, run.json, metrics) into meta/VARIANT-STAGE/."""
    for v in variants:
        for stage in ("autoencoder", "spade", "diffusion"):
            src = work / "runs" / v / stage
            if src.is_dir():
                dest = work / "meta" / f"{v}-{stage}"
                dest.mkdir(exist_ok=True)
                for f in src.iterdir():
                    if f.is_file() and f.suffix in suffixes:
                        shutil.copy(f, dest / f.name)


def pack(folder: Path, name: str, out: Path) -> None:
    """``folder`` as OUT/NAME.tar.part-* (under the transfer's 16 MiB file limit)."""
    tar = folder.parent / f"{name}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(folder, arcname=folder.name)
    subprocess.run(["split", "-b", "15m", str(tar), str(out / f"{name}.tar.part-")], check=False)


def run_variant(args: argparse.Namespace) -> int:
    """The three stages and the export of one variant (run in its own process)."""
    import torch

    from mrtranslate.training.export import export
    from mrtranslate.training.trainer import train

    work = Path(args.work)
    clock = Clock(args.start, args.deadline, work / "meta" / "session.log")
    v, runs, cfg = args.variant, work / "runs" / args.variant, ROOT / "configs" / "phantom-demo" / args.variant
    data = work / "data"
    runs.mkdir(parents=True, exist_ok=True)
    first = None
    ae_share, spade_share = args.shares
    for stage, share, reserve in (("autoencoder", ae_share, 40), ("spade", spade_share, 40), ("diffusion", 1.0, 35)):
        minutes = max(0.2, (clock.left() - reserve) * share / 60.0)
        run = runs / stage
        argv = ["mrtranslate", "train", stage, "--data", str(data), "--run", str(run), "--config", str(cfg / f"{stage}.json")]
        if first is not None:
            argv += ["--first-stage", str(first)]
        argv += ["--max-minutes", f"{minutes:.2f}", "--device", args.device]
        clock.say(f"{v} {stage}: {minutes:.2f} min")
        t0 = time.monotonic()
        result = train(stage, run, data, cfg / f"{stage}.json", max_minutes=minutes, device=args.device,
                       first_stage=None if first is None else str(first), progress=False, command=argv,
                       threads=args.threads)
        clock.say(f"{v} {stage}: step {result.step} ({result.status}) in {time.monotonic() - t0:.0f} s; "
                  f"{ {k: round(x, 5) for k, x in result.metrics.items()} }")
        first = run
    export(runs / "diffusion", runs / "model", name="phantom-demo", default_steps=50)
    clock.say(f"{v} exported; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0:.1f} GB")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--total-s", type=float, default=560)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--subjects", type=int, default=120)
    ap.add_argument("--bench-sizes", nargs="+", default=["144x192x144"])
    ap.add_argument("--bench-steps", type=int, default=200)
    ap.add_argument("--bench-s", type=float, default=180)
    ap.add_argument("--bench-variants", nargs="+", default=["naive", "optimised", "compiled"])
    ap.add_argument("--bench-worker-s", type=float, default=110, help="seconds before one variant's run is given up")
    ap.add_argument("--variants", nargs="+", default=["f2", "f4"])
    ap.add_argument("--work", default="/tmp/mrt")
    ap.add_argument("--threads", type=int, default=4, help="CPU threads of each variant's process")
    ap.add_argument("--shares", nargs=2, type=float, default=[0.40, 0.25], metavar=("AE", "SPADE"),
                    help="share of the time left that the autoencoder, then MS-SPADE, get (diffusion: the rest)")
    ap.add_argument("--skip-bench", action="store_true", help="no inference benchmark: all the time for training")
    add_worker_args(ap)
    args = ap.parse_args()
    if args.variant:
        return run_variant(args)

    out, work, clock = open_session(args.work, args.total_s)
    meta = work / "meta"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    phantom = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from mrtranslate.training.phantom import write_dataset; "
         f"write_dataset(sys.argv[1], n={args.subjects}, seed=1, spacing=2.0, tumor_fraction=0.5, workers=6, progress=False)",
         str(work / "data")], stdout=(meta / "phantom.log").open("w"), stderr=subprocess.STDOUT, env=env)
    clock.say("benchmark")
    rc: int | str = "skipped"
    if not args.skip_bench:
        with (meta / "bench.log").open("w") as fh:
            try:
                rc = subprocess.run(
                    [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--device", args.device, "--sizes",
                     *args.bench_sizes, "--steps", str(args.bench_steps), "--targets", "3", "--repeats", "3",
                     "--variants", *args.bench_variants, "--worker-timeout", str(args.bench_worker_s),
                     "--markdown", str(meta / "RESULTS.md")],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=args.bench_s).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
    clock.say(f"benchmark: {rc}")
    clock.say(f"phantoms: rc {phantom.wait()}, {len(list((work / 'data').glob('Phantom_*')))} subjects")

    procs = []
    for v in args.variants:
        cmd = [sys.executable, __file__, "--variant", v, "--device", args.device, "--work", str(work),
               "--threads", str(args.threads), "--shares", *map(str, args.shares),
               "--start", str(clock.start), "--deadline", str(clock.deadline - 20)]
        procs.append((v, subprocess.Popen(cmd, stdout=(meta / f"{v}.log").open("w"), stderr=subprocess.STDOUT, env=env)))
    wait_all(procs, clock, 15)
    keep_run_records(work, args.variants, (".json", ".csv", ".md"))
    for v in args.variants:
        if (work / "runs" / v / "model").is_dir():
            pack(work / "runs" / v / "model", v, out)
    clock.say("packing done")
    with tarfile.open(out / "meta.tar.gz", "w:gz") as t:
        t.add(meta, arcname="meta")
    return 0


if __name__ == "__main__":
    sys.exit(main())
