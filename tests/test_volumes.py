"""mrtranslate.imaging: geometry and intensities of the NIfTI <-> model space round trip."""

from __future__ import annotations

import json
import logging
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mrtranslate.errors import ModelFormatError, OutputExistsError, UsageError
from mrtranslate.imaging.model_space import Preprocessing, to_model_space
from mrtranslate.imaging.volume import Volume, load_volume, save_image

from _volumes_utils import erode, make_affine, phantom, world_coords

PUBLISHED = Preprocessing()


def expected_output(data: np.ndarray, inverse) -> np.ndarray:
    """What the inverse of the model-space tensor itself must give: the input with its percentiles at 0 and 1 in its
    foreground, negative values at 0, nothing clipped above (the brightest voxels lie above 1)."""
    lo, hi = inverse.intensity_range
    return np.where(data > 0, np.maximum((data.astype(np.float64) - lo) / (hi - lo), 0), 0.0)


def reference_published(data: np.ndarray, affine: np.ndarray, grid=(144, 192, 144)) -> np.ndarray:
    """The published chain written independently: canonical RAS, foreground crop, np.pad, centre crop, percentiles."""
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    x = np.asarray(img.dataobj, dtype=np.float32)
    lo, hi = [], []
    for axis in range(3):
        hits = np.flatnonzero((x > 0).any(axis=tuple(a for a in range(3) if a != axis)))
        lo.append(hits[0])
        hi.append(hits[-1] + 1)
    x = x[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    widths = [max(g - n, 0) for g, n in zip(grid, x.shape)]
    x = np.pad(x, [(w // 2, w - w // 2) for w in widths])
    starts = [n // 2 - g // 2 for n, g in zip(x.shape, grid)]
    x = x[tuple(slice(s, s + g) for s, g in zip(starts, grid))]
    a, b = (np.float32(p) for p in np.percentile(x, [0.5, 99.5]))
    return ((x - a) / (b - a)) * np.float32(2) - np.float32(1)


def assert_same_geometry(out: nib.Nifti1Image, ref: nib.Nifti1Image) -> None:
    """Shape, affine, qform, sform and their codes, pixdim and the raw quaternion/srow fields all identical."""
    assert out.shape == ref.shape[:3]
    assert np.array_equal(out.affine, ref.affine)
    for coded in ("get_qform", "get_sform"):
        m_out, code_out = getattr(out.header, coded)(coded=True)
        m_ref, code_ref = getattr(ref.header, coded)(coded=True)
        assert int(code_out) == int(code_ref)
        assert (m_out is None and m_ref is None) or np.array_equal(m_out, m_ref)
    for field in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                  "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "xyzt_units"):
        assert np.array_equal(out.header[field], ref.header[field]), field
    assert np.array_equal(out.header["pixdim"][:4], ref.header["pixdim"][:4])


def write_nifti(tmp_path, name, data, affine, qcode=1, scode=2) -> os.PathLike:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine, code=scode)
    path = tmp_path / name
    nib.save(img, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# Preprocessing and Volume


def test_preprocessing_defaults_are_published_and_round_trip_json():
    assert PUBLISHED.grid == (144, 192, 144) and PUBLISHED.spacing_mm == (1.0, 1.0, 1.0)
    assert (PUBLISHED.lower_percentile, PUBLISHED.upper_percentile) == (0.5, 99.5)
    custom = Preprocessing(spacing_mm=(2, 2, 2.5), grid=(48, 64, 48), lower_percentile=1, upper_percentile=99)
    text = json.dumps(custom.to_dict())
    assert Preprocessing.from_dict(json.loads(text)) == custom
    whole_index = {"_class_name": "ALDMPipeline", "modalities": ["t1"], **custom.to_dict()}
    assert Preprocessing.from_dict(whole_index) == custom
    assert Preprocessing.from_dict({}) == PUBLISHED


@pytest.mark.parametrize(
    "bad",
    [{"grid": [144, 192]}, {"spacing_mm": [1, 0, 1]}, {"grid": [144, 192.5, 144]},
     {"lower_percentile": 60, "upper_percentile": 40}, {"spacing_mm": "one"}],
)
def test_preprocessing_rejects_bad_model_index(bad):
    with pytest.raises(ModelFormatError, match="model_index.json"):
        Preprocessing.from_dict(bad)
    with pytest.raises(UsageError):
        Preprocessing(**bad)


def test_volume_repr_and_derived_geometry():
    shape = (60, 70, 20)
    vol = load_volume((np.arange(np.prod(shape), dtype=np.int32).reshape(shape), make_affine(shape, (-0.9, -0.9, 3.0))),
                      name="sub-01")
    assert vol.data.dtype == np.float32 and vol.shape == shape
    assert np.allclose(vol.spacing, (0.9, 0.9, 3.0)) and vol.orientation == "LPS"
    assert repr(vol) == "Volume(name='sub-01', shape=(60, 70, 20), spacing=(0.9, 0.9, 3), orientation='LPS', dtype=float32)"
    assert load_volume(vol) is vol  # a valid Volume passes through untouched


# ---------------------------------------------------------------------------------------------------------
# Exact path: RAS (or flipped) input at the model spacing


def test_ras_1mm_round_trip_is_exact_and_on_the_input_grid(tmp_path):
    shape = (150, 190, 150)
    affine = make_affine(shape, (1.0, 1.0, 1.0))
    data = phantom(shape, affine)
    path = write_nifti(tmp_path, "ras.nii.gz", data, affine, qcode=1, scode=1)
    x, inverse = to_model_space(path)
    assert x.shape == (1, 1, 144, 192, 144) and x.dtype == torch.float32
    assert not inverse.resampled
    out = inverse(x)
    assert isinstance(out, nib.Nifti1Image) and out.get_data_dtype() == np.float32
    assert_same_geometry(out, nib.load(path))
    got = np.asarray(out.dataobj)
    np.testing.assert_allclose(got, expected_output(data, inverse), rtol=0, atol=3e-7)
    assert np.array_equal(got > 0, expected_output(data, inverse) > 0)
    saved = save_image(out, tmp_path / "out.nii.gz")
    back = nib.load(saved)
    assert_same_geometry(back, nib.load(path))
    assert np.array_equal(back.get_fdata(dtype=np.float32), got)  # unscaled float32 on disk


@pytest.mark.parametrize(
    "shape, zooms",
    [((240, 240, 155), (-1.0, -1.0, 1.0)),  # BraTS layout (LPS), foreground smaller than the grid
     ((147, 201, 139), (1.0, -1.0, -1.0)),  # odd differences to the grid on every axis
     ((139, 201, 151), (1.0, 1.0, 1.0))],
)
def test_exact_path_reproduces_published_preprocessing_bit_for_bit(shape, zooms):
    affine = make_affine(shape, zooms)
    data = phantom(shape, affine)
    if shape == (139, 201, 151):
        # foreground larger than the grid on A-P and I-S (odd excesses), smaller on R-L
        data = phantom(shape, affine, semi_axes=(60.0, 140.0, 100.0))
    x, inverse = to_model_space((data, affine))
    assert not inverse.resampled
    ref = reference_published(data, affine)
    assert torch.equal(x[0, 0], torch.from_numpy(ref))


def test_model_voxels_overlay_the_input_in_world_space():
    shape = (200, 220, 170)
    affine = make_affine(shape, (-1.0, -1.0, 1.0), centre_mm=(10.0, 20.0, -15.0))
    data = phantom(shape, affine, centre_mm=(10.0, 20.0, -15.0))
    marker = (120, 70, 95)
    data[marker] = 1000.0
    x, inverse = to_model_space((data, affine))
    j = np.unravel_index(int(torch.argmax(x)), x.shape[2:])
    assert np.allclose(inverse.grid_affine @ [*j, 1], affine @ [*marker, 1])
    img = inverse.grid_image(x)
    assert np.array_equal(img.affine, inverse.grid_affine) and img.shape == PUBLISHED.grid


def test_brain_larger_than_grid_is_cropped_with_a_warning(caplog):
    prep = Preprocessing(spacing_mm=(2.0, 2.0, 2.0), grid=(48, 64, 40))  # 96 x 128 x 80 mm
    shape = (80, 100, 80)
    affine = make_affine(shape, (2.0, 2.0, 2.0))
    data = phantom(shape, affine)  # brain about 124 x 160 x 116 mm
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        x, inverse = to_model_space((data, affine), prep, name="big")
    assert not inverse.resampled
    text = caplog.text
    assert "big: foreground" in text and "larger than the model grid" in text
    assert "mm left-right" in text and "mm posterior-anterior" in text and "mm inferior-superior" in text
    fg = data > 0
    lo = np.argwhere(fg).min(axis=0)
    n = np.argwhere(fg).max(axis=0) - lo + 1
    expected_cut = (n - np.asarray(prep.grid)) * 2.0
    for k, axis in enumerate(("left-right", "posterior-anterior", "inferior-superior")):
        assert f"{expected_cut[k]:.1f} mm {axis}" in text
    out = np.asarray(inverse(x).dataobj)
    covered = np.zeros(shape, bool)
    off = lo + n // 2 - np.asarray(prep.grid) // 2
    covered[tuple(slice(o, o + g) for o, g in zip(off, prep.grid))] = True
    assert np.all(out[fg & ~covered] == 0) and np.any(fg & ~covered)
    exp = expected_output(data, inverse)
    np.testing.assert_allclose(out[covered], exp[covered], atol=3e-7)


def test_inverse_maps_model_values_to_the_percentile_scale_in_the_foreground_only_unclipped_above():
    shape = (150, 190, 150)
    affine = make_affine(shape, (1.0, 1.0, 1.0))
    data = phantom(shape, affine)
    _, inverse = to_model_space((data, affine))
    fg = data > 0
    for v, expected in ((0.0, 0.5), (-1.0, 0.0), (1.0, 1.0), (1.4, 1.2), (2.5, 1.75), (-3.0, 0.0), (0.2, 0.6)):
        out = np.asarray(inverse(torch.full(PUBLISHED.grid, v)).dataobj)
        assert np.allclose(out[fg], expected, atol=1e-7) and np.all(out[~fg] == 0)
    for shaped in (torch.zeros(PUBLISHED.grid), np.zeros((1, *PUBLISHED.grid)), torch.zeros(1, 1, *PUBLISHED.grid)):
        assert inverse(shaped).shape == shape
    with pytest.raises(UsageError, match="expected \\(144, 192, 144\\)"):
        inverse(torch.zeros(2, 1, *PUBLISHED.grid))
    with pytest.raises(UsageError):
        inverse(np.zeros((144, 192, 143)))


# ---------------------------------------------------------------------------------------------------------
# Resampled path: oblique, anisotropic, other spacings


def resampled_round_trip(shape, zooms, rot, prep=PUBLISHED, tmp_path=None):
    affine = make_affine(shape, zooms, rot)
    data = phantom(shape, affine)
    src = (data, affine) if tmp_path is None else write_nifti(tmp_path, "in.nii.gz", data, affine, qcode=1, scode=2)
    x, inverse = to_model_space(src, prep)
    assert inverse.resampled
    return data, affine, x, inverse, src


def test_lps_oblique_anisotropic_file_comes_back_on_its_own_grid(tmp_path):
    """Acceptance: LPS, 0.9 x 0.9 x 3 mm, oblique -> every output on exactly the input grid, header and codes."""
    data, affine, x, inverse, path = resampled_round_trip(
        (190, 230, 60), (-0.9, -0.9, 3.0), (8.0, -6.0, 12.0), tmp_path=tmp_path)
    ref = nib.load(path)
    assert "".join(nib.aff2axcodes(ref.affine)) == "LPS"
    noise = torch.rand(1, 1, *PUBLISHED.grid, generator=torch.Generator().manual_seed(0))
    for i, model_out in enumerate((x, torch.zeros_like(x), noise)):
        out = inverse(model_out)
        assert_same_geometry(out, ref)
        back = nib.load(save_image(out, tmp_path / f"out{i}.{'nii.gz' if i == 0 else 'nii'}"))
        assert_same_geometry(back, ref)
    # Values: the phantom's second derivatives are <= ~0.35 intensity/mm^2 over a ~170 intensity range, so one
    # trilinear interpolation at h = 3 mm errs by <= h^2/8 * f'' / range ~ 2e-3 of the [0, 1] range; the round
    # trip interpolates twice (measured: median 1.6e-3, 99th percentile 3.2e-3, max 1.1e-2). At the brain's
    # edge voxels mix with background, hence the mask eroded by 2 voxels.
    got = np.asarray(inverse(x).dataobj)
    exp = expected_output(data, inverse)
    interior = erode(data > 0, 2)
    err = np.abs(got - exp)[interior]
    assert np.median(err) < 0.004 and np.percentile(err, 99) < 0.008 and err.max() < 0.03
    assert np.all(got[data <= 0] == 0)


def test_left_handed_oblique_input_keeps_its_geometry(tmp_path):
    data, affine, x, inverse, path = resampled_round_trip(
        (150, 180, 140), (-1.1, 1.1, 1.1), (0.0, 20.0, -5.0), tmp_path=tmp_path)
    assert np.linalg.det(affine[:3, :3]) < 0
    out = inverse(x)
    assert_same_geometry(out, nib.load(path))
    err = np.abs(np.asarray(out.dataobj) - expected_output(data, inverse))[erode(data > 0, 2)]
    # 1.1 mm -> 1 mm -> 1.1 mm (measured: median 2.7e-4, 99th percentile 1e-3, max 1e-2)
    assert np.median(err) < 0.001 and np.percentile(err, 99) < 0.003 and err.max() < 0.03


@pytest.mark.parametrize("zooms, rot, axcodes", [((-1.0, 1.0, 1.0), (0.0, 0.0, 0.0), "LAS"),  # radiological
                                                  ((1.0, 1.0, -1.0), (90.0, 0.0, 90.0), "ASL")])  # axes swapped
def test_left_handed_axis_aligned_input_takes_the_exact_path(tmp_path, zooms, rot, axcodes):
    shape = (150, 190, 150)
    affine = make_affine(shape, zooms, rot)
    assert "".join(nib.aff2axcodes(affine)) == axcodes and np.linalg.det(affine[:3, :3]) < 0
    data = phantom(shape, affine)
    path = write_nifti(tmp_path, "las.nii", data, affine, qcode=2, scode=0)
    x, inverse = to_model_space(path)
    assert not inverse.resampled
    out = inverse(x)
    assert_same_geometry(out, nib.load(path))
    np.testing.assert_allclose(np.asarray(out.dataobj), expected_output(data, inverse), atol=3e-7)


def test_resampled_grid_is_centred_on_the_foreground_in_world_space():
    shape, zooms, rot = (100, 120, 40), (-1.8, -1.6, 4.0), (15.0, 10.0, -20.0)
    affine = make_affine(shape, zooms, rot, centre_mm=(30.0, -10.0, 12.0))
    blob_centre = np.array([33.0, -8.0, 10.0])
    w = world_coords(shape, affine)
    data = (100.0 * np.exp(-(((w - blob_centre) / 12.0) ** 2).sum(-1))).astype(np.float32)
    data[data < 1.0] = 0.0
    x, inverse = to_model_space((data, affine), Preprocessing(grid=(64, 64, 64)))
    assert inverse.resampled
    vals = (x[0, 0].numpy().astype(np.float64) + 1) / 2
    vals[vals < 0.05] = 0
    idx = np.indices(vals.shape).reshape(3, -1)
    centroid = (idx * vals.reshape(-1)).sum(axis=1) / vals.sum()
    world = inverse.grid_affine[:3, :3] @ centroid + inverse.grid_affine[:3, 3]
    assert np.linalg.norm(world - blob_centre) < 0.3  # mm; a swapped axis or flipped sign is off by mm to cm
    assert np.allclose(inverse.grid_affine[:3, 3] + inverse.grid_affine[:3, :3] @ ((np.array([64, 64, 64]) - 1) / 2),
                       blob_centre, atol=0.6)


def test_coarser_model_spacing_antialiases_instead_of_aliasing():
    shape = (121, 121, 121)  # 0.5 mm; odd, so that the 2 mm samples fall on voxel centres of one parity
    affine = make_affine(shape, (0.5, 0.5, 0.5))
    parity = np.indices(shape).sum(axis=0) % 2
    data = np.where(parity == 0, 150.0, 50.0).astype(np.float32)  # a checkerboard at the Nyquist frequency
    x, inverse = to_model_space((data, affine), Preprocessing(spacing_mm=(2.0, 2.0, 2.0), grid=(40, 40, 40)))
    assert inverse.resampled
    lo, hi = inverse.intensity_range
    inner = x[0, 0, 8:-8, 8:-8, 8:-8].numpy()
    intensity = (inner + 1) / 2 * (hi - lo) + lo
    # Sampling every 4th 0.5 mm voxel without smoothing would give all 150s or all 50s (+-50 around 100).
    assert abs(float(intensity.mean()) - 100.0) < 2.0 and float(intensity.std()) < 2.0


def test_thick_slices_warn_and_round_trip_within_tolerance(caplog):
    shape = (150, 180, 24)
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        data, affine, x, inverse, _ = resampled_round_trip(shape, (1.0, 1.0, 7.0), (0.0, 0.0, 0.0))
    assert "voxels are 7 mm along array axis 2" in caplog.text
    out = inverse(x)
    assert out.shape == shape and np.array_equal(out.affine, affine)
    err = np.abs(np.asarray(out.dataobj) - expected_output(data, inverse))[erode(data > 0, 1)]
    # Along a 7 mm axis the inverse smooths (sigma 3 model voxels) before sampling, which blurs the 7 mm
    # samples of the upsampled profile: a wider tolerance (measured: median 7.9e-3, 99th percentile 1.8e-2).
    assert np.median(err) < 0.015 and np.percentile(err, 99) < 0.03


def test_ras_2mm_input_resampled_to_1mm_round_trips():
    shape = (80, 96, 76)
    data, affine, x, inverse, _ = resampled_round_trip(shape, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    assert np.array_equal(inverse(x).affine, affine)
    out = np.asarray(inverse(x).dataobj)
    err = np.abs(out - expected_output(data, inverse))[erode(data > 0, 2)]
    # 2 mm -> 1 mm -> 2 mm (measured: median 8.7e-4, 99th percentile 2.8e-3, max 1.1e-2)
    assert np.median(err) < 0.002 and np.percentile(err, 99) < 0.006 and err.max() < 0.03


def test_resampled_brain_larger_than_grid_warns_and_zeroes_the_cut(caplog):
    prep = Preprocessing(grid=(96, 128, 96))
    shape = (70, 90, 70)
    affine = make_affine(shape, (2.0, 2.0, 2.0), (0.0, 0.0, 10.0))
    data = phantom(shape, affine)
    with caplog.at_level(logging.WARNING, logger="mrtranslate.volumes"):
        x, inverse = to_model_space((data, affine), prep)
    assert "larger than the model grid" in caplog.text
    out = np.asarray(inverse(x).dataobj)
    model_idx = (np.linalg.inv(inverse.grid_affine) @ np.vstack([world_coords(shape, affine).reshape(-1, 3).T,
                                                                  np.ones(data.size)]))[:3].T
    outside = np.any((model_idx < -0.01) | (model_idx > np.asarray(prep.grid) - 0.99), axis=1).reshape(shape)
    fg = data > 0
    assert np.any(fg & outside) and np.all(out[fg & outside] == 0)
    kept = fg & ~outside & erode(fg, 2)
    err = np.abs(out - expected_output(data, inverse))[kept]
    assert np.median(err) < 0.002 and np.percentile(err, 99) < 0.006


# ---------------------------------------------------------------------------------------------------------
# save_image


def test_save_image_is_atomic_and_refuses_to_replace(tmp_path):
    shape = (20, 20, 20)
    img = nib.Nifti1Image(np.ones(shape, np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    target = tmp_path / "deep" / "er" / "out.nii.gz"
    assert save_image(img, target) == target and target.exists()
    with pytest.raises(OutputExistsError, match="overwrite"):
        save_image(img, target)
    img2 = nib.Nifti1Image(np.full(shape, 2, np.float32), img.affine)
    save_image(img2, target, overwrite=True)
    assert np.all(nib.load(target).get_fdata() == 2)
    with pytest.raises(OutputExistsError, match="would replace the input"):
        save_image(img, target, overwrite=True, inputs=[target])
    with pytest.raises(UsageError, match=r"\.nii or \.nii\.gz"):
        save_image(img, tmp_path / "out.png")
    vol = Volume(np.ones(shape, np.float32), img.affine, name="v")
    save_image(vol, tmp_path / "vol.nii")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "vol.nii"]
    assert [p.name for p in target.parent.iterdir()] == ["out.nii.gz"]  # no temporary files left


def test_gaussian_smoothing_matches_scipy():
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    from mrtranslate.imaging.resample import gaussian_smooth

    x = np.random.default_rng(3).random((30, 40, 20)).astype(np.float32)
    got = gaussian_smooth(x, np.array([0.5, 2.0, 0.05]))  # radii 2 and 6 voxels, as scipy truncates at 3 sigma
    ref = scipy_ndimage.gaussian_filter(x.astype(np.float64), [0.5, 2.0, 0.0], mode="nearest", truncate=3.0)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_inverse_to_thick_slices_averages_across_the_slice_instead_of_aliasing():
    shape = (150, 180, 24)  # 1 x 1 x 7 mm
    affine = make_affine(shape, (1.0, 1.0, 7.0))
    data = phantom(shape, affine)
    _, inverse = to_model_space((data, affine))
    stripes = np.where(np.arange(PUBLISHED.grid[2]) % 2 == 0, 1.0, -1.0).astype(np.float32)
    model_out = np.broadcast_to(stripes, PUBLISHED.grid)  # +-1 alternating every 1 mm along I-S
    out = np.asarray(inverse(model_out).dataobj)
    # A 7 mm slice integrates ~7 of the 1 mm stripes: ~0.5. Point sampling would give 0s and 1s.
    assert np.abs(out[erode(data > 0, 1)] - 0.5).max() < 0.1
