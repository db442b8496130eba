"""What limits a model on one source -> target pair: per subject, the MS-SPADE prediction against the bounds
that the first stage (the VQ-GAN) sets, and against simple latent maps fitted on training data.

    python scripts/latent_bounds.py [MODEL] --data HELDOUT --source t1 --target t1ce [--fit-data TRAIN] [--json F]

MODEL is anything ``Translator`` takes (default: the bundled model). Subjects are read and preprocessed as the
training stages read them (each modality on the model grid, scaled by its own percentiles), so source and
target share one grid. Every prediction is scored against the preprocessed target with mrtranslate.metrics
(PSNR / SSIM inside the target's foreground); both are affine-invariant, so the model's intensity scale
does not matter. Columns:

  ms-spade     decode(spade(z_src, target)): what ``mrtranslate evaluate --method spade`` scores
  src-latent   decode(z_src): the source latent unchanged (the identity in latent space)
  src-image    the source image itself (the identity in image space)
  autoencoder  decode(z_tgt): the reconstruction of the true target, the ceiling of any decoded latent
  fit-all      decode(A z_src + b), A and b by least squares over the training latents of every subject
               of --fit-data (a per-voxel affine map of the latent channels)
  fit-healthy  the same fitted on the training phantoms without a tumour only (phantom records needed)
  autoencoder-anchored, fit-anchored
               the same as autoencoder and fit-all with every target first rescaled so that its brain median
               equals its source's (``anchor_to_source``: the training targets of a spade run's ``anchor_targets``)

and, from the raw scans inside the brain, target / source ratios of the median and of the 99.5th percentile
(near the intensity that the model's preprocessing maps to +1, the 99.5th percentile of the whole grid).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mrtranslate.hub import resolve_model
from mrtranslate.layout import Subject
from mrtranslate.metrics import compute_metrics
from mrtranslate.modalities import MODALITIES, canonical
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.training.data import anchor_to_source, dataset_subjects, preprocess_subject
from mrtranslate.volumes import Preprocessing, _output_intensity, load_volume


def phantom_has_tumor(subject: Subject) -> bool | None:
    """The ``tumor`` flag of a phantom subject's record, None when it has none."""
    folder = next(iter(subject.files.values())).parent
    record = folder / f"{subject.case}_phantom.json"
    return bool(json.loads(record.read_text())["tumor"]) if record.is_file() else None


