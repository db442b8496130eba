"""Inference benchmark: the optimised runtime against the authors' structure, each variant in its own process.

    python benchmarks/inference.py --sizes 96x128x96 144x192x144 --targets 3 --steps 10 --repeats 3

Published architecture (VQ-GAN ch 64, UNet 128 channels) with random weights: no trained weights needed.

* naive: float32, contiguous memory, one target at a time (encode, sample, decode for each), untiled
  VQ-GAN, nearest x2 upsampling then convolution in two steps: the structure of the authors' sampler.
* optimised: the runtime mrtranslate picks (CPU: float32 + channels_last_3d; CUDA: fp16 autocast +
  channels_last_3d + SDPA), encode once, every target in one batched sampling pass, slab-wise decode,
  upsampling + convolution as one transposed convolution at the low resolution (exact).
* compiled (opt-in, not run by default): optimised plus ``torch.compile`` of the UNet
  (``Runtime.create(compile=True)``); the compilation happens in the warm-up run, so pair it with ``--warmup``.

``--solver`` (ddim, dpm++2m, unipc) chooses the sampler of every variant (default: ddim, as published).

Reports medians over ``--repeats`` runs of wall time, UNet time per step, decode time per target and
peak memory (RSS on CPU, max_memory_allocated on CUDA), plus FLOPs of one UNet step (batch 1) and one
decode (counted on the meta device) and the GFLOP/s achieved. Writes JSON and a Markdown table
(``benchmarks/RESULTS.md`` by default, one section per machine and date).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


VARIANTS = ("naive", "optimised", "compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(size: tuple[int, int, int]) -> dict[str, float]:
    """FLOPs of one UNet step (batch 1) and one decode at ``size``, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    from mrtranslate.models import VQGAN, UNet, UNetConfig, VQGANConfig

    lat = [s // 4 for s in size]
    with torch.device("meta"):
        unet, vq = UNet(UNetConfig()), VQGAN(VQGANConfig())
        t = torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as fc:
            unet(torch.empty(1, 12, *lat), t, t)
        unet_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vq.decode(torch.empty(1, 4, *lat))
        dec_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vq.encode_continuous(torch.empty(1, 1, *size))
        enc_flops = fc.get_total_flops()
    return {"unet_step_gflop": unet_flops / 1e9, "decode_gflop": dec_flops / 1e9, "encode_gflop": enc_flops / 1e9}


def worker(
    variant: str, size: tuple[int, int, int], n_targets: int, steps: int, device_name: str,
    warmup: bool = False, save: Path | None = None, repeats: int = 1, solver: str = "ddim",
) -> list[dict]:
    """``repeats`` measured runs in this process (after an untimed 2-step run at the same size when ``warmup``).

    Every target draws its noise from its own generator (seed 1000 + target), so that both variants sample
    the same noise and their outputs can be compared; ``save`` writes them (float32 .npy) for that.
    """
    from mrtranslate.pipeline import ALDMPipeline
    from mrtranslate.pipeline import Runtime

    torch.manual_seed(0)
    device = torch.device(device_name)
    pipe = ALDMPipeline.from_configs()
    if variant in ("optimised", "compiled"):
        pipe.configure(Runtime.create(device, compile=variant == "compiled"))
    else:
        pipe.configure(Runtime(device=device, dtype=torch.float32, channels_last=False, streaming=False))
        for m in pipe.modules():
            for layer in m.modules():
                if hasattr(layer, "fused"):  # the upsampling layers: the authors' two-step form
                    layer.fused = False
    x = torch.rand(1, 1, *size) * 2 - 1
    targets = list(range(1, 1 + n_targets))
    unet_time = [0.0]
    unet = pipe.unet
    orig_forward = unet.forward

    def timed_forward(*a, **k):
        _sync(device)
        t0 = time.perf_counter()
        out = orig_forward(*a, **k)
        _sync(device)
        unet_time[0] += time.perf_counter() - t0
        return out

    unet.forward = timed_forward  # type: ignore[method-assign]

    def gens(ts: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(1000 + t) for t in ts]

    def run(n_steps: int) -> tuple[float, list[torch.Tensor]]:
        decode_time, outputs = 0.0, []

        def timed_decode(lat: torch.Tensor) -> None:
            nonlocal decode_time
            _sync(device)
            t0 = time.perf_counter()
            outputs.append(pipe.decode(lat).cpu())
            _sync(device)
            decode_time += time.perf_counter() - t0

        if variant != "naive":
            z = pipe.encode(x)
            lat = pipe.sample(z, targets, steps=n_steps, eta=1.0, generator=gens(targets), progress=False,
                              solver=solver)
            del z
            for i in range(len(targets)):
                timed_decode(lat[i : i + 1])
        else:
            for t in targets:
                z = pipe.encode(x)
                timed_decode(pipe.sample(z, [t], steps=n_steps, eta=1.0, generator=gens([t]), progress=False,
                                         solver=solver))
        return decode_time, outputs

    cold = None
    n_steps = len(pipe.scheduler.timesteps(steps)) if solver == "ddim" else steps
    unet_calls = n_steps * (n_targets if variant == "naive" else 1)
    results = []
    with torch.inference_mode():
        if warmup:
            _sync(device)
            t0 = time.perf_counter()
            run(2)
            _sync(device)
            cold = time.perf_counter() - t0
        for rep in range(repeats):
            unet_time[0] = 0.0
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t_start = time.perf_counter()
            decode_time, outputs = run(steps)
            _sync(device)
            wall = time.perf_counter() - t_start
            if save is not None and rep == 0:
                import numpy as np

                np.save(save, torch.cat(outputs).float().numpy())
            del outputs
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated()
                peak_kind = "max_memory_allocated"
            else:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                peak_kind = "peak RSS of the process"
            results.append({
                "variant": variant,
                "size": list(size),
                "targets": n_targets,
                "steps": steps,
                "solver": solver,
                "wall_s": wall,
                "unet_s_per_step": unet_time[0] / unet_calls,
                "unet_s_per_step_per_target": unet_time[0] / (n_steps * n_targets),
                "decode_s_per_target": decode_time / n_targets,
                "peak_bytes": peak,
                "peak_kind": peak_kind,
                "warmup_2_steps_s": cold,
                "precision": str(pipe.runtime.dtype).replace("torch.", ""),
            })
    return results


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def _fmt_size(s: list[int]) -> str:
    return "x".join(map(str, s))


def markdown(results: list[dict], flops: dict[str, dict], header: str, agreement: dict[str, dict] | None = None) -> str:
    lines = [f"## {header}", "",
             "| size | variant | wall s | UNet s/step (per target) | decode s/target | peak GB | UNet GFLOP/s | decode GFLOP/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_size: dict[str, dict[str, dict]] = {}
    for r in results:
        by_size.setdefault(_fmt_size(r["size"]), {})[r["variant"]] = r
    for size, variants in by_size.items():
        f = flops[size]
        for name in VARIANTS:
            r = variants.get(name)
            if r is None:
                continue
            lines.append(
                f"| {size} | {name} | {r['wall_s']:.3g} | {r['unet_s_per_step_per_target']:.3g} | "
                f"{r['decode_s_per_target']:.3g} | {r['peak_bytes'] / 2**30:.2f} | "
                f"{f['unet_step_gflop'] / r['unet_s_per_step_per_target']:.0f} | {f['decode_gflop'] / r['decode_s_per_target']:.0f} |"
            )
        for name in VARIANTS[1:]:
            if "naive" in variants and name in variants:
                n, o = variants["naive"], variants[name]
                lines.append(f"| {size} | **{name} / naive** | **{o['wall_s'] / n['wall_s']:.2f}** | | | "
                             f"**{o['peak_bytes'] / n['peak_bytes']:.2f}** | | |")
    lines.append("")
    for key, a in (agreement or {}).items():
        size, name = key.split(" ")
        lines.append(f"Outputs at {size}, {name} vs naive (same weights and noise): relative L2 {a['rel_l2']:.2e}, "
                     f"max |difference| / max |naive| {a['max_abs_over_range']:.2e}.")
    lines.append("")
    lines.append("FLOPs per UNet step (batch 1) / decode / encode: " + "; ".join(
        f"{s}: {f['unet_step_gflop']:.0f} / {f['decode_gflop']:.0f} / {f['encode_gflop']:.0f} GFLOP" for s, f in flops.items()))
    return "\n".join(lines) + "\n"


def compare_outputs(a_path: Path, b_path: Path) -> dict[str, float]:
    """How far the optimised outputs are from the naive ones (same weights, same noise)."""
    import numpy as np

    a, b = np.load(a_path).astype(np.float64), np.load(b_path).astype(np.float64)
    diff = b - a
    return {
        "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(a), 1e-30)),
        "max_abs_over_range": float(np.abs(diff).max() / max(np.abs(a).max(), 1e-30)),
    }


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["96x128x96", "144x192x144"])
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--solver", default="ddim", choices=["ddim", "dpm++2m", "unipc"], help="sampler of every variant")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="+", default=["naive", "optimised"], choices=VARIANTS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                    help="an untimed 2-step run in each process first (default: on CUDA only)")
    ap.add_argument("--worker-timeout", type=float, default=None, help="seconds before a run is given up")
    ap.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--json", type=Path, default=None, help="default: next to the Markdown file")
    ap.add_argument("--worker", nargs=4, metavar=("VARIANT", "SIZE", "TARGETS", "STEPS"), help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    warmup = args.device.startswith("cuda") if args.warmup is None else args.warmup
    if args.worker:
        v, size, nt, st = args.worker
        for res in worker(v, tuple(int(s) for s in size.split("x")), int(nt), int(st), args.device, warmup, args.save,
                          args.repeats, args.solver):
            print("RESULT " + json.dumps(res), flush=True)
        return
    results, flops, agreement = [], {}, {}
    tmp_dir = tempfile.TemporaryDirectory(prefix="mrtranslate-bench-")  # the outputs to compare
    tmp = Path(tmp_dir.name)
    for size in args.sizes:
        flops[size] = count_flops(tuple(int(s) for s in size.split("x")))
        for variant in args.variants:
            save = tmp / f"{size}-{variant}.npy"
            cmd = [sys.executable, __file__, "--device", args.device, "--worker", variant, size, str(args.targets),
                   str(args.steps), "--repeats", str(args.repeats), "--save", str(save), "--solver", args.solver,
                   "--warmup" if warmup else "--no-warmup"]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout)
                stdout, failed = proc.stdout, proc.returncode != 0
                if failed:
                    print(f"{size} {variant} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
            except subprocess.TimeoutExpired as exc:
                out = exc.stdout or ""
                stdout = out.decode() if isinstance(out, bytes) else out
                print(f"{size} {variant}: gave up after {args.worker_timeout} s", flush=True)
            runs = [json.loads(ln[7:]) for ln in stdout.splitlines() if ln.startswith("RESULT ")]
            for rep, r in enumerate(runs):
                print(f"{size} {variant} run {rep + 1}: {r['wall_s']:.2f} s, peak {r['peak_bytes'] / 2**30:.2f} GB", flush=True)
            if not runs:
                continue
            med = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k]
                   for k in runs[0]}
            med["repeats"] = len(runs)
            med["wall_s_all"] = [r["wall_s"] for r in runs]
            results.append(med)
        a = tmp / f"{size}-naive.npy"
        for name in VARIANTS[1:]:
            b = tmp / f"{size}-{name}.npy"
            if a.exists() and b.exists():
                agreement[f"{size} {name}"] = compare_outputs(a, b)
                print(f"{size} {name} vs naive outputs: {agreement[f'{size} {name}']}", flush=True)
    tmp_dir.cleanup()
    date = _dt.date.today().isoformat()
    from mrtranslate.schedulers import SOLVER_LABELS

    header = (f"{machine()} ({args.device}), {args.targets} targets, {args.steps} {SOLVER_LABELS[args.solver]} steps, "
              f"median of {args.repeats}"
              f"{', after a 2-step warm-up run in each process' if warmup else ''}, {date}")
    md = markdown(results, flops, header, agreement)
    print(md)
    path = args.markdown
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else "# Inference benchmark results\n\nMade by `benchmarks/inference.py`.\n\n"
    path.write_text(existing.rstrip("\n") + "\n\n" + md)
    json_path = args.json or path.with_suffix(".json")
    prev = json.loads(json_path.read_text()) if json_path.exists() else []
    prev.append({"machine": machine(), "device": args.device, "date": date, "results": results, "flops": flops,
                 "agreement": agreement, "argv": sys.argv[1:]})
    json_path.write_text(json.dumps(prev, indent=2) + "\n")


if __name__ == "__main__":
    main()
