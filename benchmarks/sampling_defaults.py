"""Quality against sampling cost: a model evaluated on real scans with each (samples, steps) setting.

    python benchmarks/sampling_defaults.py --data VALIDATION --model MODEL --settings 3x8 6x4 --cases 3

Each setting ``KxS`` (K samples averaged per target, S solver steps) runs ``mrtranslate evaluate --source all``
on the first ``--cases`` subjects of ``--data`` (all 12 pairs, the model's solver and seed 0) into its own folder
under ``--work`` (resumable), and reports the 12-pair mean brain PSNR / SSIM beside the UNet evaluations each
target costs (K x S, the part of a translation that grows with the setting). ``--uncertainty`` also reports the
mean Spearman correlation of the samples' SD with the error (K >= 2). The table and ``SAMPLING_DEFAULTS.json``
name the model, data, subjects, machine and date; a model's default sampling is chosen from such a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inference import machine  # noqa: E402


def evaluate(args: argparse.Namespace, samples: int, steps: int) -> dict:
    out = args.work / f"{samples}x{steps}"
    cmd = [sys.executable, "-m", "mrtranslate", "evaluate", "--data", str(args.data), "--source", "all",
           "--method", "aldm", "--samples", str(samples), "--steps", str(steps), "--out", str(out), "--quiet",
           "--no-figures"]
    if args.model:
        cmd += ["--model", args.model]
    if args.cases:
        cmd += ["--cases", str(args.cases)]
    if args.uncertainty and samples > 1:
        cmd.append("--uncertainty")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"evaluate failed for {samples}x{steps}:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    tasks = [t for t in summary["tasks"] if t["method"] == "aldm"]
    row = {"samples": samples, "steps": steps, "unet_evaluations_per_target": samples * steps,
           "pairs": len(tasks), "psnr": sum(t["mean"]["psnr_brain"] for t in tasks) / len(tasks),
           "ssim": sum(t["mean"]["ssim_brain"] for t in tasks) / len(tasks),
           "subjects": summary["settings"]["cases"], "solver": summary["settings"]["solver"],
           "wall_s": time.perf_counter() - t0}
    calibration = [e for e in summary.get("calibration") or [] if not e.get("no_spread")]
    if calibration:  # one entry per pair: the mean over subjects of the SD-error rank correlation
        row["spearman"] = sum(e["spearman"] for e in calibration) / len(calibration)
        row["spearman_min_pair"] = min(e["spearman"] for e in calibration)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default=None, help="model (default: the bundled default)")
    ap.add_argument("--name", default=None, help="the model's name in the table and record (default: --model)")
    ap.add_argument("--settings", nargs="+", required=True, help="KxS: K samples, S steps (e.g. 3x15 1x10)")
    ap.add_argument("--cases", type=int, default=None, help="the first N subjects (sorted by name)")
    ap.add_argument("--uncertainty", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("sampling-defaults"))
    ap.add_argument("--json", type=Path, default=HERE / "SAMPLING_DEFAULTS.json")
    args = ap.parse_args()
    settings = []
    for s in args.settings:
        try:
            k, n = (int(v) for v in s.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad setting {s!r}: write KxS, e.g. 3x15") from None
        settings.append((k, n))
    rows = []
    for k, n in settings:
        rows.append(evaluate(args, k, n))
        print(f"{k}x{n}: {rows[-1]['psnr']:.2f} dB / {rows[-1]['ssim']:.3f}", file=sys.stderr, flush=True)
    model = args.name or args.model or "the bundled default"
    print(f"{model} on {args.data.name}" + (f" (first {args.cases} subjects)" if args.cases else "") +
          f", all pairs, {machine()}, {_dt.date.today().isoformat()}\n")
    extra = " | SD-error Spearman" if args.uncertainty else ""
    print(f"| samples x steps | UNet evaluations per target | PSNR (dB) | SSIM{extra} |")
    print("| --- | --: | --: | --:" + (" | --:" if extra else "") + " |")
    for r in rows:
        sp = f" | {r['spearman']:.3f}" if "spearman" in r else (" | " if extra else "")
        print(f"| {r['samples']} x {r['steps']} | {r['unet_evaluations_per_target']} | {r['psnr']:.2f} | "
              f"{r['ssim']:.3f}{sp} |")
    record = {"model": model, "data": args.data.name, "cases": args.cases, "machine": machine(),
              "date": _dt.date.today().isoformat(), "rows": rows}
    prev = json.loads(args.json.read_text()) if args.json.exists() else []
    args.json.write_text(json.dumps(prev + [record], indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
