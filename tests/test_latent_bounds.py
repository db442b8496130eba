"""scripts/latent_bounds.py: the fitted latent map and the numbers it reports for each column."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from _tiny import save_tiny
from _training_utils import PREP, SPACING, write_subjects
from mrtranslate.layout import find_subjects
from mrtranslate.metrics import compute_metrics
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.training.data import preprocess_subject
from mrtranslate.volumes import Preprocessing

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "latent_bounds.py"


def _script():
    spec = importlib.util.spec_from_file_location("latent_bounds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_affine_recovers_an_exact_map():
    lb = _script()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g)
    b = torch.randn(4, generator=g)
    pairs = []
    for _ in range(3):
        z = torch.randn(1, 4, 5, 6, 7, generator=g)
        pairs.append((z, (z.movedim(1, -1) @ a + b).movedim(-1, 1)))
    w = lb.fit_affine(pairs)
    torch.testing.assert_close(w[:4], a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w[4], b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lb.apply_affine(w, pairs[0][0]), pairs[0][1], atol=1e-4, rtol=1e-4)


def test_script_columns_match_the_pipeline(tmp_path, monkeypatch):
    model = save_tiny(tmp_path / "model", grid=tuple(PREP["grid"]), spacing=(SPACING,) * 3)
    heldout = write_subjects(tmp_path / "heldout", n=2)
    train = write_subjects(tmp_path / "train", n=3)
    # phantom records: one training subject healthy, the others with a tumour
    for i, subject in enumerate(find_subjects(train)):
        folder = subject.files["t1"].parent
        (folder / f"{subject.case}_phantom.json").write_text(json.dumps({"tumor": i > 0}))
    out = tmp_path / "bounds.json"
    argv = ["latent_bounds.py", str(model), "--data", str(heldout), "--source", "T1", "--target", "t1ce",
            "--fit-data", str(train), "--json", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with torch.inference_mode():
        _script().main()
    report = json.loads(out.read_text())
    assert (report["source"], report["target"]) == ("t1", "t1ce")
    columns = ["ms-spade", "src-latent", "src-image", "autoencoder", "autoencoder-anchored", "fit-all", "fit-healthy",
               "fit-anchored"]
    assert [r["case"] for r in report["subjects"]] == [s.case for s in find_subjects(heldout)]
    assert list(report["means"]) == columns

    # recompute two columns of the first subject independently
    pipe = ALDMPipeline.from_pretrained(model)
    subject = find_subjects(heldout)[0]
    images, _ = preprocess_subject(subject, Preprocessing.from_dict(PREP))
    src, tgt = images[0][None, None], images[1][None, None]

    def image(x):
        return np.maximum((x.squeeze().numpy() + 1) / 2, 0)

    brain = tgt.squeeze().numpy() > -1 + 1e-6
    with torch.inference_mode():
        spade = pipe.decode(pipe.target_like(pipe.encode(src), [1]))
        recon = pipe.decode(pipe.encode(tgt))
    row = report["subjects"][0]
    for name, pred in (("ms-spade", spade), ("autoencoder", recon)):
        m = compute_metrics(image(pred), image(tgt), brain)
        assert row[name]["psnr"] == m["psnr"]["brain"]
        assert row[name]["ssim"] == m["ssim"]["brain"]
    assert row["tumor"] is None  # held-out subjects without phantom records
    assert row["median_ratio"] > 0 and row["p99.5_ratio"] > 0