def pair_images(subject: Subject, prep: Preprocessing, source: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The subject's source and target scans in model space, ``[1, 1, *grid]`` each (the caller checks both exist)."""
    images, _ = preprocess_subject(subject, prep)
    return images[source][None, None], images[target][None, None]


def fit_affine(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """W ``[C + 1, C]`` minimising ||[z_src, 1] W - z_tgt||^2 over every latent voxel of ``pairs``."""
    c = pairs[0][0].shape[1]
    xtx = torch.zeros(c + 1, c + 1, dtype=torch.float64)
    xty = torch.zeros(c + 1, c, dtype=torch.float64)
    for z_src, z_tgt in pairs:
        x = torch.cat([z_src, torch.ones_like(z_src[:, :1])], 1).movedim(1, -1).reshape(-1, c + 1).double()
        xtx += x.T @ x
        xty += x.T @ z_tgt.movedim(1, -1).reshape(-1, c).double()
    return torch.linalg.solve(xtx, xty).float()


def apply_affine(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (torch.cat([z, torch.ones_like(z[:, :1])], 1).movedim(1, -1) @ w).movedim(-1, 1).contiguous()


def raw_ratios(subject: Subject, source: str, target: str) -> dict[str, float]:
    src = load_volume(subject.files[source]).data
    tgt = load_volume(subject.files[target]).data
    brain = (src > 0) & (tgt > 0)
    s = np.percentile(src[brain], [50, 99.5])
    t = np.percentile(tgt[brain], [50, 99.5])
    return {"median_ratio": float(t[0] / s[0]), "p99.5_ratio": float(t[1] / s[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default=None, help="model folder, bundled name or Hub id (default: bundled)")
    ap.add_argument("--data", required=True, type=Path, help="subjects to score (held-out)")
    ap.add_argument("--source", required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--fit-data", type=Path, help="training subjects for the fitted latent maps")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    source, target = canonical(args.source), canonical(args.target)
    si, ti = MODALITIES.index(source), MODALITIES.index(target)

    pipe = ALDMPipeline.from_pretrained(resolve_model(args.model).path)
    prep = Preprocessing.from_dict(pipe.config.preprocessing)
    target_class = pipe.modalities.index(target)

    def image(x: torch.Tensor) -> np.ndarray:  # model values -> the output intensities the pipeline writes
        return _output_intensity(x.squeeze().numpy())

    def decoded(z: torch.Tensor) -> np.ndarray:
        return image(pipe.decode(z))

    maps: dict[str, torch.Tensor] = {}
    if args.fit_data:
        fits = ("fit-all", "fit-healthy", "fit-anchored")
        groups: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in fits}
        for subject in dataset_subjects(args.fit_data, min_modalities=2):
            if source not in subject.files or target not in subject.files:
                continue
            x_src, x_tgt = pair_images(subject, prep, si, ti)
            z_src = pipe.encode(x_src)
            pair = (z_src, pipe.encode(x_tgt))
            groups["fit-all"].append(pair)
            if phantom_has_tumor(subject) is False:
                groups["fit-healthy"].append(pair)
            groups["fit-anchored"].append((z_src, pipe.encode(anchor_to_source(x_src, x_tgt))))
        maps = {name: fit_affine(pairs) for name, pairs in groups.items() if pairs}
        print("fitted on", ", ".join(f"{name}: {len(pairs)} subjects" for name, pairs in groups.items()), flush=True)

    rows = []
    for subject in dataset_subjects(args.data, min_modalities=2):
        if source not in subject.files or target not in subject.files:
            continue
        x_src, x_tgt = pair_images(subject, prep, si, ti)
        tgt = image(x_tgt)  # scored inside its foreground (> 0), compute_metrics' default mask and evaluate's rule
        z_src, z_tgt = pipe.encode(x_src), pipe.encode(x_tgt)
        preds = {
            "ms-spade": decoded(pipe.target_like(z_src, [target_class])),
            "src-latent": decoded(z_src),
            "src-image": image(x_src),
            "autoencoder": decoded(z_tgt),
            "autoencoder-anchored": decoded(pipe.encode(anchor_to_source(x_src, x_tgt))),
        }
        preds.update({name: decoded(apply_affine(w, z_src)) for name, w in maps.items()})
        row = {"case": subject.case, "tumor": phantom_has_tumor(subject), **raw_ratios(subject, source, target)}
        for name, pred in preds.items():
            m = compute_metrics(pred, tgt)
            row[name] = {"psnr": m["psnr"]["brain"], "ssim": m["ssim"]["brain"]}
        rows.append(row)
        cells = "  ".join(f"{k} {row[k]['psnr']:.2f}/{row[k]['ssim']:.3f}" for k in preds)
        print(f"{subject.case} tumor={row['tumor']} median x{row['median_ratio']:.2f} p99.5 x{row['p99.5_ratio']:.2f}  "
              f"{cells}", flush=True)
    if not rows:
        raise SystemExit(f"no subject of {args.data} has both {source} and {target}")
    names = [k for k in rows[0] if isinstance(rows[0][k], dict)]
    means = {k: {m: float(np.mean([r[k][m] for r in rows])) for m in ("psnr", "ssim")} for k in names}
    print(f"mean of {len(rows)}  " + "  ".join(f"{k} {v['psnr']:.2f}/{v['ssim']:.3f}" for k, v in means.items()))
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "source": source, "target": target,
                                         "subjects": rows, "means": means}, indent=1))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
