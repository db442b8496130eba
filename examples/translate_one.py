"""Translate one T1 scan into FLAIR with the bundled default model (or --model ID).

    python examples/translate_one.py examples/data/Phantom_0_00000/Phantom_0_00000_t1.nii.gz
"""

import argparse
from pathlib import Path

from mrtranslate import Translator

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("image", type=Path, help="a T1-weighted NIfTI volume")
parser.add_argument("--model", default=None, help="Hub id, model folder or bundled name (default: the bundled default model, brats-2mm)")
parser.add_argument("--out", type=Path, default=None, help="output file (default: <image>_flair.nii.gz beside it)")
args = parser.parse_args()

flair = Translator(args.image, source="t1", model=args.model).to("flair")  # a nibabel.Nifti1Image
out = args.out or args.image.with_name(args.image.name.replace(".nii.gz", "").replace(".nii", "") + "_flair.nii.gz")
flair.to_filename(out)
print(f"wrote {out}: shape {flair.shape}, same affine as the input")
