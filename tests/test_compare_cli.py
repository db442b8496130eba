"""`mrtranslate compare PRED TARGET [--mask M] [--json]`."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrtranslate.cli import main
from mrtranslate.evaluation.metrics import compute_metrics

SHAPE = (20, 22, 18)


def _affine(spacing: float = 1.0) -> np.ndarray:
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), _affine() if affine is None else affine), str(path))
    return path


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = np.zeros(SHAPE, dtype=np.float32)
    target[3:17, 4:18, 3:15] = rng.uniform(100.0, 800.0, size=(14, 14, 12))
    pred = (target + rng.normal(0.0, 40.0, size=SHAPE)).astype(np.float32)
    return pred, target


def _no_bare_constants(token: str) -> float:
    raise AssertionError(f"invalid JSON constant {token}")


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    pred, target = _pair()
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[5:15, 6:16, 5:13] = 1.0
    return {
        "pred": _save(tmp_path / "pred.nii.gz", pred),
        "target": _save(tmp_path / "target.nii.gz", target),
        "mask": _save(tmp_path / "mask.nii.gz", mask),
    }


def _expected(files: dict[str, Path], mask: bool = False) -> dict[str, dict[str, float]]:
    load = lambda key: np.asarray(nib.load(str(files[key])).get_fdata(), dtype=np.float64)  # noqa: E731
    return compute_metrics(load("pred"), load("target"), load("mask") if mask else None)


@pytest.mark.parametrize("with_mask", [False, True])
def test_json_output_is_one_object_with_the_metrics(files, capsys, with_mask):
    args = ["compare", str(files["pred"]), str(files["target"]), "--json"]
    if with_mask:
        args += ["--mask", str(files["mask"])]
    assert main(args) == 0
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=_no_bare_constants)
    expected = _expected(files, mask=with_mask)
    assert list(result) == ["psnr", "nmse", "mae", "ssim"]
    for name, regions in expected.items():
        assert list(result[name]) == ["brain", "volume"]
        for region, value in regions.items():
            assert result[name][region] == pytest.approx(value, rel=1e-12)
    assert out.count("\n") == 1


def test_mask_changes_the_brain_values(files, capsys):
    main(["compare", str(files["pred"]), str(files["target"]), "--json"])
    default = json.loads(capsys.readouterr().out)
    main(["compare", str(files["pred"]), str(files["target"]), "--json", "--mask", str(files["mask"])])
    masked = json.loads(capsys.readouterr().out)
    assert default["mae"]["brain"] != pytest.approx(masked["mae"]["brain"])


def test_table_output(files, capsys):
    assert main(["compare", str(files["pred"]), str(files["target"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = _expected(files)
    assert lines[0] == f"brain mask: target > 0 ({14 * 14 * 12} voxels)"
    assert lines[1].split() == ["metric", "brain", "volume"]
    rows = {line.split()[0]: line.split()[-2:] for line in lines[2:]}
    assert list(rows) == ["PSNR", "NMSE", "MAE", "SSIM"]
    for label, name in zip(rows, ["psnr", "nmse", "mae", "ssim"]):
        assert rows[label] == [f"{expected[name]['brain']:.4f}", f"{expected[name]['volume']:.4f}"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns


def test_identical_images_give_inf_psnr_in_valid_json(files, capsys):
    assert main(["compare", str(files["target"]), str(files["target"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out, parse_constant=_no_bare_constants)
    assert result["psnr"] == {"brain": "inf", "volume": "inf"}
    assert math.isinf(float(result["psnr"]["volume"]))
    assert result["ssim"]["brain"] == pytest.approx(1.0, abs=1e-12)
    assert main(["compare", str(files["target"]), str(files["target"])]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[-2:] == ["inf", "inf"]


def test_different_affines_are_a_one_line_error_naming_both_files(files, tmp_path, capsys):
    pred, _ = _pair()
    shifted = _affine()
    shifted[0, 3] += 2.0
    moved = _save(tmp_path / "moved.nii.gz", pred, shifted)
    assert main(["compare", str(moved), str(files["target"]), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err and err.startswith("error:")
    assert str(moved) in err and str(files["target"]) in err
    assert "[[1 0 0 -88]" in err and "[[1 0 0 -90]" in err


def test_affines_within_tolerance_are_accepted(files, tmp_path):
    pred, _ = _pair()
    nudged = _affine()
    nudged[1, 3] += 5e-6
    assert main(["compare", str(_save(tmp_path / "p.nii.gz", pred, nudged)), str(files["target"])]) == 0


def test_different_shapes_are_an_error_naming_both(files, tmp_path, capsys):
    small = _save(tmp_path / "small.nii.gz", np.ones((20, 22, 17)))
    assert main(["compare", str(small), str(files["target"])]) == 2
    err = capsys.readouterr().err
    assert "(20, 22, 17)" in err and "(20, 22, 18)" in err and "small.nii.gz" in err


def test_mask_on_another_grid_is_an_error(files, tmp_path, capsys):
    mask = _save(tmp_path / "coarse_mask.nii.gz", np.ones(SHAPE), _affine(spacing=2.0))
    assert main(["compare", str(files["pred"]), str(files["target"]), "--mask", str(mask)]) == 2
    assert "coarse_mask.nii.gz" in capsys.readouterr().err


def test_unreadable_or_missing_inputs_are_errors(files, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing.nii.gz"), str(files["target"])]) == 1
    assert "missing.nii.gz does not exist" in capsys.readouterr().err
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"not an image")
    assert main(["compare", str(junk), str(files["target"])]) == 1
    assert "cannot read prediction" in capsys.readouterr().err


def test_4d_images_with_one_volume_are_read_as_3d(files, tmp_path, capsys):
    pred, _ = _pair()
    single = _save(tmp_path / "pred4d.nii.gz", pred[..., None])
    assert main(["compare", str(single), str(files["target"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(_expected(files)))
    series = _save(tmp_path / "series.nii.gz", np.stack([pred, pred], axis=-1))
    assert main(["compare", str(series), str(files["target"])]) == 1
    assert "3D" in capsys.readouterr().err


def test_module_entry_point_prints_only_json_on_stdout(files):
    proc = subprocess.run(
        [sys.executable, "-m", "mrtranslate", "compare", str(files["pred"]), str(files["target"]), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"psnr", "nmse", "mae", "ssim"}
