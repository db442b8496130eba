"""Property tests: random valid and invalid NIfTI files and arrays either load into a consistent Volume whose
round trip lands on the input grid, or raise the library's own error type; never anything else."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mrtranslate.errors import MRTranslateError
from mrtranslate.imaging.model_space import Preprocessing, to_model_space
from mrtranslate.imaging.volume import MIN_FIELD_OF_VIEW_MM, MIN_VOXELS_PER_AXIS, load_volume

TINY = Preprocessing(spacing_mm=(8.0, 8.0, 8.0), grid=(8, 10, 8))

# NIfTI datatype code -> numpy dtype (None: a code NIfTI does not define, or one numpy cannot hold here)
DATATYPES = {2: "u1", 4: "<i2", 8: "<i4", 16: "<f4", 32: "<c8", 64: "<f8", 256: "i1", 512: "<u2", 768: "<u4",
             1024: "<i8", 1280: "<u8", 1792: "<c16", 128: None, 7: None, 9999: None}
SIZES = st.sampled_from([1, 2, 5, 8, 9, 12, 16])
PIXDIMS = st.sampled_from([0.0, -2.0, 0.5, 1.0, 3.0, 6.5, 8.0, 12.0, float("nan"), float("inf")])
ODD_FLOATS = st.sampled_from([float("nan"), 0.0, 1.0, 2.5, -1.0, 1e30, float("inf")])
CORRUPTIONS = ["shape", "dtype", "pixdim", "scaling", "qform", "sform", "codes", "offset", "magic",
               "sizeof_hdr", "short", "long", "random_bytes", "nan_values"]


def plausible_header(draw) -> tuple[nib.Nifti1Header, list[int], int]:
    """A header that usually describes a small valid 3D volume (sometimes with a singleton 4th/5th axis)."""
    dims = [draw(st.sampled_from([8, 9, 12, 16])) for _ in range(3)]
    dims += [1] * draw(st.sampled_from([0, 0, 0, 1, 2]))
    code = draw(st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768]))
    zooms = [draw(st.sampled_from([6.5, 8.0, 12.0])) for _ in range(3)]
    hdr = nib.Nifti1Header()
    hdr["dim"] = [len(dims), *dims, *([1] * (7 - len(dims)))]
    hdr["datatype"] = code
    hdr["bitpix"] = 8 * np.dtype(DATATYPES[code]).itemsize
    hdr["pixdim"] = [draw(st.sampled_from([-1.0, 1.0])), *zooms, 1.0, 1.0, 1.0, 1.0]
    hdr["scl_slope"], hdr["scl_inter"] = draw(st.sampled_from([(np.nan, np.nan), (0.0, 0.0), (2.5, 10.0), (1.0, -5.0)]))
    hdr["qform_code"], hdr["sform_code"] = draw(st.sampled_from([(1, 1), (1, 2), (2, 0), (0, 1), (0, 0), (1, 0)]))
    b, c, d = draw(st.sampled_from([(0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.1, -0.2, 0.3), (0.5, 0.5, 0.5)]))
    hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"] = b, c, d
    hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = -50.0, 60.0, -40.0
    rot = np.diag(zooms) if draw(st.booleans()) else np.array([[0, -zooms[1], 0], [zooms[0], 0, 0], [0, 0, zooms[2]]])
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = (np.append(rot[k], 10.0 * k) for k in range(3))
    hdr["vox_offset"] = 352
    return hdr, dims, code


def apply_corruption(draw, hdr: nib.Nifti1Header, what: str) -> None:
    """Change one group of header fields to a value drawn from a wide, often invalid, range."""
    if what == "shape":
        dims = [draw(SIZES) for _ in range(draw(st.integers(1, 5)))]
        hdr["dim"] = [len(dims), *dims, *([1] * (7 - len(dims)))]
    elif what == "dtype":
        hdr["datatype"] = draw(st.sampled_from(sorted(DATATYPES)))
    elif what == "pixdim":
        hdr["pixdim"] = [draw(st.sampled_from([-1.0, 1.0, 0.0]))] + [draw(PIXDIMS) for _ in range(7)]
    elif what == "scaling":
        hdr["scl_slope"], hdr["scl_inter"] = draw(ODD_FLOATS), draw(ODD_FLOATS)
    elif what == "qform":
        for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
            hdr[key] = draw(st.sampled_from([0.0, 0.9, 1.5, -3.0, float("nan"), float("inf")]))
    elif what == "sform":
        for row in ("srow_x", "srow_y", "srow_z"):
            hdr[row] = draw(st.lists(st.sampled_from([0.0, 1.0, -2.0, 7.0, 0.3, float("nan")]), min_size=4, max_size=4))
    elif what == "codes":
        hdr["qform_code"], hdr["sform_code"] = draw(st.integers(-1, 6)), draw(st.integers(-1, 6))
    elif what == "offset":
        hdr["vox_offset"] = draw(st.sampled_from([0, 348, 351, 2000, -4]))
    elif what == "magic":
        hdr["magic"] = draw(st.sampled_from([b"xyz", b"ni1", b""]))
    elif what == "sizeof_hdr":
        hdr["sizeof_hdr"] = draw(st.sampled_from([0, 12, 540]))


@st.composite
def nifti_files(draw):
    """Bytes of a NIfTI-1 file: a plausible header and payload, then a few corruptions of header, data or file."""
    hdr, dims, code = plausible_header(draw)
    corruptions = draw(st.lists(st.sampled_from(CORRUPTIONS), max_size=3, unique=True))
    for what in corruptions:
        apply_corruption(draw, hdr, what)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = np.dtype(DATATYPES[code])
    values = np.clip(rng.normal(60.0, 30.0, size=dims), 0, 120)
    values[values < 40] = 0.0  # background
    if "nan_values" in corruptions and dtype.kind == "f":
        values.flat[:: 7] = np.nan
    payload = values.astype(dtype).tobytes(order="F")
    if "random_bytes" in corruptions:
        payload = rng.integers(0, 256, size=len(payload), dtype=np.uint8).tobytes()
    if "short" in corruptions:
        payload = payload[: len(payload) // 2]
    if "long" in corruptions:
        payload += bytes(17)
    raw = hdr.binaryblock + bytes(4) + payload
    container = draw(st.sampled_from(["nii", "gz", "gz", "gz-cut"]))
    if container == "nii":
        return ".nii", raw
    packed = gzip.compress(raw)
    return ".nii.gz", packed[: len(packed) * 2 // 3] if container == "gz-cut" else packed


@st.composite
def arrays_with_affines(draw):
    """In-memory (array, affine) sources: shapes, dtypes, values and affines, half plausible, half anything."""
    plausible = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if plausible:
        shape = tuple(draw(st.sampled_from([8, 9, 12, 16])) for _ in range(3)) + (1,) * draw(st.integers(0, 1))
        dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64, np.bool_]))
        zooms = np.array([draw(st.sampled_from([6.5, 8.0, 12.0])) for _ in range(3)])
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        linear = (q if draw(st.booleans()) else np.eye(3)) * zooms * draw(st.sampled_from([1.0, -1.0]))
    else:
        shape = tuple(draw(st.lists(SIZES, min_size=1, max_size=5)))
        dtype = draw(st.sampled_from([np.uint8, np.int16, np.float32, np.float64, np.bool_, np.complex64]))
        linear = (np.diag([draw(PIXDIMS) for _ in range(3)]) if draw(st.booleans())
                  else rng.normal(size=(3, 3)) * draw(st.sampled_from([0.0, 1.0, 8.0])))
    values = rng.normal(loc=draw(st.sampled_from([0.0, 50.0])), scale=40.0, size=shape)
    if draw(st.booleans()):
        values[values < 30] = 0.0
    if draw(st.integers(0, 5)) == 0 and values.size:
        values.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
    with np.errstate(invalid="ignore"):
        data = values.astype(dtype) if dtype != np.bool_ else values > 30
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = rng.normal(size=3) * 50
    return data, affine


def check_volume(vol) -> None:
    """What a returned Volume promises."""
    assert vol.data.dtype == np.float32 and vol.data.ndim == 3 and vol.data.flags.c_contiguous
    assert np.all(np.isfinite(vol.data)) and vol.data.min() < vol.data.max()
    assert vol.affine.shape == (4, 4) and np.all(np.isfinite(vol.affine))
    assert abs(np.linalg.det(vol.affine[:3, :3])) > 0
    assert min(vol.shape) >= MIN_VOXELS_PER_AXIS
    assert np.all(np.asarray(vol.shape) * np.asarray(vol.spacing) >= MIN_FIELD_OF_VIEW_MM)
    assert tuple(vol.header.get_data_shape()) == vol.shape
    assert np.allclose(vol.header.get_best_affine(), vol.affine)


def check_round_trip(vol) -> None:
    """Forward and inverse on a tiny grid: the output lands on the input grid with the input's header geometry."""
    try:
        x, inverse = to_model_space(vol, TINY)
    except MRTranslateError as exc:
        event(f"refused by to_model_space: {type(exc).__name__}")
        return
    event("round trip")
    assert x.shape == (1, 1, *TINY.grid) and x.dtype == torch.float32 and torch.isfinite(x).all()
    out = inverse(x)
    values = np.asarray(out.dataobj)
    assert out.shape == vol.shape and np.array_equal(out.affine, vol.affine)
    assert int(out.header["qform_code"]) == int(vol.header["qform_code"])
    assert int(out.header["sform_code"]) == int(vol.header["sform_code"])
    assert values.dtype == np.float32 and np.all(values >= 0)
    assert np.all(values[vol.data <= 0] == 0)


SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@SETTINGS
@given(spec=nifti_files())
def test_random_nifti_files_load_consistently_or_raise_library_errors(tmp_path, spec):
    suffix, blob = spec
    path = tmp_path / f"random{suffix}"
    path.write_bytes(blob)
    try:
        vol = load_volume(path)
    except MRTranslateError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {str(exc)[len(str(path)):][:30]}")
        return
    check_volume(vol)
    check_round_trip(vol)


@SETTINGS
@given(src=arrays_with_affines())
def test_random_arrays_load_consistently_or_raise_library_errors(src):
    try:
        vol = load_volume(src)
    except MRTranslateError as exc:
        assert "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
        return
    check_volume(vol)
    check_round_trip(vol)


def test_the_strategies_produce_valid_volumes_too(tmp_path):
    """Guard against a vacuous property: a valid file built like the strategy's output loads and round-trips."""
    hdr = nib.Nifti1Header()
    data = np.random.default_rng(1).random((9, 12, 8)).astype(np.float32)
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_zooms((8.0, 6.5, 8.0))
    hdr.set_qform(np.diag([8.0, 6.5, 8.0, 1.0]), code=1)
    hdr["vox_offset"] = 352
    path = tmp_path / "valid.nii.gz"
    path.write_bytes(gzip.compress(hdr.binaryblock + bytes(4) + data.tobytes(order="F")))
    vol = load_volume(path)
    check_volume(vol)
    assert np.array_equal(vol.data, data)
    x, inverse = to_model_space(vol, TINY)
    assert inverse(x).shape == data.shape


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
