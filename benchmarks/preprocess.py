"""CPU time of each step of `mrtranslate complete SUBJECT --preprocess` and of `--skull-strip`.

Runs the steps one by one through the Python API on one subject's scans as acquired (a folder with T1,
T1ce, T2 and FLAIR files; the T2 is left out and synthesised) and reports the CPU time (user + system,
all threads) and wall time of each: reading, each rigid registration, HD-BET brain extraction on the
reference, and the translation into T2 with the default model at its default sampling.

    python benchmarks/preprocess.py SUBJECT_DIR --threads 1 --out benchmarks/PREPROCESS.json

Writes the JSON (``--out``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from datetime import date
from pathlib import Path

import torch


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Steps:
    def __init__(self) -> None:
        self.rows: list[dict[str, float | str]] = []

    def __call__(self, name: str, fn, *args, **kwargs):
        c0, w0 = cpu_seconds(), time.perf_counter()
        out = fn(*args, **kwargs)
        self.rows.append({"step": name, "cpu_s": round(cpu_seconds() - c0, 1),
                          "wall_s": round(time.perf_counter() - w0, 1)})
        print(f"{name}: {self.rows[-1]['cpu_s']} s CPU, {self.rows[-1]['wall_s']} s wall", flush=True)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("subject", type=Path, help="folder with the subject's T1, T1ce, T2 and FLAIR as acquired")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    ap.add_argument("--machine", default=platform.processor() or platform.machine(), help="machine name for the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import SimpleITK as sitk

    from mrtranslate import Translator
    from mrtranslate.imaging.layout import find_subjects
    from mrtranslate.imaging.volume import load_volume
    from mrtranslate.preprocess.brain import extract_brain, extractor_record
    from mrtranslate.preprocess.register import register_rigid, resample_onto
    from mrtranslate.preprocess.subject import reference_of

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    files = {m: p for m, p in find_subjects(args.subject)[0].files.items() if m != "t2"}
    step = Steps()
    vols = {m: step(f"read {m}", load_volume, p) for m, p in files.items()}
    ref = reference_of(vols)
    on_ref = {ref: vols[ref]}
    for m, v in vols.items():
        if m != ref:
            tfm = step(f"register {m} to {ref}", register_rigid, vols[ref], v)
            on_ref[m] = step(f"resample {m}", resample_onto, v, vols[ref], tfm)
    mask = step(f"HD-BET on {ref} ({extractor_record()['brain_extractor_mode']})", extract_brain, vols[ref])
    brain = {m: mask.apply(v) for m, v in on_ref.items()}
    tr = step("load the default model", Translator.from_pretrained, progress=False)
    step(f"translate {ref} -> t2 (default sampling)", lambda: tr(brain[ref], source=ref).to("t2"))
    total = {"cpu_s": round(sum(float(r["cpu_s"]) for r in step.rows), 1),
             "wall_s": round(sum(float(r["wall_s"]) for r in step.rows), 1)}
    result = {"machine": args.machine, "threads": args.threads, "torch": torch.__version__,
              "simpleitk": sitk.Version_VersionString(), **extractor_record(), "date": date.today().isoformat(),
              "subject": args.subject.name, "shapes": {m: list(v.shape) for m, v in vols.items()},
              "spacing_mm": {m: [round(z, 3) for z in v.spacing] for m, v in vols.items()},
              "steps": step.rows, "total": total}
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\n{args.machine}, {args.threads} thread(s), {result['date']}\n")
    print("| step | CPU s | wall s |\n| --- | --- | --- |")
    for r in step.rows + [{"step": "**total**", **total}]:
        print(f"| {r['step']} | {r['cpu_s']} | {r['wall_s']} |")


if __name__ == "__main__":
    main()
