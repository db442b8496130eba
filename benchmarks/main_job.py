"""The main job as users meet it: one ``mrtranslate`` command in a fresh process, stage by stage.

    python benchmarks/main_job.py SUBJECT_t1.nii.gz --to t1ce t2 flair --runs 3

Each run starts a new Python process (``python -m mrtranslate INPUT --to ... --out-dir TMP --quiet``, plus any
options after ``--``) under ``cProfile``, so every run pays what a user's run pays: the imports, loading the
model, and the first call of every layer shape. Wall time and peak memory (the process's maximum resident set)
come from the parent; the profile is split into stages by the functions that do them:

    start        interpreter, imports and command-line parsing (the command imports torch on first use)
    load model   resolving and loading the model folder (configs, safetensors)
    read input   reading the NIfTI and checking it (skull-stripped, modality, divisibility)
    model space  resampling to the model's grid and intensity scale
    encode       the VQ-GAN encoder and quantizer
    MS-SPADE     the target-like latents
    sampling     the diffusion UNet and the solver's updates (MS-SPADE not included)
    decode       the VQ-GAN decoder
    input grid   resampling each output back to the input's grid
    refine       the detail refiner on the input's grid (models that have one, inputs it runs on)
    write        the NIfTI files and their JSON records
    other        the rest (command-line checks, run planning, profiler overhead)

``--json FILE`` writes every run's numbers. Other options after ``--`` go to the command (e.g.
``-- --samples 1 --steps 10``).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# stage -> (file suffix, function name) whose cumulative time is the stage's
STAGES: dict[str, list[tuple[str, str]]] = {
    "load model": [("hub.py", "resolve_model"), ("folder.py", "load_pipeline")],
    "read input": [("translator.py", "_bind")],
    "model space": [("model_space.py", "to_model_space")],
    "encode": [("aldm.py", "encode")],
    "MS-SPADE": [("aldm.py", "target_like")],
    "sampling": [("aldm.py", "sample")],
    "decode": [("aldm.py", "decode")],
    "input grid": [("model_space.py", "__call__")],
    "refine": [("refine.py", "refine")],
    "write": [("volume.py", "save_image"), ("provenance.py", "write_json_atomic")],
}
ORDER = ["start", "load model", "read input", "model space", "encode", "MS-SPADE", "sampling", "decode",
         "input grid", "refine", "write", "other"]


def _cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    total = 0.0
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and file.replace(os.sep, "/").endswith(suffix) and "mrtranslate" in file:
            total += ct
    return total


def _imports_in(stats: pstats.Stats, caller: str) -> float:
    """Seconds spent importing modules called directly from ``caller``."""
    total = 0.0
    for (_file, _line, func), (_cc, _nc, _tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == "_find_and_load":
            total += sum(v[3] for (_f, _l, name), v in callers.items() if name == caller)
    return total


def stage_times(profile: Path, wall: float) -> dict[str, float]:
    """Seconds per stage from one run's profile (stages nested in others are taken out of them), given the wall
    time of the whole process."""
    stats = pstats.Stats(str(profile))
    out = {stage: sum(_cumulative(stats, s, f) for s, f in funcs) for stage, funcs in STAGES.items()}
    out["read input"] -= out["model space"]  # Translator._bind maps the input to model space
    out["sampling"] -= out["MS-SPADE"]  # sample() runs MS-SPADE first
    command = _cumulative(stats, "translate.py", "translate_command")
    out["start"] = wall - command + _imports_in(stats, "translate_command")  # the command imports torch lazily
    out["other"] = wall - out["start"] - sum(out[s] for s in STAGES)
    return {k: out[k] for k in ORDER}


def one_run(args: argparse.Namespace, extra: list[str], work: Path, i: int) -> dict:
    out_dir = work / f"run{i}"
    prof = work / f"run{i}.prof"
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "mrtranslate", str(args.input), "--to",
           *args.to, "--out-dir", str(out_dir), "--quiet", *extra]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _pid, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode:
            err.seek(0)
            raise SystemExit(f"the command failed ({child.returncode}): {' '.join(cmd)}\n{err.read()}")
    return {"wall_s": wall, "peak_gb": usage.ru_maxrss * 1024 / 1e9,  # Linux: kilobytes
            "stages_s": stage_times(prof, wall)}


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("input", type=Path)
    ap.add_argument("--to", nargs="+", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            runs.append(one_run(args, extra, Path(tmp), i))
            print(f"run {i + 1}: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
    command = f"mrtranslate {args.input.name} --to {' '.join(args.to)}" + (f" {' '.join(extra)}" if extra else "")
    print(f"`{command}`, {len(runs)} cold run(s), each in a fresh process\n")
    print("| stage | " + " | ".join(f"run {i + 1} s" for i in range(len(runs))) + " |")
    print("| --- | " + " | ".join("--:" for _ in runs) + " |")
    for stage in ORDER:
        print(f"| {stage} | " + " | ".join(f"{r['stages_s'][stage]:.1f}" for r in runs) + " |")
    print("| **wall** | " + " | ".join(f"**{r['wall_s']:.1f}**" for r in runs) + " |")
    print(f"\nmedian wall {statistics.median(r['wall_s'] for r in runs):.1f} s; "
          f"peak memory {max(r['peak_gb'] for r in runs):.2f} GB")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "runs": runs}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
