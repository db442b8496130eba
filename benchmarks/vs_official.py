"""mrtranslate against the authors' own ALDM code: same weights, input, noise and steps, in one invocation.

    python benchmarks/vs_official.py --official-src PATH/TO/ALDM --sizes 64x96x64 --steps 4 --repeats 3

``--official-src`` is a checkout of the authors' repository (github.com/jongdory/ALDM); its ``LDM/`` folder
is put on ``sys.path`` and its modules are imported from there at run time: the 3D ``Encoder`` and
``Decoder`` (``ldm.modules.diffusionmodules.model``), ``VectorQuantizer2``, ``SPADEGenerator``, the
``UNetModel`` (``openaimodel``) and the ``DDIMSampler``. Their Lightning wrappers (``VQModel``,
``LatentDiffusion``) need pytorch-lightning and a data module, so the few lines of glue they add for
sampling are repeated here: encode = ``quantize(quant_conv(encoder(x)))``, conditioning =
``cat([z_src, spade(z_src, y)])`` with the label ``y``, ``apply_model`` = ``unet(cat([x_t, cond]), t, y=y)``,
decode = ``decoder(post_quant_conv(z))``. The authors' ``DDIMSampler`` moves its buffers to CUDA
unconditionally; on CPU its ``register_buffer`` is overridden to leave them where they are.

The authors' code translates one target at a time (encode, DDIM, decode for each), float32, contiguous
memory. mrtranslate runs its own runtime (``Runtime.create``): encode once, every target in one batched
sampling pass, slab-wise VQ-GAN. Both run the published architecture (VQ-GAN ch 64, UNet 128 channels),
with the authors' own random initialisation (seed 0), converted for mrtranslate by
``mrtranslate.convert.convert_checkpoints``; DDIM with eta 0 from the same starting noise (seed 1000 + target
class), so the outputs of the two can be compared. Each implementation runs in its own process (peak RSS is
per process), ``--repeats`` times in a row; medians are reported: the WARM figure, after the first call of
every layer shape has been paid in the same process.

``--cold N`` (default 3) also starts N fresh processes per implementation that translate once: the COLD figure,
as a user's single run meets it. Its translation time includes the first call of every layer shape (and
whatever a library sets up on first use); its process time adds the interpreter, the imports and loading the
weights. Both are reported beside the warm median, named as such.

``--solver``/``--solver-steps`` add a row for mrtranslate with a multistep solver at its own step count.
``--extrapolate-steps N`` adds, for each size, the authors' time at N DDIM steps extrapolated from the
measured run: wall + (N - steps) x targets x their measured UNet time per step.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inference import compare_outputs, count_flops, machine  # noqa: E402

VQ_DDCONFIG = dict(double_z=False, z_channels=4, resolution=192, in_channels=1, out_ch=1, ch=64, num_groups=32,
                   ch_mult=[1, 1, 2], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
UNET_CONFIG = dict(num_classes=4, image_size=32, in_channels=12, out_channels=4, model_channels=128,
                   attention_resolutions=[4, 2], num_res_blocks=1, channel_mult=[1, 1, 2], num_head_channels=32,
                   dims=3, transformer_depth=1, use_spatial_transformer=False)
LINEAR_START, LINEAR_END, T = 0.0015, 0.0195, 1000


def _import_official(src: Path):
    ldm_dir = src / "LDM"
    if not (ldm_dir / "ldm" / "modules" / "diffusionmodules" / "openaimodel.py").is_file():
        raise SystemExit(f"{src} is not a checkout of the authors' ALDM repository (no LDM/ldm/modules/...)")
    sys.path.insert(0, str(ldm_dir))
    from ldm.models.diffusion.ddim import DDIMSampler
    from ldm.models.normalization import SPADEGenerator
    from ldm.modules.diffusionmodules.model import Decoder, Encoder
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.diffusionmodules.util import make_beta_schedule
    from ldm.modules.vqvae.quantize import VectorQuantizer2

    return dict(DDIMSampler=DDIMSampler, SPADEGenerator=SPADEGenerator, Decoder=Decoder, Encoder=Encoder,
                UNetModel=UNetModel, make_beta_schedule=make_beta_schedule, VectorQuantizer2=VectorQuantizer2)


class OfficialALDM(torch.nn.Module):
    """The authors' modules, wired as their ``VQModel`` and ``LatentDiffusion`` (hybrid conditioning) wire them."""

    def __init__(self, mods: dict):
        super().__init__()
        self.encoder = mods["Encoder"](**VQ_DDCONFIG)
        self.decoder = mods["Decoder"](**VQ_DDCONFIG)
        self.quantize = mods["VectorQuantizer2"](8192, 4, beta=0.25)
        self.quant_conv = torch.nn.Conv3d(4, 4, 1)
        self.post_quant_conv = torch.nn.Conv3d(4, 4, 1)
        self.spade = mods["SPADEGenerator"](4, 4)
        self.unet = mods["UNetModel"](**UNET_CONFIG)
        betas = mods["make_beta_schedule"]("linear", T, linear_start=LINEAR_START, linear_end=LINEAR_END)
        acp = np.cumprod(1.0 - betas, axis=0)
        f32 = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731  (as DDPM.register_schedule)
        self.register_buffer("betas", f32(betas))
        self.register_buffer("alphas_cumprod", f32(acp))
        self.register_buffer("alphas_cumprod_prev", f32(np.append(1.0, acp[:-1])))
        self.num_timesteps = T
        self.parameterization = "eps"

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def vq_state(self) -> dict:
        names = ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv", "spade")
        return {f"{n}.{k}": v for n in names for k, v in getattr(self, n).state_dict().items()}

    def ldm_state(self) -> dict:
        s = {f"model.diffusion_model.{k}": v for k, v in self.unet.state_dict().items()}
        s.update(betas=self.betas, alphas_cumprod=self.alphas_cumprod, alphas_cumprod_prev=self.alphas_cumprod_prev)
        return s

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.quant_conv(self.encoder(x)))[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        return self.unet(torch.cat([x, cond["c_concat"]], dim=1), t, y=cond["c_crossattn"])


def make_weights(src: Path, folder: Path) -> tuple[Path, Path]:
    """The authors' modules with their own seeded initialisation, saved as their checkpoints would be."""
    torch.manual_seed(0)
    model = OfficialALDM(_import_official(src))
    vq, ldm = folder / "vqgan_stage2.ckpt", folder / "ldm.ckpt"
    torch.save({"state_dict": model.vq_state()}, vq)
    torch.save({"state_dict": model.ldm_state()}, ldm)
    return vq, ldm


def _noise(target: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + target))


