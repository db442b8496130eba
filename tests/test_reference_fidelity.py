"""The published ALDM, as computed by the authors' own code (../shared/reference/aldm-tiny), is reproduced
by converting their checkpoints with our converter and loading the folder with ALDMPipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mrtranslate.cli import main as cli_main
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.schedulers import DDIMScheduler


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def converted(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ALDMPipeline:
    out = tmp_path_factory.mktemp("conv") / "aldm-tiny"
    code = cli_main(
        [
            "convert",
            "--vqgan", str(reference_dir / "official_vqgan_stage2.ckpt"),
            "--ldm", str(reference_dir / "official_ldm.ckpt"),
            "--config", str(reference_dir / "official.yaml"),
            "--out", str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return ALDMPipeline.from_pretrained(out)


@pytest.fixture(scope="module")
def vec(reference_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(reference_dir / "vectors.safetensors"))


def test_first_stage(converted: ALDMPipeline, vec: dict) -> None:
    vq = converted.vqgan
    with torch.no_grad():
        z_e = vq.encode_continuous(vec["input"])
        z_q, codes = vq.quantize(z_e)
        assert rel(z_e, vec["z_e"]) < 1e-4
        assert torch.equal(codes, vec["codes"])
        assert rel(z_q, vec["z_q"]) < 1e-4
        assert rel(converted.encode(vec["input"]), vec["z_q"]) < 1e-4
        assert rel(converted.decode(vec["z_q"]), vec["recon"]) < 1e-4


def test_ms_spade_each_class_and_batched(converted: ALDMPipeline, vec: dict) -> None:
    for c in range(4):
        assert rel(converted.target_like(vec["z_q"], [c]), vec[f"spade_{c}"]) < 1e-4
    mixed = converted.target_like(vec["z_q"], [3, 0, 2, 1, 3])
    for i, c in enumerate([3, 0, 2, 1, 3]):
        assert rel(mixed[i : i + 1], vec[f"spade_{c}"]) < 1e-4


def test_unet_probe_uses_ema_weights(converted: ALDMPipeline, vec: dict) -> None:
    t = vec["targets"]
    z = vec["z_q"].expand(3, -1, -1, -1, -1)
    x = torch.cat([vec["x_T"], z, converted.target_like(vec["z_q"], t)], dim=1)
    with torch.no_grad():
        out = converted.unet(x, vec["unet_probe_t"], t)
    assert rel(out, vec["unet_probe_out"]) < 1e-4


def test_ddim_coefficients_equal(vec: dict) -> None:
    c = DDIMScheduler().coefficients(5, 1.0)
    assert torch.equal(c["timesteps"], vec["ddim_timesteps"])
    assert torch.equal(c["alphas"], vec["ddim_alphas"])
    assert torch.equal(c["alphas_prev"], vec["ddim_alphas_prev"])
    assert torch.equal(c["sigmas"], vec["ddim_sigmas_eta1"])


def test_ddim_samples_and_translation(converted: ALDMPipeline, vec: dict) -> None:
    lat = converted.sample(vec["z_q"], vec["targets"], steps=5, eta=0.0, x_T=vec["x_T"], progress=False)
    assert rel(lat, vec["ddim_samples"]) < 1e-4
    assert rel(converted.decode(lat), vec["translated"]) < 1e-4


def test_raw_weights_differ_from_ema(reference_dir: Path, tmp_path: Path, vec: dict) -> None:
    """--weights raw takes model.diffusion_model.*; in the reference they differ from the EMA copy."""
    out = tmp_path / "raw"
    assert cli_main(["convert", "--ldm", str(reference_dir / "official_ldm.ckpt"), "--config",
                     str(reference_dir / "official.yaml"), "--weights", "raw", "--out", str(out), "-q"]) == 0
    raw = ALDMPipeline.from_pretrained(out)
    ema = torch.load(reference_dir / "official_ldm.ckpt", weights_only=True)["state_dict"]
    w = ema["model.diffusion_model.input_blocks.0.0.weight"]
    assert torch.equal(raw.unet.input_blocks[0][0].weight, w)
    # the LDM's own first stage is used when --vqgan is omitted, and it equals the stage-2 file
    assert rel(raw.encode(vec["input"]), vec["z_q"]) < 1e-4
