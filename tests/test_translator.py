"""Translator: outputs on the input's own grid, batched targets, aliases, seeds, source inference, Hub models."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from _hubserver import hub_env, hub_server, set_hub_env  # noqa: F401
from _translate_utils import (  # noqa: F401
    assert_same_geometry,
    grid_affine,
    grid_model,
    head_image,
    small_model,
    write_head,
)

from mrtranslate import Translator, hub
from mrtranslate.errors import InputImageError, ModalityError, ModelNotFoundError, UsageError


class SampleSpy:
    """Wraps ``pipeline.sample`` of one pipeline: records the target ids of every call, then samples for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tr: Translator) -> None:
        self.calls: list[list[int]] = []
        self._original = tr.pipeline.sample
        monkeypatch.setattr(tr.pipeline, "sample", self)

    def __call__(self, z_q, targets, *args, **kwargs):
        self.calls.append([int(t) for t in targets])
        return self._original(z_q, targets, *args, **kwargs)


def _arr(img: nib.Nifti1Image) -> np.ndarray:
    return np.asarray(img.dataobj)


# -- geometry: every output on exactly the input's grid --------------------------------------------
GEOMETRIES = {
    # LPS, 0.9 x 0.9 x 3 mm, oblique (rotated about all three axes); qform and sform with different codes
    "lps-aniso-oblique": ((80, 100, 24), (-0.9, -0.9, 3.0), (10.0, -7.0, 15.0), 1, 4),
    # RAS 1 mm, qform only (sform code 0)
    "ras-1mm": ((60, 84, 56), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 1, 0),
    # LAS at exactly the model spacing: the exact (integer crop/pad) path; sform only
    "las-2mm-exact": ((34, 46, 30), (-2.0, 2.0, 2.0), (0.0, 0.0, 0.0), 0, 2),
}


