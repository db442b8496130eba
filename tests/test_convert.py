"""Converter: key mapping errors, pickle safety, first-stage-only conversions, CLI messages."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from mrtranslate.cli import main as cli_main
from mrtranslate.convert import convert_checkpoints
from mrtranslate.errors import ModelFormatError, UnsafeCheckpointError
from mrtranslate.pipeline import ALDMPipeline


def _load(reference_dir: Path, name: str) -> dict:
    return torch.load(reference_dir / name, weights_only=True)


def _save(ck: dict, path: Path) -> Path:
    torch.save(ck, path)
    return path


def test_vqgan_only_gives_first_stage_folder(reference_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "fs"
    code = cli_main(["convert", "--vqgan", str(reference_dir / "official_vqgan_stage2.ckpt"),
                     "--config", str(reference_dir / "official.yaml"), "--out", str(out), "-q"])
    assert code == 0
    pipe = ALDMPipeline.from_pretrained(out)
    assert pipe.unet is None and pipe.config.components == ("vqgan",)
    assert not (out / "unet").exists()


def test_without_yaml_groups_default_needs_config(reference_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["convert", "--vqgan", str(reference_dir / "official_vqgan_stage2.ckpt"), "--out", "/nonexistent/x"])
    err = capsys.readouterr().err
    assert code == 1 and "--config" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_and_missing_keys_are_named(reference_dir: Path, tmp_path: Path) -> None:
    ck = _load(reference_dir, "official_ldm.ckpt")
    ck["state_dict"]["model.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ModelFormatError, match="something_new"):
        convert_checkpoints(ldm=_save(ck, tmp_path / "a.ckpt"), config=reference_dir / "official.yaml")
    ck = _load(reference_dir, "official_vqgan_stage2.ckpt")
    del ck["state_dict"]["decoder.up.0.block.1.conv2.bias"]
    with pytest.raises(ModelFormatError, match=r"decoder\.up\.0\.block\.1\.conv2\.bias"):
        convert_checkpoints(vqgan=_save(ck, tmp_path / "b.ckpt"), config=reference_dir / "official.yaml")


def test_missing_ema_suggests_raw(reference_dir: Path, tmp_path: Path) -> None:
    ck = _load(reference_dir, "official_ldm.ckpt")
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("model_ema.")}
    path = _save(ck, tmp_path / "noema.ckpt")
    with pytest.raises(ModelFormatError, match="--weights raw"):
        convert_checkpoints(ldm=path, config=reference_dir / "official.yaml")
    pipe = convert_checkpoints(ldm=path, config=reference_dir / "official.yaml", weights="raw")
    assert pipe.unet is not None


def test_mismatched_first_stage_is_refused(reference_dir: Path, tmp_path: Path) -> None:
    ck = _load(reference_dir, "official_vqgan_stage2.ckpt")
    ck["state_dict"]["encoder.conv_in.bias"] = ck["state_dict"]["encoder.conv_in.bias"] + 1
    with pytest.raises(ModelFormatError, match="different first stage"):
        convert_checkpoints(vqgan=_save(ck, tmp_path / "v.ckpt"), ldm=reference_dir / "official_ldm.ckpt",
                            config=reference_dir / "official.yaml")


class _Opaque:  # an object only full unpickling can rebuild
    def __init__(self) -> None:
        self.x = 1


def test_pickle_objects_refused_unless_trusted(reference_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = _load(reference_dir, "official_vqgan_stage2.ckpt")
    ck["hyper_parameters"] = _Opaque()
    ck["callbacks"] = collections.OrderedDict(a=_Opaque())
    path = _save(ck, tmp_path / "pickled.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="--trust-pickle"):
        convert_checkpoints(vqgan=path, config=reference_dir / "official.yaml")
    out = tmp_path / "o"
    code = cli_main(["convert", "--vqgan", str(path), "--config", str(reference_dir / "official.yaml"), "--out", str(out)])
    assert code == 1 and "--trust-pickle" in capsys.readouterr().err and not out.exists()
    code = cli_main(["convert", "--vqgan", str(path), "--config", str(reference_dir / "official.yaml"),
                     "--out", str(out), "--trust-pickle", "-q"])
    assert code == 0 and (out / "vqgan" / "model.safetensors").exists()


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelFormatError, match="not a readable"):
        convert_checkpoints(vqgan=bad)
