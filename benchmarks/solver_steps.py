"""Quality per step count of each sampler, against DDIM with 200 steps, on real validation subjects.

    python benchmarks/solver_steps.py --data DATA --subjects A B C D --model brats-2mm \\
        --solvers ddim dpm++2m unipc --steps 5 10 15 20 25

For every subject and every source contrast, the other three contrasts are translated with each sampler at
each step count, one sample each, from the same starting noise (seed), at the model's default strength, and
measured as ``mrtranslate evaluate`` measures: brain PSNR and 3D SSIM against the real target at the input's
own grid. DDIM with ``--reference-steps`` (200, the published sampler's step count; eta 0, so that every
sampler integrates the same ODE from the same noise) is the reference. The table gives the mean over the
pairs and its distance to the reference; a sampler "holds" at the smallest step count whose mean is within
``--tolerance-psnr`` dB and ``--tolerance-ssim`` of the reference (and stays there at every larger count
measured).

Writes ``--out`` (JSON, every pair) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inference import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a BraTS-style folder of subjects")
    ap.add_argument("--subjects", nargs="+", required=True, help="the validation subjects (folder names)")
    ap.add_argument("--model", default="brats-2mm")
    ap.add_argument("--solvers", nargs="+", default=["ddim", "dpm++2m", "unipc"])
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 10, 15, 20, 25])
    ap.add_argument("--reference-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance-psnr", type=float, default=0.1)
    ap.add_argument("--tolerance-ssim", type=float, default=0.005)
    ap.add_argument("--means", nargs="*", default=[], metavar="SOLVER:STEPS:K",
                    help="extra rows: the mean of K samples (the model's samples setting), e.g. dpm++2m:10:3")
    ap.add_argument("--spade", action="store_true", help="an extra row: MS-SPADE alone, decoded without diffusion")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("solver_steps.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from mrtranslate import Translator
    from mrtranslate.evaluation.metrics import compute_metrics
    from mrtranslate.imaging.layout import find_subjects
    from mrtranslate.imaging.volume import load_volume

    tr = Translator(model=args.model, device="cpu", progress=False)
    subjects = {s.case: s for s in find_subjects(args.data, require=tr.modalities)}
    missing = [s for s in args.subjects if s not in subjects]
    if missing:
        raise SystemExit(f"not in {args.data}: {', '.join(missing)}")
    extra = [(solver, int(steps), int(k)) for solver, steps, k in (spec.split(":") for spec in args.means)]
    if args.spade:
        extra.append(("spade", 0, 0))
    configs = [("ddim", args.reference_steps, 1)] + [(s, n, 1) for s in args.solvers for n in args.steps] + extra
    rows: list[dict] = []
    for case in args.subjects:
        subject = subjects[case]
        for source in tr.modalities:
            bound = tr(subject.files[source], source=source)
            targets = [t for t in tr.modalities if t != source]
            truth = {t: load_volume(subject.files[t]).data for t in targets}
            for solver, steps, k in configs:
                start = time.perf_counter()
                if solver == "spade":
                    out = bound.to_spade_only(*targets)
                else:
                    out = bound.to(*targets, steps=steps, eta=0.0, solver=solver, samples=k, seed=args.seed)
                seconds = time.perf_counter() - start
                for t in targets:
                    m = compute_metrics(np.asarray(out[t].dataobj, dtype=np.float32), truth[t], mask=truth[t] > 0)
                    rows.append({"case": case, "source": source, "target": t, "solver": solver, "steps": steps,
                                 "samples": k, "psnr": m["psnr"]["brain"], "ssim": m["ssim"]["brain"],
                                 "seconds": seconds})
                print(f"{case} {source}: {solver} {steps} steps "
                      f"{np.mean([r['psnr'] for r in rows[-3:]]):.2f} dB in {seconds:.1f} s", flush=True)
            args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")

    def mean(solver: str, steps: int, key: str, k: int = 1) -> float:
        return float(np.mean([r[key] for r in rows
                              if r["solver"] == solver and r["steps"] == steps and r["samples"] == k]))

    ref_p, ref_s = mean("ddim", args.reference_steps, "psnr"), mean("ddim", args.reference_steps, "ssim")
    lines = [f"{machine()}, {args.model}, {len(args.subjects)} subjects x 12 pairs, one sample, seed {args.seed}, "
             f"{_dt.date.today().isoformat()}", "",
             f"| sampler | steps | PSNR dB | SSIM | PSNR - DDIM {args.reference_steps} | SSIM - DDIM {args.reference_steps} |",
             "| --- | --: | --: | --: | --: | --: |",
             f"| ddim | {args.reference_steps} | {ref_p:.3f} | {ref_s:.4f} | | |"]
    holds: dict[str, int | None] = {}
    for solver in args.solvers:
        ok_from = None
        for n in sorted(args.steps):
            p, s = mean(solver, n, "psnr"), mean(solver, n, "ssim")
            ok = abs(p - ref_p) <= args.tolerance_psnr and abs(s - ref_s) <= args.tolerance_ssim
            ok_from = (ok_from or n) if ok else None
            lines.append(f"| {solver} | {n} | {p:.3f} | {s:.4f} | {p - ref_p:+.3f} | {s - ref_s:+.4f} |")
        holds[solver] = ok_from
    for solver, n, k in extra:
        p, s = mean(solver, n, "psnr", k), mean(solver, n, "ssim", k)
        label = ("MS-SPADE only", "") if solver == "spade" else (f"{solver}, mean of {k}", str(n))
        lines.append(f"| {label[0]} | {label[1]} | {p:.3f} | {s:.4f} | {p - ref_p:+.3f} | {s - ref_s:+.4f} |")
    lines.append("")
    for solver, n in holds.items():
        lines.append(f"{solver}: within {args.tolerance_psnr} dB and {args.tolerance_ssim} SSIM of DDIM "
                     f"{args.reference_steps} from {n} steps on" if n else
                     f"{solver}: not within tolerance at any step count measured")
    md = "\n".join(lines) + "\n"
    args.out.write_text(json.dumps({"rows": rows, "reference": {"psnr": ref_p, "ssim": ref_s},
                                    "holds_from": holds, "argv": sys.argv[1:], "machine": machine()}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
