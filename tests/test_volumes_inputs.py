"""mrtranslate.imaging: every bad input gets a one-line actionable error or a tested accommodation."""

from __future__ import annotations

import gzip
import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from mrtranslate.errors import InputImageError, MemoryBudgetError, MRTranslateError
from mrtranslate.imaging.model_space import Preprocessing, to_model_space
from mrtranslate.imaging.volume import MIN_FIELD_OF_VIEW_MM, Volume, load_volume

from _volumes_utils import make_affine, phantom

SMALL = Preprocessing(spacing_mm=(2.0, 2.0, 2.0), grid=(64, 88, 64))  # keeps these tests fast


def head(shape=(64, 80, 64), zooms=(2.0, 2.0, 2.0), rot=(0.0, 0.0, 0.0)):
    affine = make_affine(shape, zooms, rot)
    return phantom(shape, affine), affine


def save(tmp_path, name, data, affine, **header_fields):
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    for key, value in header_fields.items():
        img.header[key] = value
    path = tmp_path / name
    nib.save(img, path)
    return path


def refused(src, *fragments, cls=InputImageError):
    """Load ``src``, expect ``cls`` whose message is one line and holds every fragment; return the message."""
    with pytest.raises(cls) as info:
        load_volume(src)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --- files that are not usable images ---------------------------------------------------------------


def test_missing_path(tmp_path):
    refused(tmp_path / "nope.nii.gz", "nope.nii.gz does not exist", "check the path")


def test_directory_names_the_nifti_files_inside(tmp_path):
    refused(tmp_path, "is a folder", "pass one .nii, .nii.gz or .mgz file", "dcm2niix")
    data, affine = head()
    save(tmp_path, "sub-01_T1w.nii.gz", data, affine)
    refused(tmp_path, "it holds 1 NIfTI files, e.g. sub-01_T1w.nii.gz")


