"""Where the published UNet's time goes on a GPU: one batched DDIM step (3 targets, latent of 144x192x144)
under several precision / memory-layout choices, plus a kernel table of the runtime's current choice.

    OUT=/tmp/out python3 scripts/gpu_profile_unet.py [--latent 36 48 36] [--budget-s 150]

Writes $OUT/profile.json and $OUT/profile.txt. Random weights; times are medians of CUDA-event-timed steps
after warm-up steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latent", nargs=3, type=int, default=[36, 48, 36])
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=150)
    args = ap.parse_args()
    start = time.monotonic()
    out = Path(os.environ.get("OUT", "."))
    from mrtranslate.models import UNet, UNetConfig

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    base = UNet(UNetConfig()).eval()
    x = torch.randn(args.batch, 12, *args.latent)
    t = torch.full((args.batch,), 500, dtype=torch.long)
    y = torch.arange(args.batch) % 4
    flops = None
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc, torch.no_grad():
            base(x[:1], t[:1], y[:1])
        flops = fc.get_total_flops() * args.batch
    except Exception:  # noqa: BLE001
        pass
    results: dict[str, dict] = {"config": {"latent": args.latent, "batch": args.batch, "flops_per_step": flops,
                                           "device": torch.cuda.get_device_name(0) if cuda else "cpu",
                                           "torch": torch.__version__}}

    def timed(name: str, model: torch.nn.Module, inp: torch.Tensor, ctx) -> None:
        if time.monotonic() - start > args.budget_s:
            results[name] = {"skipped": "time budget"}
            return
        try:
            with torch.inference_mode():
                ref = None
                for _ in range(3):
                    with ctx():
                        ref = model(inp, t.to(dev), y.to(dev))
                times = []
                for _ in range(args.iters):
                    if cuda:
                        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        a.record()
                    t0 = time.perf_counter()
                    with ctx():
                        model(inp, t.to(dev), y.to(dev))
                    if cuda:
                        b.record()
                        torch.cuda.synchronize()
                        times.append(a.elapsed_time(b) / 1e3)
                    else:
                        times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            results[name] = {"s_per_step": med, "tflops": (flops / med / 1e12) if flops else None,
                             "out_mean_abs": float(ref.float().abs().mean())}
        except Exception as exc:  # noqa: BLE001
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(name, results[name], flush=True)

    cl = torch.channels_last_3d
    m32 = base.to(dev)
    xc = x.to(dev)
    xl = xc.contiguous(memory_format=cl)
    none = contextlib.nullcontext
    timed("fp32_contiguous", m32, xc, none)
    m32.to(memory_format=cl)
    timed("fp32_channels_last", m32, xl, none)
    if cuda:
        def ac(dtype):
            return lambda: torch.autocast("cuda", dtype=dtype)
        timed("autocast_fp16_channels_last (runtime now)", m32, xl, ac(torch.float16))
        m32.to(memory_format=torch.contiguous_format)
        timed("autocast_fp16_contiguous", m32, xc, ac(torch.float16))
        m32.to(memory_format=cl)
        timed("autocast_bf16_channels_last", m32, xl, ac(torch.bfloat16))
        # kernel table of the runtime's choice
        try:
            from torch.profiler import ProfilerActivity, profile

            with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
                for _ in range(2):
                    with torch.autocast("cuda", dtype=torch.float16):
                        m32(xl, t.to(dev), y.to(dev))
                torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
            (out / "profile.txt").write_text(table)
            print(table[:6000], flush=True)
        except Exception as exc:  # noqa: BLE001
            print("profiler failed:", exc, flush=True)
        if time.monotonic() - start < args.budget_s - 60:
            try:
                comp = torch.compile(m32)
                t0 = time.monotonic()
                timed("compile_autocast_fp16_channels_last", comp, xl, ac(torch.float16))
                results["compile_autocast_fp16_channels_last"]["compile_and_warmup_s"] = time.monotonic() - t0
            except Exception as exc:  # noqa: BLE001
                results["compile"] = {"error": str(exc)[:500]}
    results["elapsed_s"] = time.monotonic() - start
    (out / "profile.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2), flush=True)


if __name__ == "__main__":
    main()