def worker(impl: str, src: Path, weights: tuple[Path, Path], size: tuple[int, int, int], n_targets: int,
           steps: int, repeats: int, solver: str, save: Path | None) -> list[dict]:
    torch.manual_seed(0)
    x = torch.rand(1, 1, *size, generator=torch.Generator().manual_seed(7)) * 2 - 1
    targets = list(range(1, 1 + n_targets))
    lat_shape = (1, 4, *(s // 4 for s in size))
    timers = {"unet": 0.0, "decode": 0.0, "encode": 0.0}
    calls = {"unet": 0}

    def timed(name: str, fn):
        def wrapped(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            timers[name] += time.perf_counter() - t0
            if name in calls:
                calls[name] += 1
            return out
        return wrapped

    if impl == "authors":
        mods = _import_official(src)
        sampler_cls = mods["DDIMSampler"]

        class Sampler(sampler_cls):  # the authors' sampler, without its hard-coded move to CUDA
            def register_buffer(self, name, attr):
                setattr(self, name, attr)

        model = OfficialALDM(mods)
        vq = torch.load(weights[0], map_location="cpu")["state_dict"]
        for n in ("encoder", "decoder", "quantize", "quant_conv", "post_quant_conv", "spade"):
            getattr(model, n).load_state_dict({k[len(n) + 1:]: v for k, v in vq.items() if k.startswith(n + ".")})
        unet = torch.load(weights[1], map_location="cpu")["state_dict"]
        model.unet.load_state_dict({k[len("model.diffusion_model."):]: v for k, v in unet.items()
                                    if k.startswith("model.diffusion_model.")})
        model.eval()
        model.unet.forward = timed("unet", model.unet.forward)
        encode, decode = timed("encode", model.encode), timed("decode", model.decode)

        def run() -> list[torch.Tensor]:
            outs = []
            for t in targets:  # one translation after another, as the authors' test loop does
                y = torch.tensor([t])
                z = encode(x)
                cond = {"c_concat": torch.cat([z, model.spade(z, y)], dim=1), "c_crossattn": y}
                lat, _ = Sampler(model).sample(steps, 1, tuple(lat_shape[1:]), cond, verbose=False, eta=0.0,
                                               x_T=_noise(t, lat_shape))
                outs.append(decode(lat))
            return outs
    else:
        from mrtranslate.convert import convert_checkpoints
        from mrtranslate.pipeline import Runtime

        pipe = convert_checkpoints(vqgan=weights[0], ldm=weights[1], weights="raw")
        pipe.configure(Runtime.create(torch.device("cpu")))
        pipe.unet.forward = timed("unet", pipe.unet.forward)
        encode, decode = timed("encode", pipe.encode), timed("decode", pipe.decode)

        def run() -> list[torch.Tensor]:
            z = encode(x)
            lat = pipe.sample(z, targets, steps=steps, eta=0.0, generator=[torch.Generator().manual_seed(1000 + t)
                                                                           for t in targets],
                              progress=False, solver=solver)
            del z
            return [decode(lat[i:i + 1]) for i in range(len(targets))]

    results = []
    with torch.inference_mode():
        for rep in range(repeats):
            for k in timers:
                timers[k] = 0.0
            calls["unet"] = 0
            t0 = time.perf_counter()
            outs = run()
            wall = time.perf_counter() - t0
            if save is not None and rep == 0:
                np.save(save, torch.cat(outs).float().numpy())
            del outs
            results.append({
                "impl": impl, "size": list(size), "targets": n_targets, "steps": steps, "solver": solver,
                "wall_s": wall, "encode_s": timers["encode"], "decode_s_per_target": timers["decode"] / n_targets,
                "unet_calls": calls["unet"],
                "unet_s_per_call": timers["unet"] / max(calls["unet"], 1),
                # the authors' code calls the UNet once per step and target; mrtranslate's calls take chunks of
                # the batch of every target (its memory plan), so its total is shared out over steps and targets
                "unet_s_per_step_per_target": (timers["unet"] / max(calls["unet"], 1) if impl == "authors"
                                               else timers["unet"] / (steps * n_targets)),
                "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            })
    return results


def _worker_runs(args, impl: str, size: str, steps: int, solver: str, weights, save: Path | None,
                 repeats: int) -> tuple[list[dict], float] | None:
    """One worker process translating ``repeats`` times: its runs and the process's own wall time."""
    cmd = [sys.executable, __file__, "--official-src", str(args.official_src), "--worker", impl, size, str(steps),
           solver, str(weights[0]), str(weights[1]), "--targets", str(args.targets), "--repeats",
           str(repeats)] + (["--save", str(save)] if save is not None else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"{size} {impl} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}", flush=True)
        return None
    return [json.loads(ln[7:]) for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")], process_s


def _cold_run(args, impl: str, size: str, steps: int, solver: str, weights) -> dict | None:
    """One translation in a fresh process: that run, with the process's wall time as ``process_s``."""
    done = _worker_runs(args, impl, size, steps, solver, weights, None, 1)
    if done is None:
        return None
    (run,), process_s = done
    print(f"{size} {impl} {solver} {steps} steps, cold: {run['wall_s']:.2f} s, process {process_s:.2f} s", flush=True)
    return {**run, "process_s": process_s}


def _warm_median(args, impl: str, size: str, steps: int, solver: str, weights, save: Path | None) -> dict | None:
    """``--repeats`` translations in one process: the median of each measure (the WARM figure)."""
    done = _worker_runs(args, impl, size, steps, solver, weights, save, args.repeats)
    if done is None:
        return None
    runs, _ = done
    for i, r in enumerate(runs):
        print(f"{size} {impl} {solver} {steps} steps, run {i + 1}: {r['wall_s']:.2f} s, "
              f"peak {r['peak_bytes'] / 2**30:.2f} GB", flush=True)
    med = {k: statistics.median(r[k] for r in runs) if isinstance(runs[0][k], (int, float)) else runs[0][k]
           for k in runs[0]}
    med["wall_s_all"] = [r["wall_s"] for r in runs]
    med["repeats"] = len(runs)
    return med


def _cold_rows(size: str, rows, colds: dict) -> tuple[list[str], list[dict]]:
    """The cold table's rows of one size, and their records."""
    out: list[str] = []
    records: list[dict] = []
    base = colds.get(("authors", "ddim"))
    base_med = statistics.median(r["wall_s"] for r in base) if base else None
    for impl, steps, solver in rows:
        runs = colds.get((impl, solver))
        if not runs:
            continue
        med = statistics.median(r["wall_s"] for r in runs)
        proc = statistics.median(r["process_s"] for r in runs)
        ratio = f"**{med / base_med:.2f}**" if base_med and impl != "authors" else ""
        each = ", ".join(f"{r['wall_s']:.1f}" for r in runs)
        out.append(f"| {size} | {impl} | {solver} {steps} | {each} | {med:.1f} | {proc:.1f} | {ratio} |")
        records.append({"impl": impl, "size": size, "solver": solver, "steps": steps, "kind": "cold",
                           "wall_s_all": [r["wall_s"] for r in runs], "wall_s": med,
                           "process_s_all": [r["process_s"] for r in runs], "process_s": proc,
                           "peak_bytes": max(r["peak_bytes"] for r in runs)})
    return out, records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-src", type=Path, required=True, help="a checkout of github.com/jongdory/ALDM")
    ap.add_argument("--sizes", nargs="+", default=["64x96x64"])
    ap.add_argument("--steps", type=int, default=4, help="DDIM steps of both implementations")
    ap.add_argument("--targets", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="translations in one process (warm: their median)")
    ap.add_argument("--cold", type=int, default=3, help="fresh processes per implementation that translate once")
    ap.add_argument("--solver", default=None, choices=["dpm++2m", "unipc"], help="add a row: mrtranslate with it")
    ap.add_argument("--solver-steps", type=int, default=None)
    ap.add_argument("--extrapolate-steps", type=int, default=None, help="the authors' time at N steps, extrapolated")
    ap.add_argument("--markdown", type=Path, default=HERE / "VS_OFFICIAL.md")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, size, steps, solver, vq, ldm = args.worker
        for r in worker(impl, args.official_src, (Path(vq), Path(ldm)), tuple(int(s) for s in size.split("x")),
                        args.targets, int(steps), args.repeats, solver, args.save):
            print("RESULT " + json.dumps(r), flush=True)
        return

    tmp_dir = tempfile.TemporaryDirectory(prefix="mrtranslate-vs-official-")
    tmp = Path(tmp_dir.name)
    weights = make_weights(args.official_src, tmp)
    date = _dt.date.today().isoformat()
    argv = [("ALDM" if a == str(args.official_src) else a) for a in sys.argv[1:]]  # the checkout's own path aside
    header = (f"{machine()}, {args.targets} targets, float32, median of {args.repeats}, {date}")
    lines = [f"## {header}", "", f"`python benchmarks/vs_official.py {' '.join(argv)}`", "",
             "| size | code | sampler | wall s | encode s | UNet s/step/target | decode s/target | peak GB | "
             "wall / authors | peak / authors |", "| --- | --- | --- | --: | --: | --: | --: | --: | --: | --: |"]
    lines[0] += ", warm" if args.cold else ""
    notes, record, agreement, cold_lines = [], [], {}, []
    for size in args.sizes:
        flops = count_flops(tuple(int(s) for s in size.split("x")))
        rows = [("authors", args.steps, "ddim"), ("mrtranslate", args.steps, "ddim")]
        if args.solver:
            rows.append(("mrtranslate", args.solver_steps or args.steps, args.solver))
        meds, colds = {}, {}
        for impl, steps, solver in rows:
            save = tmp / f"{size}-{impl}-{solver}.npy"
            meds[(impl, solver)] = (_warm_median(args, impl, size, steps, solver, weights, save), steps, save)
        for _ in range(args.cold):  # alternate the implementations, so that a drift of the machine hits both
            for impl, steps, solver in rows:
                r = _cold_run(args, impl, size, steps, solver, weights)
                if r is not None:
                    colds.setdefault((impl, solver), []).append(r)
        base = meds[("authors", "ddim")][0]
        for (impl, solver), (m, steps, _) in meds.items():
            if m is None:
                continue
            ratio = (f"**{m['wall_s'] / base['wall_s']:.2f}** | **{m['peak_bytes'] / base['peak_bytes']:.2f}**"
                     if base and impl != "authors" else " | ")
            lines.append(f"| {size} | {impl} | {solver} {steps} | {m['wall_s']:.1f} | {m['encode_s']:.1f} | "
                         f"{m['unet_s_per_step_per_target']:.3g} | {m['decode_s_per_target']:.2f} | "
                         f"{m['peak_bytes'] / 2**30:.2f} | {ratio} |")
            record.append({**m, "size": size, "kind": "warm"})
        if colds:
            cold_rows, cold_records = _cold_rows(size, rows, colds)
            cold_lines.append(cold_rows)
            record.extend(cold_records)
        a, b = meds[("authors", "ddim")][2], meds[("mrtranslate", "ddim")][2]
        if a.exists() and b.exists():
            agr = agreement[size] = compare_outputs(a, b)
            notes.append(f"{size}: mrtranslate's outputs against the authors' (same weights and noise, DDIM "
                         f"{args.steps} steps): relative L2 {agr['rel_l2']:.2e}, max |difference| / max |authors'| "
                         f"{agr['max_abs_over_range']:.2e}.")
        notes.append(f"{size}: {flops['unet_step_gflop']:.0f} GFLOP per UNet step (batch 1), "
                     f"{flops['decode_gflop']:.0f} per decode, {flops['encode_gflop']:.0f} per encode.")
        if args.extrapolate_steps and base:
            n = args.extrapolate_steps
            est = base["wall_s"] + (n - args.steps) * args.targets * base["unet_s_per_step_per_target"]
            notes.append(f"{size}: the authors' code at {n} DDIM steps, extrapolated from this run (wall + "
                         f"({n} - {args.steps}) x {args.targets} x {base['unet_s_per_step_per_target']:.2f} s): "
                         f"{est:.0f} s.")
            for (impl, solver), (m, steps, _) in meds.items():
                if impl == "mrtranslate" and m:
                    notes.append(f"{size}: mrtranslate, {solver} {steps} steps, measured {m['wall_s']:.0f} s = "
                                 f"{m['wall_s'] / est:.3f} of that.")
    tmp_dir.cleanup()
    if cold_lines:
        lines += ["", f"Cold: {args.cold} fresh process(es) per implementation, each translating once; the "
                  "translation includes the first call of every layer shape, the process adds the interpreter, "
                  "imports and weight loading.", "",
                  "| size | code | sampler | cold translation s, each run | median | process s, median | "
                  "cold / authors |", "| --- | --- | --- | --- | --: | --: | --: |"]
        lines += [row for block in cold_lines for row in block]
    md = "\n".join(lines + [""] + notes) + "\n"
    print(md)
    path = args.markdown
    existing = path.read_text() if path.exists() else (
        "# mrtranslate against the authors' code\n\nMade by `benchmarks/vs_official.py` (machine-readable: "
        "`VS_OFFICIAL.json`).\n")
    path.write_text(existing.rstrip("\n") + "\n\n" + md)
    jpath = path.with_suffix(".json")
    prev = json.loads(jpath.read_text()) if jpath.exists() else []
    prev.append({"machine": machine(), "date": date, "argv": argv, "results": record, "agreement": agreement,
                 "notes": notes})
    jpath.write_text(json.dumps(prev, indent=2) + "\n")


if __name__ == "__main__":
    main()
