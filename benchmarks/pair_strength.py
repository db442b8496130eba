"""Which targets a model should take from MS-SPADE alone: its full output against MS-SPADE's, per target.

    python benchmarks/pair_strength.py --name brats-2mm \\
        --report validation=REPORT_1MM_ALDM,REPORT_1MM_SPADE --report validation_2mm=REPORT_2MM

Each ``--report DATA=FOLDER[,FOLDER...]`` names ``mrtranslate evaluate`` report folders of one validation set
that together hold both methods, ``aldm`` (the model at strength 1, its other defaults) and ``spade`` (MS-SPADE
only), on all 12 pairs and the same subjects. Per target, the mean brain PSNR and SSIM over the pairs into it
and the subjects is compared between the two methods. A target is taken from MS-SPADE alone (the model's
``pair_strength`` 0 for every pair into it) where MS-SPADE's means are at least the full model's in BOTH
metrics on EVERY validation set; elsewhere the diffusion stage stays. The table is printed, the
``mrtranslate export`` flags that set the choice are listed, and a record is appended to ``--json``
(default ``benchmarks/PAIR_STRENGTH.json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("t1", "t1ce", "t2", "flair")


def load_tasks(folders: list[Path]) -> tuple[dict[tuple[str, str, str], dict], list[str]]:
    """(method, source, target) -> mean metrics, from the summaries of ``folders``; and the subjects."""
    tasks: dict[tuple[str, str, str], dict] = {}
    cases: set[tuple[str, ...]] = set()
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        settings = summary["settings"]
        if float(settings.get("strength", 1.0)) != 1.0 or settings.get("pair_strength"):
            raise SystemExit(f"{folder}: made at strength {settings.get('strength')} / pair strengths "
                             f"{settings.get('pair_strength')}; compare the model at strength 1")
        cases.add(tuple(sorted(settings["cases"])))
        for t in summary["tasks"]:
            tasks.setdefault((t["method"], t["source"], t["target"]), t["mean"])
    if len(cases) != 1:
        raise SystemExit(f"the reports of one set cover different subjects: {sorted(cases)}")
    return tasks, list(next(iter(cases)))


def per_target(tasks: dict[tuple[str, str, str], dict]) -> dict[str, dict[str, dict[str, float]]]:
    """target -> method -> mean PSNR / SSIM over the 3 pairs into it."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for target in TARGETS:
        for method in ("aldm", "spade"):
            rows = [m for (meth, _, tgt), m in tasks.items() if meth == method and tgt == target]
            if len(rows) != 3:
                raise SystemExit(f"{method} has {len(rows)} pairs into {target}, not 3: evaluate --source all")
            out.setdefault(target, {})[method] = {
                "psnr": sum(r["psnr_brain"] for r in rows) / 3, "ssim": sum(r["ssim_brain"] for r in rows) / 3}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the model's name in the record")
    ap.add_argument("--report", action="append", required=True, metavar="DATA=FOLDER[,FOLDER...]")
    ap.add_argument("--json", type=Path, default=HERE / "PAIR_STRENGTH.json")
    args = ap.parse_args()
    sets = {}
    for entry in args.report:
        data, _, folders = entry.partition("=")
        if not folders:
            raise SystemExit(f"--report {entry!r}: write DATA=FOLDER[,FOLDER...]")
        tasks, cases = load_tasks([Path(f) for f in folders.split(",")])
        sets[data] = {"subjects": cases, "targets": per_target(tasks)}
    chosen = [t for t in TARGETS if all(
        s["targets"][t]["spade"]["psnr"] >= s["targets"][t]["aldm"]["psnr"]
        and s["targets"][t]["spade"]["ssim"] >= s["targets"][t]["aldm"]["ssim"] for s in sets.values())]
    lines = ["| validation set (subjects) | target | full model | MS-SPADE only |", "| --- | --- | --: | --: |"]
    for data, s in sets.items():
        for t in TARGETS:
            a, m = s["targets"][t]["aldm"], s["targets"][t]["spade"]
            lines.append(f"| {data} ({len(s['subjects'])}) | {t} | {a['psnr']:.2f} / {a['ssim']:.3f} | "
                         f"{m['psnr']:.2f} / {m['ssim']:.3f} |")
    flags = [f"--pair-strength '{s}->{t}=0'" for t in chosen for s in TARGETS if s != t]
    print("\n".join(lines))
    print(f"\nfrom MS-SPADE alone: {', '.join(chosen) or 'none'}" + (f"\nexport flags: {' '.join(flags)}" if flags else ""))
    record = {"model": args.name, "date": _dt.date.today().isoformat(), "sets": sets, "ms_spade_targets": chosen,
              "rule": "MS-SPADE alone where its per-target means are >= the full model's in PSNR and SSIM on every set"}
    prev = json.loads(args.json.read_text(encoding="utf-8")) if args.json.exists() else []
    prev.append(record)
    args.json.write_text(json.dumps(prev, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
