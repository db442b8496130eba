"""Translate the T1 scan of every subject in a BraTS / BIDS folder, loading the model once.

    python examples/translate_folder.py examples/data --to t2 flair --out-dir synth/

Subjects whose outputs exist already are skipped, so an interrupted run can simply be started again.
"""

import argparse
from pathlib import Path

from mrtranslate import Translator
from mrtranslate.imaging.layout import find_subjects

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("folder", type=Path, help="a folder of subjects (BraTS 2021/2023 or BIDS layout)")
parser.add_argument("--source", default="t1")
parser.add_argument("--to", nargs="+", default=["t2", "flair"])
parser.add_argument("--out-dir", type=Path, default=Path("synth"))
parser.add_argument("--model", default=None, help="Hub id, model folder or bundled name (default: the bundled default model, brats-2mm)")
args = parser.parse_args()

translator = Translator.from_pretrained(args.model)
for subject in find_subjects(args.folder):
    if args.source not in subject.files:
        print(f"{subject.case}: no {args.source} scan, skipped")
        continue
    outs = {t: args.out_dir / subject.case / f"{subject.case}_{t}-synth.nii.gz" for t in args.to}
    todo = [t for t, p in outs.items() if not p.exists()]
    if not todo:
        continue
    result = translator(subject.files[args.source], source=args.source).to(*todo)
    result = result if isinstance(result, dict) else {todo[0]: result}
    for target, image in result.items():
        outs[target].parent.mkdir(parents=True, exist_ok=True)
        image.to_filename(outs[target])
        print(f"{subject.case}: wrote {outs[target]}")