def test_empty_file(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    refused(tmp_path / "empty.nii.gz", "is empty (0 bytes)")


@pytest.mark.parametrize("name, payload", [
    ("notes.nii", b"this is a text file, not an image\n" * 20),
    ("picture.png", b"\x89PNG\r\n\x1a\n" + bytes(400)),
    ("scan.nii.gz", b"not gzip at all" * 40),
])
def test_not_a_nifti(tmp_path, name, payload):
    (tmp_path / name).write_bytes(payload)
    refused(tmp_path / name, name, "pass a .nii, .nii.gz or .mgz file")


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_file(tmp_path, name):
    data, affine = head()
    path = save(tmp_path, name, data, affine)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    refused(path, name, "truncated or corrupted", "re-copy")


def test_non_image_objects_are_refused_with_the_library_error():
    refused(42, "cannot use an object of type int")
    refused((np.zeros((20, 20, 20)),), "tuple")
    refused(("abc", np.eye(4)), "numeric grayscale")


# --- shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64, 64), (64, 64, 1), (1, 64, 64)])
def test_2d_image(shape):
    refused((np.ones(shape, np.float32), np.eye(4)), "is 2D", "not a single slice")


def test_4d_image_with_volumes_names_the_count_and_fslroi(tmp_path):
    data, affine = head()
    four = np.stack([data] * 5, axis=-1)
    path = save(tmp_path, "input.nii.gz", four, affine)
    refused(path, "input.nii.gz is 4D with 5 volumes", "pass a single 3D volume", "fslroi")


def test_singleton_fourth_dimension_is_accepted_and_outputs_are_3d(tmp_path):
    data, affine = head()
    path = save(tmp_path, "single.nii.gz", data[..., None], affine)
    vol = load_volume(path)
    assert vol.shape == data.shape and np.array_equal(vol.data, data) and vol.name == "single"
    x, inverse = to_model_space(vol, SMALL)
    out = inverse(x)
    assert out.shape == data.shape and out.header["dim"][0] == 3
    assert np.array_equal(out.affine, nib.load(path).affine)


@pytest.mark.parametrize("shape, zooms", [((4, 4, 4), (20.0, 20.0, 20.0)), ((20, 20, 20), (2.0, 2.0, 2.0)),
                                          ((200, 200, 30), (1.0, 1.0, 1.0))])
def test_volume_far_too_small_to_be_a_head(shape, zooms):
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    message = refused((data, np.diag([*zooms, 1.0])), "too small to be a head")
    if min(shape) >= 8:
        assert f"under {MIN_FIELD_OF_VIEW_MM:g} mm" in message


def test_tiny_foreground_in_a_large_field_of_view_is_refused_by_to_model_space():
    data = np.zeros((100, 100, 100), np.float32)
    data[50:53, 50:53, 50:53] = 100.0  # 27 voxels: the 99.5th percentile of the grid is background
    with pytest.raises(InputImageError, match="percentiles on the model grid are equal"):
        to_model_space((data, np.eye(4)))


# --- values -----------------------------------------------------------------------------------------


def test_nan_voxels_become_background_with_a_warning(caplog):
    data, affine = head()
    data[:5] = np.nan
    data[30, 40, 32] = np.nan  # a NaN inside the brain
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        vol = load_volume((data, affine), name="masked")
    n_nan = int(np.isnan(data).sum())
    assert f"masked: {n_nan} NaN voxels treated as background (0)" in caplog.text
    assert np.all(np.isfinite(vol.data)) and vol.data[30, 40, 32] == 0 and np.all(vol.data[:5] == 0)
    assert np.isnan(data[30, 40, 32])  # the caller's array is left alone
    x, inverse = to_model_space(vol, SMALL)
    out = np.asarray(inverse(x).dataobj)
    assert out[30, 40, 32] == 0 and np.all(np.isfinite(out))


def test_infinite_voxels_are_refused():
    data, affine = head()
    data[3, 3, 3] = np.inf
    data[4, 4, 4] = -np.inf
    refused((data, affine), "2 infinite voxels", "nan_to_num")


def test_float64_beyond_float32_range_is_refused():
    data, affine = head()
    data = data.astype(np.float64)
    data[10, 10, 10] = 1e300
    refused((data, affine), "infinite voxels (or values beyond float32)")


@pytest.mark.parametrize("value", [0.0, 7.5])
def test_constant_volume(value):
    refused((np.full((64, 64, 64), value, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
            f"is constant (every voxel is {value:g})", "nothing to translate")


def test_no_positive_voxel_is_refused_by_to_model_space():
    data, affine = head()
    with pytest.raises(InputImageError, match="no voxel > 0") as info:
        to_model_space((-data, affine), SMALL)
    assert "\n" not in str(info.value)


def test_negative_voxels_warn_that_they_count_as_background(caplog):
    data, affine = head()
    data[data > 0] -= 60.0  # part of the brain becomes negative
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        to_model_space((data, affine), SMALL)
    assert "of the nonzero voxels are negative and count as background" in caplog.text


def test_integer_data_with_scl_slope_and_inter_is_scaled(tmp_path):
    data, affine = head()
    raw = np.round(data * 10).astype(np.int16)
    hdr = nib.Nifti1Image(raw, affine).header
    hdr.set_slope_inter(0.25, -3.0)
    hdr["vox_offset"] = 352
    path = tmp_path / "scaled.nii"  # written by hand: nibabel's writer would choose its own scaling
    path.write_bytes(hdr.binaryblock + bytes(4) + raw.tobytes(order="F"))
    proxy = nib.load(path).dataobj
    assert proxy.dtype == np.int16 and (proxy.slope, proxy.inter) == (0.25, -3.0)
    vol = load_volume(path)
    assert vol.data.dtype == np.float32
    np.testing.assert_allclose(vol.data, raw.astype(np.float64) * 0.25 - 3.0, rtol=1e-6)
    x, inverse = to_model_space(vol, SMALL)
    out = inverse(x)
    assert out.get_data_dtype() == np.float32
    slope, inter = out.header.get_slope_inter()
    assert slope in (None, 1.0) and inter in (None, 0.0)
    assert np.array_equal(out.get_fdata(dtype=np.float32), np.asarray(out.dataobj))


@pytest.mark.parametrize("dtype, fragment", [(np.complex64, "complex data: pass the magnitude image")])
def test_complex_data_is_refused(dtype, fragment):
    data, affine = head()
    refused((data.astype(dtype), affine), fragment)


def test_rgb_data_is_refused(tmp_path):
    data, affine = head()
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    img = nib.Nifti1Image(rgb, affine)
    nib.save(img, tmp_path / "rgb.nii")
    refused(tmp_path / "rgb.nii", "not intensities", "grayscale")


# --- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine, fragment", [
    (np.diag([2.0, 0.0, 2.0, 1.0]), "the affine is singular"),
    (np.full((4, 4), np.nan), "not a finite 4x4 matrix"),
    (np.eye(3), "not a finite 4x4 matrix"),
    (np.array([[2.0, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 1, 1]]), "last row"),
])
def test_bad_affines(affine, fragment):
    data, _ = head()
    refused((data, affine), fragment, "fix the header")


def test_header_without_orientation_warns_and_still_overlays(tmp_path, caplog):
    data, affine = head()
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((2.0, 2.0, 2.0))
    assert int(img.header["qform_code"]) == 0 and int(img.header["sform_code"]) == 0
    path = tmp_path / "noorient.nii"
    nib.save(img, path)
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        x, inverse = to_model_space(path, SMALL)
    assert "no orientation (qform and sform codes are 0)" in caplog.text
    out = inverse(x)
    ref = nib.load(path)
    assert np.array_equal(out.affine, ref.affine)
    assert int(out.header["qform_code"]) == 0 and int(out.header["sform_code"]) == 0


def test_extreme_anisotropy_is_accepted_with_a_warning(caplog):
    shape = (150, 180, 24)  # 1 x 1 x 7 mm
    data, affine = head(shape, (1.0, 1.0, 7.0))
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        x, inverse = to_model_space((data, affine), Preprocessing(grid=(144, 176, 144)))
    assert "voxels are 7 mm along array axis 2" in caplog.text
    out = inverse(x)
    assert out.shape == shape and np.array_equal(out.affine, affine)
    assert np.all(np.asarray(out.dataobj)[data > 0] >= 0) and np.any(np.asarray(out.dataobj) > 0.5)


@pytest.mark.parametrize("zooms, rot", [((-2.0, 2.0, 2.0), (0.0, 0.0, 0.0)),  # left-handed, axis-aligned
                                        ((-2.2, 2.0, 2.5), (12.0, -9.0, 25.0)),  # left-handed, oblique
                                        ((2.0, -2.0, -2.0), (30.0, 0.0, 0.0))])  # oblique RPI
def test_oblique_and_left_handed_inputs_keep_their_geometry(tmp_path, zooms, rot):
    data, affine = head(zooms=zooms, rot=rot)
    path = save(tmp_path, "in.nii.gz", data, affine)
    x, inverse = to_model_space(path, SMALL)
    out = inverse(x)
    ref = nib.load(path)
    assert np.array_equal(out.affine, ref.affine) and out.shape == ref.shape
    assert out.header.get_qform(coded=True)[1] == 1 and out.header.get_sform(coded=True)[1] == 1
    assert np.array_equal(out.header.get_qform(), ref.header.get_qform())
    values = np.asarray(out.dataobj)
    assert np.all(values[data <= 0] == 0) and values[data > 0].mean() > 0.2


# --- other sources ----------------------------------------------------------------------------------


def test_nifti2_and_mgh_inputs(tmp_path):
    data, affine = head()
    n2 = nib.Nifti2Image(data, affine)
    x, inverse = to_model_space(n2, SMALL)
    out = inverse(x)
    assert isinstance(out, nib.Nifti2Image) and np.array_equal(out.affine, affine)
    nib.save(nib.MGHImage(data, affine), tmp_path / "brain.mgz")
    vol = load_volume(tmp_path / "brain.mgz")
    assert vol.name == "brain" and np.allclose(vol.affine, affine, atol=1e-5)
    out = to_model_space(vol, SMALL)[1](torch.zeros(SMALL.grid))
    assert isinstance(out, nib.Nifti1Image) and np.array_equal(out.affine, vol.affine)


def test_in_memory_image_with_stale_header_gets_what_nibabel_would_save():
    data, affine = head()
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_sform(np.eye(4), code=1)
    moved = nib.Nifti1Image(img.dataobj, affine, img.header)  # affine differs from the header's sform
    vol = load_volume(moved)
    assert np.array_equal(vol.affine, affine)
    assert np.allclose(vol.header.get_best_affine(), affine)
    vol.data[0, 0, 0] = -5.0  # the Volume owns its data: the caller's array is untouched
    assert data[0, 0, 0] == 0.0


def test_volume_constructor_checks_dimensions():
    with pytest.raises(InputImageError, match="must be 3D"):
        Volume(np.zeros((10, 10)), np.eye(4))
    with pytest.raises(InputImageError, match="4x4"):
        Volume(np.zeros((10, 10, 10)), np.eye(3))


def test_absurdly_large_volume_is_a_memory_budget_error():
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(2048, 2048, 300), strides=(0, 0, 0))
    with pytest.raises(MemoryBudgetError, match="crop or downsample"):
        load_volume((big, np.eye(4)))


def test_every_error_is_a_library_error(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(gzip.compress(b"\x00" * 10))
    with pytest.raises(MRTranslateError):
        load_volume(tmp_path / "x.nii.gz")
