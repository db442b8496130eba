"""Training plans its memory before the first step: a step that will not fit is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("scipy")  # the phantom simulator

from _tiny import save_tiny  # noqa: E402
from _training_utils import (  # noqa: E402
    PHANTOM_PREP,
    PHANTOM_SPACING,
    autoencoder_config,
    diffusion_config,
    spade_config,
    write_json,
)

from mrtranslate.cli import main  # noqa: E402
from mrtranslate.errors import MemoryBudgetError  # noqa: E402
from mrtranslate.phantom.simulator import write_dataset  # noqa: E402
from mrtranslate.training.config import AutoencoderConfig, DiffusionConfig  # noqa: E402
from mrtranslate.training.memory import autoencoder_memory, diffusion_memory, spade_memory  # noqa: E402
from mrtranslate.training.trainer import train  # noqa: E402


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, n=2, seed=0, spacing=PHANTOM_SPACING, progress=False)
    return root


def test_a_step_over_max_memory_is_refused_in_one_line_before_training(phantoms: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    config = write_json(tmp_path / "ae.json", autoencoder_config())
    code = main(["train", "autoencoder", "--data", str(phantoms), "--run", str(run), "--config", str(config),
                 "--steps", "1", "--max-memory", "1MB", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert "needs about" in err and "only 1 MiB is available (--max-memory)" in err
    assert "lower batch_size or crop" in err and "recipes/phantom-demo/" in err
    assert not (run / "checkpoint").exists() and not (run / "metrics.csv").exists()
    # the same run with room to spare trains
    assert main(["train", "autoencoder", "--data", str(phantoms), "--run", str(run), "--config", str(config),
                 "--steps", "1", "--max-memory", "4GB", "--quiet"]) == 0
    assert (run / "checkpoint").exists()


def test_spade_and_diffusion_are_planned_too(phantoms: Path, tmp_path: Path) -> None:
    model = save_tiny(tmp_path / "model", grid=tuple(PHANTOM_PREP["grid"]), spacing=(PHANTOM_SPACING,) * 3)
    with pytest.raises(MemoryBudgetError, match="one spade training step.*lower batch_size in the config"):
        train("spade", tmp_path / "s", phantoms, spade_config(), first_stage=str(model), max_memory="64KB",
              progress=False)
    with pytest.raises(MemoryBudgetError, match="one diffusion training step.*lower batch_size or crop"):
        train("diffusion", tmp_path / "d", phantoms, diffusion_config(), first_stage=str(model), max_memory="64KB",
              progress=False)
    assert not (tmp_path / "d" / "checkpoint").exists()


def test_the_published_configs_are_estimated_at_their_real_size() -> None:
    # the published autoencoder (batch 4 of 96^3 crops) saves about 23 GB of activations for its backward
    # pass: measured by the kernel killing a 16 GB machine's run; the estimate must be of that order
    ae = AutoencoderConfig()
    est = autoencoder_memory(ae.model, ae.batch_size, ae.crop, None)
    assert 18 << 30 < est.peak < 32 << 30
    half = autoencoder_memory(ae.model, ae.batch_size // 2, ae.crop, None)
    assert 0.45 < half.activations / est.activations < 0.55  # activations scale with the batch
    dif = DiffusionConfig()
    latent = [g // 4 for g in (96, 128, 96)]
    d = diffusion_memory(dif.model, ae.model, dif.batch_size, latent)
    assert d.weights > 5 * 4 * 30_000_000  # UNet weights, gradients, two Adam moments and the EMA
    assert d.peak < est.peak


def test_the_spade_image_term_is_planned_by_its_crop() -> None:
    vq = AutoencoderConfig().model
    latent = [24, 32, 24]
    plain = spade_memory(vq, 4, latent)
    crop = spade_memory(vq, 4, latent, image=[8, 8, 8])
    whole = spade_memory(vq, 4, latent, image=latent)
    assert plain.activations < crop.activations < whole.activations
    # the decoder's activations of 4 whole 96x128x96 images, each of its widest layers 64 channels
    assert whole.activations - plain.activations > 4 * 64 * 96 * 128 * 96 * 4