@pytest.mark.parametrize("case", list(GEOMETRIES))
def test_every_output_is_on_the_inputs_own_grid(case: str, grid_model: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shape, zooms, rot, qcode, scode = GEOMETRIES[case]
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(head_image(shape, grid_affine(shape, zooms, rot), qform_code=qcode, sform_code=scode), str(path))
    ref = nib.load(str(path))
    assert "".join(nib.aff2axcodes(ref.affine)) == ("LPS" if zooms[0] < 0 and zooms[1] < 0 else
                                                    "LAS" if zooms[0] < 0 else "RAS")

    tr = Translator.from_pretrained(grid_model, steps=1, progress=False)
    spy = SampleSpy(monkeypatch, tr)
    bound = tr(path)
    assert bound.source == "t1"  # from the BIDS suffix _T1w
    out = bound.to("T2w", "FLAIR")

    assert spy.calls == [[2, 3]]  # one batched pass for both targets (class ids of t2, flair)
    assert list(out) == ["t2", "flair"]
    foreground = _arr(ref) > 0
    for name, img in out.items():
        assert isinstance(img, nib.Nifti1Image)
        assert_same_geometry(img, ref)
        data = _arr(img)
        assert np.isfinite(data).all() and data.min() >= 0.0
        assert not data[~foreground].any()  # 0 outside the source's foreground
        assert data[foreground].std() > 0  # something was translated
        assert f"t1->{name}" in img.header["descrip"].tobytes().decode()
        # what is written to disk reloads on the same grid
        written = tmp_path / f"out_{name}.nii.gz"
        img.to_filename(str(written))
        again = nib.load(str(written))
        assert_same_geometry(again, ref)
        assert np.array_equal(np.asarray(again.dataobj), data)
    assert not np.array_equal(_arr(out["t2"]), _arr(out["flair"]))
    assert np.array_equal(_arr(ref), _arr(nib.load(str(path))))  # the input file is untouched


def test_in_memory_images_and_arrays_come_back_on_their_grid(small_model: Path) -> None:
    shape = (22, 28, 20)
    aff = grid_affine(shape, (-3.5, -3.5, 3.5), (0.0, 0.0, 5.0))
    img = head_image(shape, aff, qform_code=2, sform_code=2)
    tr = Translator.from_pretrained(small_model, steps=1, progress=False)
    from_image = tr(img, source="t1").to("t2")
    assert_same_geometry(from_image, img)
    from_array = tr((np.asarray(img.dataobj), aff), source="t1").to("t2")
    assert from_array.shape == shape and np.array_equal(from_array.affine, aff)
    assert np.array_equal(_arr(from_array), _arr(from_image))  # same data and seed: same result


# -- targets: aliases, one vs several, batching ----------------------------------------------------
def test_aliases_several_targets_one_batched_pass(small_model: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_head(tmp_path / "scan.nii.gz")
    tr = Translator.from_pretrained(small_model, steps=1, progress=False)
    spy = SampleSpy(monkeypatch, tr)
    bound = tr(path, source="T1W")  # source alias, case-insensitive
    assert bound.source == "t1"

    out = bound.to("t2w", "T2F", "t1C")  # BraTS 2023 aliases in mixed case
    assert isinstance(out, dict) and list(out) == ["t2", "flair", "t1ce"]
    assert spy.calls == [[2, 3, 1]]

    one = bound.to("T2w", "t2")  # duplicates collapse to one target: one image, not a dict
    assert isinstance(one, nib.Nifti1Image)
    assert spy.calls[-1] == [2]


@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (("t3",), ModalityError, "unknown modality 't3'"),
        (("t2", "pd"), ModalityError, "unknown modality 'pd'"),
        (("T1w",), UsageError, "'t1' is the source"),
        (("flair", "t1n"), UsageError, "'t1' is the source"),
        ((), UsageError, "no target given"),
    ],
)
def test_bad_targets_are_refused_before_sampling(targets, error, match, small_model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    spy = SampleSpy(monkeypatch, tr)
    bound = tr(write_head(tmp_path / "sub-01_T1w.nii.gz"))
    with pytest.raises(error, match=match):
        bound.to(*targets)
    assert spy.calls == []


def test_to_without_a_source_image_says_how_to_bind_one(small_model: Path) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    with pytest.raises(UsageError, match="no source image"):
        tr.to("t2")
    with pytest.raises(UsageError, match="source= given without an image"):
        Translator(model=small_model, source="t1")


# -- seeds ---------------------------------------------------------------------------------------------
def test_same_seed_same_output_other_seed_differs(small_model: Path, tmp_path: Path) -> None:
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    tr = Translator.from_pretrained(small_model, steps=2, eta=1.0, progress=False)
    bound = tr(path)
    first = _arr(bound.to("t2"))
    assert np.array_equal(first, _arr(bound.to("t2", seed=0)))  # seed 0 is the default
    assert np.array_equal(first, _arr(tr(path).to("t2")))  # a fresh binding, same seed
    other = _arr(bound.to("t2", seed=1))
    assert not np.array_equal(first, other)
    seeded = Translator.from_pretrained(small_model, steps=2, eta=1.0, seed=1, progress=False)
    assert np.array_equal(other, _arr(seeded(path).to("t2")))  # seed= at load time is the default of .to()


def test_compiled_unet_gives_the_uncompiled_output(small_model: Path, tmp_path: Path) -> None:
    """compile=True (the CLI's --compile) runs the UNet through torch.compile: same result in float32."""
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    plain = Translator.from_pretrained(small_model, steps=2, eta=1.0, progress=False)
    compiled = Translator.from_pretrained(small_model, steps=2, eta=1.0, progress=False, compile=True)
    assert compiled.pipeline.runtime.compile and not plain.pipeline.runtime.compile
    assert type(compiled.pipeline.unet).__name__ == "OptimizedModule"
    a, b = plain(path).to("t2", "flair"), compiled(path).to("t2", "flair")
    assert set(a) == set(b) == {"t2", "flair"}
    for target in a:
        ref = _arr(a[target])
        np.testing.assert_allclose(_arr(b[target]), ref, rtol=0, atol=1e-4 * float(np.abs(ref).max()))


def test_a_targets_output_does_not_depend_on_its_batch_mates(small_model: Path, tmp_path: Path) -> None:
    """Resuming a batch with --skip-existing must reproduce what the full run would have written."""
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    bound = Translator.from_pretrained(small_model, steps=2, eta=1.0, progress=False)(path)
    both = bound.to("t2", "flair")
    np.testing.assert_allclose(_arr(bound.to("flair")), _arr(both["flair"]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_arr(bound.to("t2")), _arr(both["t2"]), rtol=0, atol=1e-5)
    assert not np.allclose(_arr(both["t2"]), _arr(both["flair"]))


def test_a_gated_model_gets_the_bound_source_and_samples_come_from_the_model(small_model: Path,
                                                                             tmp_path: Path) -> None:
    """The source gate of (t1, t2) at 1: T1 -> T2 is the T1's own latent decoded; T2 -> T1 is MS-SPADE's."""
    from mrtranslate.pipeline import ALDMPipeline

    pipe = ALDMPipeline.from_pretrained(small_model)
    pipe.vqgan.add_source_gate()
    with torch.no_grad():
        pipe.vqgan.spade.source_gate[0, 2] = 1.0
    pipe.config.default_samples = 2
    gated = pipe.save_pretrained(tmp_path / "gated")
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    tr = Translator(path, model=gated, progress=False)
    x = tr._tensor
    expected = tr._inverse(pipe.decode(pipe.encode(x))[0, 0])
    np.testing.assert_allclose(_arr(tr.to_spade_only("t2")), _arr(expected), rtol=0, atol=1e-4)
    plain = Translator(path, model=small_model, progress=False)
    np.testing.assert_allclose(_arr(tr.to_spade_only("flair")), _arr(plain.to_spade_only("flair")), rtol=0, atol=1e-4)
    as_t2 = Translator(path, model=gated, source="t2", progress=False)  # the same image declared a T2
    plain_t2 = Translator(path, model=small_model, source="t2", progress=False)
    np.testing.assert_allclose(_arr(as_t2.to_spade_only("t1")), _arr(plain_t2.to_spade_only("t1")), rtol=0, atol=1e-4)
    assert tr.run_record(["t2"])["samples"] == 2  # the folder's default_samples
    assert not np.allclose(_arr(tr.to("t2")), _arr(tr.to("t2", samples=1)))


def test_the_models_pair_strength_applies_to_its_pair_unless_a_strength_is_given(small_model: Path,
                                                                                 tmp_path: Path) -> None:
    from mrtranslate.pipeline import ALDMPipeline

    pipe = ALDMPipeline.from_pretrained(small_model)
    pipe.config.default_steps, pipe.config.default_strength = 4, 0.6  # 0.6 runs 3 of the 4 steps, 0.3 runs 2
    pipe.config.pair_strength = {"t1->flair": 0.3}
    folder = pipe.save_pretrained(tmp_path / "pairs")
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    tr = Translator(path, model=folder, progress=False)
    both = tr.to("t2", "flair")
    np.testing.assert_allclose(_arr(both["flair"]), _arr(tr.to("flair", strength=0.3)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(_arr(both["t2"]), _arr(tr.to("t2", strength=0.6)), rtol=0, atol=1e-5)
    assert not np.allclose(_arr(both["flair"]), _arr(tr.to("flair", strength=0.6)), rtol=0, atol=1e-4)
    assert tr.run_record(["t2", "flair"])["strength"] == [0.6, 0.3]
    assert tr.run_record(["t2"])["strength"] == 0.6
    fixed = Translator(path, model=folder, strength=0.6, progress=False)  # a translator's own strength: every pair
    np.testing.assert_allclose(_arr(fixed.to("flair")), _arr(tr.to("flair", strength=0.6)), rtol=0, atol=1e-5)
    assert fixed.run_record(["t2", "flair"])["strength"] == 0.6


# -- source inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("sub-01_T1w.nii.gz", "t1"),
        ("sub-01_ses-1_run-2_T1w.nii", "t1"),
        ("sub-01_ce-gadolinium_T1w.nii.gz", "t1ce"),
        ("sub-01_T2w.nii.gz", "t2"),
        ("sub-01_acq-3d_FLAIR.nii.gz", "flair"),
        ("BraTS2021_00000_t1.nii.gz", "t1"),
        ("BraTS2021_00000_t1ce.nii.gz", "t1ce"),
        ("BraTS2021_00000_t2.nii.gz", "t2"),
        ("BraTS2021_00000_flair.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("sub-01_acq-t2_T1w.nii.gz", "t1"),
    ],
)
def test_source_is_inferred_from_bids_and_brats_names(name: str, expected: str, small_model: Path,
                                                      tmp_path: Path) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    assert tr(write_head(tmp_path / name)).source == expected


@pytest.mark.parametrize("name", ["scan.nii.gz", "sub-01_T1w_T2w.nii.gz"])
def test_source_that_cannot_be_inferred_asks_for_it(name: str, small_model: Path, tmp_path: Path) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    path = write_head(tmp_path / name)
    with pytest.raises(ModalityError, match=r"cannot tell the modality.*source="):
        tr(path)
    assert tr(path, source="t2").source == "t2"


def test_declared_source_that_contradicts_the_name_warns_and_wins(small_model: Path, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    with caplog.at_level(logging.WARNING, logger="mrtranslate"):
        bound = tr(write_head(tmp_path / "sub-01_T2w.nii.gz"), source="flair")
    assert bound.source == "flair"
    assert any("declared as flair" in r.getMessage() and "says t2" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mrtranslate"):
        tr(write_head(tmp_path / "sub-02_T2w.nii.gz"), source="T2w")  # agreeing alias: no warning
    assert not [r for r in caplog.records if "declared as" in r.getMessage()]


def test_unknown_source_name_and_unusable_inputs(small_model: Path, tmp_path: Path) -> None:
    tr = Translator.from_pretrained(small_model, progress=False)
    path = write_head(tmp_path / "scan.nii.gz")
    with pytest.raises(ModalityError, match="unknown modality 'pd'"):
        tr(path, source="pd")
    with pytest.raises(InputImageError, match="does not exist"):
        tr(tmp_path / "missing_T1w.nii.gz")
    text = tmp_path / "notes_T1w.nii.gz"
    text.write_text("not an image\n")
    with pytest.raises(InputImageError, match="not an image nibabel can read"):
        tr(text)


# -- models: bundled default, unknown, Hub -----------------------------------------------------------------
def test_bare_form_uses_the_bundled_default_or_says_to_pass_a_model(tmp_path: Path) -> None:
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")
    if (hub.BUNDLED_DIR / hub.DEFAULT_MODEL / "model_index.json").is_file():
        out = Translator(path, progress=False).to("t2", steps=1)
        assert_same_geometry(out, nib.load(str(path)))
    else:
        with pytest.raises(ModelNotFoundError, match=r"bundled default model.*not installed.*model="):
            Translator(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_T1w.nii.gz"]


def test_missing_bundled_default_is_an_error_never_random_weights(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(ModelNotFoundError, match="pass model="):  # Python: the keyword
        Translator(write_head(tmp_path / "sub-01_T1w.nii.gz"))
    with pytest.raises(ModelNotFoundError, match="pass model="):
        Translator.from_pretrained()


@pytest.mark.parametrize("model", ["/no/such/model", "not a model", "org/name@"])
def test_unknown_models_are_refused(model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="org/name"):
        Translator.from_pretrained(model)


def test_hub_model_downloads_once_then_loads_offline(hub_env, small_model: Path, tmp_path: Path,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    commit = hub_env.add_repo("org/tiny-aldm", small_model)
    path = write_head(tmp_path / "sub-01_T1w.nii.gz")

    online = Translator.from_pretrained("org/tiny-aldm", steps=1, progress=False)
    resolved = online.resolved
    assert (resolved.source, resolved.repo_id, resolved.revision) == ("hub", "org/tiny-aldm", commit)
    assert online.resolved.path.is_relative_to(tmp_path / "hf-home")
    gets = hub_env.paths_requested("GET")
    downloaded = {p.split("/resolve/", 1)[1].split("/", 1)[1] for p in gets if "/resolve/" in p}
    assert {"model_index.json", "vqgan/model.safetensors", "unet/model.safetensors"} <= downloaded
    first = online(path).to("t2")
    record = online(path).run_record(["t2"])
    assert (record["model"], record["model_source"], record["model_revision"]) == ("org/tiny-aldm", "hub", commit)

    n_requests = len(hub_env.requests)
    set_hub_env(monkeypatch, offline=True)
    offline = Translator.from_pretrained("org/tiny-aldm", steps=1, progress=False)
    assert len(hub_env.requests) == n_requests  # HF_HUB_OFFLINE=1: the server was not asked
    assert offline.resolved.path == online.resolved.path
    assert np.array_equal(_arr(offline(path).to("t2")), _arr(first))

    with pytest.raises(ModelNotFoundError, match="not in the local cache"):
        Translator.from_pretrained("org/never-downloaded")
    assert len(hub_env.requests) == n_requests
