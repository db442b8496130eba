"""Which targets a model should standardise: its outputs as decoded against the same outputs standardised.

    python benchmarks/output_standard.py --name brats-2mm --fit-data TRAINING_1MM \\
        --report validation=DATA_1MM=REPORT_1MM --report validation_2mm=DATA_2MM=REPORT_2MM

Each ``--report NAME=DATA=FOLDER`` names an ``mrtranslate evaluate --source all`` report of the model without
output standardisation, at its default sampling (its predictions, ``FOLDER/pred/aldm``), on the validation
subjects of ``DATA``. The landmarks of every target are fitted on the real scans of ``--fit-data``
(``mrtranslate.training.standard``); each prediction is standardised as ``Translator`` does it (its non-zero
voxels) and scored against the real target as ``mrtranslate evaluate`` scores it (brain PSNR and SSIM). Per
target, over the pairs into it and the subjects, a target is standardised where this raises the mean PSNR on
EVERY validation set and the mean SSIM averaged over the sets (each set weighted alike). The table is printed,
with the ``mrtranslate train standard`` command that sets the choice, and a record is appended to ``--json``
(default ``benchmarks/OUTPUT_STANDARD.json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
from pathlib import Path

import numpy as np

from mrtranslate.evaluation.metrics import compute_metrics
from mrtranslate.imaging.layout import find_subjects
from mrtranslate.imaging.volume import load_volume
from mrtranslate.modalities import MODALITIES
from mrtranslate.pipeline.standard import PERCENTILES, standardise
from mrtranslate.training.standard import fit_output_standard

HERE = Path(__file__).resolve().parent


def score_set(data: Path, report: Path, landmarks: dict[str, list[float]]) -> dict[str, dict[str, list[float]]]:
    """target -> {"plain": [psnr, ssim] means, "standardised": [...]} over the pairs into it and the subjects."""
    sums: dict[str, dict[str, list[list[float]]]] = {t: {"plain": [], "standardised": []} for t in MODALITIES}
    for subject in find_subjects(data):
        for target in MODALITIES:
            if target not in subject.files:
                continue
            real = load_volume(subject.files[target]).data
            for source in MODALITIES:
                if source == target or source not in subject.files:
                    continue
                path = report / "pred" / "aldm" / subject.case / f"{subject.case}_{target}_from_{source}.nii.gz"
                if not path.is_file():
                    raise SystemExit(f"{path} is missing: evaluate the model with --source all into {report}")
                pred = load_volume(path).data.astype(np.float32)
                done = pred.copy()
                done[pred > 0] = standardise(pred[pred > 0], PERCENTILES, landmarks[target])
                for kind, image in (("plain", pred), ("standardised", done)):
                    m = compute_metrics(image, real)
                    sums[target][kind].append([m["psnr"]["brain"], m["ssim"]["brain"]])
    return {t: {k: np.mean(v, axis=0).tolist() for k, v in kinds.items()} for t, kinds in sums.items() if kinds["plain"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="the model's name in the record")
    ap.add_argument("--model", required=True, help="the model folder (its modalities and preprocessing)")
    ap.add_argument("--fit-data", required=True, type=Path, help="training subjects whose scans give the landmarks")
    ap.add_argument("--report", action="append", required=True, metavar="NAME=DATA=FOLDER")
    ap.add_argument("--json", type=Path, default=HERE / "OUTPUT_STANDARD.json")
    a = ap.parse_args()
    standard, used = fit_output_standard(a.model, a.fit_data, MODALITIES, progress=False)
    landmarks = {t: list(v) for t, v in standard.landmarks.items()}
    sets = {}
    for entry in a.report:
        name, data, folder = entry.split("=", 2)
        sets[name] = score_set(Path(data), Path(folder), landmarks)
    chosen = []
    print("| target | set | plain PSNR / SSIM | standardised PSNR / SSIM |")
    print("| --- | --- | --: | --: |")
    for t in MODALITIES:
        for name, scores in sets.items():
            (p0, s0), (p1, s1) = scores[t]["plain"], scores[t]["standardised"]
            print(f"| {t} | {name} | {p0:.2f} / {s0:.3f} | {p1:.2f} / {s1:.3f} |")
        psnr_up = all(s[t]["standardised"][0] > s[t]["plain"][0] for s in sets.values())
        ssim_up = np.mean([s[t]["standardised"][1] - s[t]["plain"][1] for s in sets.values()]) > 0
        if psnr_up and ssim_up:
            chosen.append(t)
    print(f"\nstandardise: {' '.join(chosen) or 'none'}")
    if chosen:
        print(f"mrtranslate train standard --model MODEL --data {a.fit_data} --to {' '.join(chosen)}")
    records = json.loads(a.json.read_text()) if a.json.is_file() else []
    records.append({"model": a.name, "date": _dt.date.today().isoformat(), "fit_data": sorted(used["t1"]),
                    "percentiles": list(PERCENTILES), "sets": sets, "standardise": chosen})
    a.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
