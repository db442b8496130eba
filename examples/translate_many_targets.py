"""Translate one scan into several contrasts in one batched pass, and save each next to the input.

    python examples/translate_many_targets.py examples/data/Phantom_0_00000/Phantom_0_00000_t1.nii.gz --to t1ce t2 flair
"""

import argparse
from pathlib import Path

from mrtranslate import Translator

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("image", type=Path)
parser.add_argument("--to", nargs="+", default=["t2", "flair"], help="target modalities")
parser.add_argument("--source", default=None, help="source modality (default: from the file name)")
parser.add_argument("--model", default=None, help="Hub id, model folder or bundled name (default: the bundled default model, brats-2mm)")
parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's)")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

translator = Translator.from_pretrained(args.model, steps=args.steps, seed=args.seed)
outputs = translator(args.image, source=args.source).to(*args.to)  # one batched pass
if not isinstance(outputs, dict):
    outputs = {args.to[0]: outputs}
stem = args.image.name.replace(".nii.gz", "").replace(".nii", "")
for target, image in outputs.items():
    path = args.image.with_name(f"{stem}_{target}-synth.nii.gz")
    image.to_filename(path)
    print(f"wrote {path}")
