"""The fused upsampling layers against the two-step form: the published VQ-GAN decoder and UNet, random weights.

    python benchmarks/upsample.py --size 64x96x64 --repeats 3 --threads 1

Times one decode (batch 1) and one UNet step (batch 1) with every Upsample layer fused (nearest x2 + 3x3x3
convolution as one transposed convolution, the default at inference) and in the two-step form
(``fused = False``), alternating the two so that a change in the machine's load affects both alike; prints
medians and the largest difference between the two outputs. Plain forward passes (no slabs), float32, contiguous or (``--channels-last``) channels_last_3d.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="64x96x64", help="image size; the latent is a quarter of it per axis")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--channels-last", action="store_true", help="channels_last_3d, as mrtranslate runs on CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mrtranslate.models import VQGAN, UNet, UNetConfig, VQGANConfig

    size = [int(s) for s in args.size.split("x")]
    lat = [s // 4 for s in size]
    torch.manual_seed(0)
    vq, unet = VQGAN(VQGANConfig()).eval(), UNet(UNetConfig()).eval()
    for p in unet.out.parameters():  # zero-initialised: give the output layer weights
        torch.nn.init.normal_(p, std=0.02)
    z = torch.randn(1, 4, *lat)
    x = torch.randn(1, 12, *lat)
    if args.channels_last:
        fmt = torch.channels_last_3d
        vq, unet, z, x = vq.to(memory_format=fmt), unet.to(memory_format=fmt), z.contiguous(memory_format=fmt), x.contiguous(memory_format=fmt)
    t, y = torch.tensor([500]), torch.tensor([1])
    layers = [m for net in (vq, unet) for m in net.modules() if hasattr(m, "fused")]
    jobs = {"decode": lambda: vq.decode(z), "unet step": lambda: unet(x, t, y)}
    layout = "channels_last_3d" if args.channels_last else "contiguous"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, size {args.size}, {layout}, "
          f"{len(layers)} Upsample layers")
    with torch.inference_mode():
        for name, job in jobs.items():
            times: dict[bool, list[float]] = {True: [], False: []}
            outs: dict[bool, torch.Tensor] = {}
            for _ in range(args.repeats):
                for fused in (False, True):
                    for m in layers:
                        m.fused = fused
                    t0 = time.perf_counter()
                    outs[fused] = job()
                    times[fused].append(time.perf_counter() - t0)
            two, one = statistics.median(times[False]), statistics.median(times[True])
            diff = float((outs[True] - outs[False]).abs().max() / outs[False].abs().max())
            print(f"{name}: two-step {two:.3g} s, fused {one:.3g} s, fused / two-step {one / two:.2f}; "
                  f"max |difference| / max |two-step| {diff:.1e}; runs {times}")


if __name__ == "__main__":
    main()
