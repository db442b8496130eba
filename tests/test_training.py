"""Training: data reader and preprocessing, configs, the three stages, exact resume, signals, CLI and export."""

from __future__ import annotations

import csv
import importlib
import json
import math
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("nilearn")  # the phantom simulator needs the train extra

from _tiny import TINY_UNET, TINY_VQ, save_tiny  # noqa: E402
from _training_utils import (  # noqa: E402
    PHANTOM_SPACING,
    PREP,
    autoencoder_config,
    checkpoint_differences,
    diffusion_config,
    spade_config,
    write_json,
    write_subjects,
)

from mrtranslate.cli import main  # noqa: E402
from mrtranslate.errors import InputImageError, OutputExistsError, UsageError  # noqa: E402
from mrtranslate.imaging.layout import find_subjects  # noqa: E402
from mrtranslate.modalities import MODALITIES  # noqa: E402
from mrtranslate.models import UNetConfig, VQGANConfig  # noqa: E402
from mrtranslate.pipeline import ALDMPipeline, SamplingOptions  # noqa: E402
from mrtranslate.training import builders  # noqa: E402
from mrtranslate.training.autoencoder import AutoencoderStage, reconstruction_l1  # noqa: E402
from mrtranslate.training.checkpoint import load_checkpoint  # noqa: E402
from mrtranslate.training.config import (  # noqa: E402
    AutoencoderConfig,
    DiffusionConfig,
    SpadeConfig,
    learning_rate,
    load_config,
    pair_weight_matrix,
)
from mrtranslate.training.data import (  # noqa: E402
    load_images,
    preprocess_subject,
    sample_pairs,
    sample_scans,
    shard,
    step_generator,
)
from mrtranslate.training.first_stage import load_first_stage  # noqa: E402
from mrtranslate.phantom.simulator import write_dataset  # noqa: E402
from mrtranslate.training.stage import FIRST_STAGE_ENCODER  # noqa: E402
from mrtranslate.training.trainer import train  # noqa: E402
from mrtranslate.imaging.model_space import Preprocessing, to_model_space  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP threads that
    wait for a busy core make every small op many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- data ------------------------------------------------------------------------------------------------
def test_preprocessing_shares_the_t1_box_and_matches_inference_for_t1(tmp_path: Path) -> None:
    subject = find_subjects(write_subjects(tmp_path, n=1))[0]
    prep = Preprocessing.from_dict(PREP)
    images, available = preprocess_subject(subject, prep)
    assert images.shape == (4, 16, 16, 16) and available.all()
    # the T1 goes through exactly what inference does with its own foreground box
    t1_alone, _ = to_model_space(subject.files["t1"], prep)
    assert torch.equal(images[0], t1_alone[0, 0])
    # T2 reaches beyond the T1 box: training crops it to the T1 box, inference would not
    t2_alone, _ = to_model_space(subject.files["t2"], prep)
    assert not torch.equal(images[2], t2_alone[0, 0])
    fg_t1 = (images[0] > -1).nonzero()
    fg_t2 = (images[2] > -1).nonzero()
    assert (fg_t2.min(0).values >= fg_t1.min(0).values).all() and (fg_t2.max(0).values <= fg_t1.max(0).values).all()
    for m in range(4):  # percentile scaling to [-1, 1], not clipped
        lo, hi = np.percentile(images[m].numpy(), [0.5, 99.5])
        assert lo == pytest.approx(-1, abs=1e-5) and hi == pytest.approx(1, abs=1e-5)


def test_brats2023_layout_missing_modalities_and_pair_sampling(tmp_path: Path) -> None:
    write_subjects(tmp_path, n=2, layout="2023", missing={0: "t1", 1: "flair"})
    subjects = find_subjects(tmp_path)
    data = load_images(subjects, Preprocessing.from_dict(PREP), progress=False)
    assert data.cases == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert data.available.tolist() == [[False, True, True, True], [True, True, True, False]]
    assert not data.images[0, 0].any()  # missing scans stay empty; the union box was used without a T1
    g = step_generator(0, 0)
    subj, src, tgt = sample_pairs(data.available, 300, g)
    assert bool(data.available[subj, src].all() and data.available[subj, tgt].all()) and bool((src != tgt).all())
    subj, mods = sample_scans(data.available, 300, g)
    assert bool(data.available[subj, mods].all())
    assert set(mods[subj == 1].tolist()) == {0, 1, 2}


EVERY_PAIR = [f"{a}->{b}" for a in MODALITIES for b in MODALITIES if a != b]


def test_pair_weights_set_how_often_each_pair_is_drawn() -> None:
    available = torch.ones(6, 4, dtype=torch.bool)
    available[5, 2:] = False  # subject 5 has T1 and T1ce only
    g = step_generator(0, 0)
    weights = pair_weight_matrix({"t1->t1ce": 11, "T2w->t2f": 0})  # aliases are accepted
    assert weights[0, 1] == 11 and weights[2, 3] == 0 and weights[1, 0] == 1 and weights.diagonal().eq(0).all()
    subj, src, tgt = sample_pairs(available, 6000, g, weights)
    assert bool(available[subj, src].all() and available[subj, tgt].all()) and bool((src != tgt).all())
    assert not bool(((src == 2) & (tgt == 3)).any())  # weight 0: never drawn
    full = subj < 5  # 11 of the 21 weighted pairs' mass; subject 5: 11 of 12
    assert abs(float(((src == 0) & (tgt == 1))[full].float().mean()) - 11 / 21) < 0.03
    assert abs(float(((src == 0) & (tgt == 1))[~full].float().mean()) - 11 / 12) < 0.04
    # a subject none of whose pairs has weight > 0 is never drawn
    only = pair_weight_matrix({p: float(p in ("t2->flair", "flair->t2")) for p in EVERY_PAIR})
    subj, src, tgt = sample_pairs(available, 500, g, only)
    assert 5 not in subj.tolist() and set(zip(src.tolist(), tgt.tolist())) == {(2, 3), (3, 2)}
    assert pair_weight_matrix(None) is None
    for bad, message in (({"t1->t1": 2}, "two different"), ({"t1-t2": 1}, "source->target"),
                         ({"t1->pd": 1}, "source->target"), ({"t1->t2": -1}, ">= 0"),
                         (dict.fromkeys(EVERY_PAIR, 0), "weight 0")):
        with pytest.raises(UsageError, match=message):
            load_config("spade", overrides=spade_config(pair_weights=bad))


def test_data_at_another_spacing_is_resampled_to_the_model_spacing(tmp_path: Path) -> None:
    subject = find_subjects(write_subjects(tmp_path, n=1, spacing=5.0))[0]
    images, available = preprocess_subject(subject, Preprocessing.from_dict(PREP))
    assert tuple(images.shape[1:]) == tuple(PREP["grid"]) and bool(available.any())
    for m in available.nonzero(as_tuple=True)[0].tolist():
        assert float(images[m].min()) == -1.0 and float(images[m].max()) > 0


def test_sampling_depends_only_on_seed_step_and_rank() -> None:
    draw = lambda *key: torch.rand(4, generator=step_generator(*key))  # noqa: E731
    assert torch.equal(draw(1, 7, 0), draw(1, 7, 0))
    assert not torch.equal(draw(1, 7, 0), draw(1, 8, 0))
    assert not torch.equal(draw(1, 7, 0), draw(1, 7, 1))
    assert not torch.equal(draw(1, 7, 0), draw(2, 7, 0))
    assert shard(list(range(5)), 1, 2) == [1, 3]


# ---- configs ---------------------------------------------------------------------------------------------
def test_defaults_are_the_published_values() -> None:
    ae, sp, df = AutoencoderConfig(), SpadeConfig(), DiffusionConfig()
    assert (ae.lr, ae.betas, ae.batch_size, ae.codebook_beta, ae.disc_weight) == (1e-5, (0.5, 0.9), 4, 0.25, 0.0)
    assert ae.vqgan_config() == VQGANConfig() and ae.preprocessing["grid"] == [144, 192, 144]
    assert ae.background_weight == 1.0  # the plain mean of |x - rec| over every voxel
    assert (ae.codebook_weight, ae.flip_prob) == (0.0, 0.1)
    assert sp.lr == 2e-5 and sp.cycle_weight == 0.0 and sp.adv_weight == 0.0
    assert ae.scale_lr and sp.scale_lr and df.scale_lr  # lr x batch_size x processes, as the authors' main.py
    assert (df.lr, df.ema_decay, df.unet_config()) == (1e-5, 0.9999, UNetConfig())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"learning_rate": 1e-4}, "unknown setting"),
        ({"lr": "fast"}, "must be a number"),
        ({"crop": [9, 8, 8]}, "multiples"),
        ({"perceptual_weight": 1.0}, "perceptual_model"),
        ({"model": {**TINY_VQ.to_dict(), "chanels": 3}}, "unknown key"),
        ({"disc_weight": 0.5, "disc_layers": 3}, "PatchGAN"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_min": 1.0}, "lr_min"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"background_weight": -0.1}, "background_weight"),
        ({"background_weight": 2.0}, "background_weight"),
    ],
)
def test_config_errors_name_the_setting(override: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config("autoencoder", overrides=autoencoder_config(**override))


def test_learning_rate_schedules() -> None:
    constant = AutoencoderConfig(lr=1e-3, steps=10)
    assert [learning_rate(constant, s) for s in range(10)] == [1e-3] * 10  # as published
    warm = AutoencoderConfig(lr=1e-3, steps=10, warmup_steps=4)
    assert [learning_rate(warm, s) for s in range(5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    cos = AutoencoderConfig(lr=1e-3, steps=7, warmup_steps=2, lr_min=1e-4, lr_schedule="cosine")
    got = [learning_rate(cos, s) for s in range(7)]
    # after the warm-up: half a cosine from lr (step 2) to lr_min (the last step, 6), its middle at step 4
    assert got == pytest.approx([5e-4, 1e-3, 1e-3, 1e-4 + 0.9e-3 * (1 + math.cos(math.pi / 4)) / 2, 5.5e-4,
                                 1e-4 + 0.9e-3 * (1 + math.cos(3 * math.pi / 4)) / 2, 1e-4])
    assert learning_rate(cos, 50) == pytest.approx(1e-4)  # past the end (steps raised on resume): the floor


# ---- the three stages, resumed exactly ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, n=2, seed=0, spacing=PHANTOM_SPACING, progress=False)
    return root


@pytest.fixture(scope="module")
def chain(phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three stages trained 4 steps each without interruption, through the CLI."""
    base = tmp_path_factory.mktemp("chain")
    perceptual = save_tiny(base / "perceptual-model")
    configs = {
        "autoencoder": autoencoder_config(disc_weight=0.5, disc_start=1, disc_layers=1, disc_channels=4,
                                          perceptual_weight=0.1, perceptual_model=str(perceptual),
                                          lr_schedule="cosine", warmup_steps=1, lr_min=1e-4),
        "spade": spade_config(cycle_weight=0.5),
        "diffusion": diffusion_config(),
    }
    runs = {stage: base / stage for stage in configs}
    upstream = {"spade": runs["autoencoder"], "diffusion": runs["spade"]}
    for stage, cfg in configs.items():
        args = ["train", stage, "--data", str(phantoms), "--run", str(runs[stage]),
                "--config", str(write_json(base / f"{stage}.json", cfg)), "--quiet"]
        if stage in upstream:
            args += ["--first-stage", str(upstream[stage])]
        assert main(args) == 0
    return runs


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in csv.DictReader(fh)]


def test_autoencoder_interrupted_by_sigint_resumes_exactly(chain: dict[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "ae"
    cfg = write_json(tmp_path / "ae.json", {**load_checkpoint(chain["autoencoder"] / "checkpoint")[1]["config"]})
    original = AutoencoderStage.train_step

    def interrupted(self, batch, step):
        out = original(self, batch, step)
        if step == 1:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C during the second step
        return out

    monkeypatch.setattr(AutoencoderStage, "train_step", interrupted)
    assert main(["train", "autoencoder", "--data", _data_of(chain), "--run", str(run), "--config", str(cfg), "--quiet"]) == 130
    assert load_checkpoint(run / "checkpoint")[1]["step"] == 2
    monkeypatch.setattr(AutoencoderStage, "train_step", original)
    # a fresh start over a run with a checkpoint is refused
    with pytest.raises(OutputExistsError):
        train("autoencoder", run, _data_of(chain), cfg, progress=False)
    assert main(["train", "autoencoder", "--run", str(run), "--resume", "--quiet"]) == 0  # data: the recorded folder
    assert checkpoint_differences(chain["autoencoder"], run) == []
    assert _rows(run) == _rows(chain["autoencoder"])
    cfg = load_config("autoencoder", overrides=json.loads(cfg.read_text()))
    # each step's row logs the learning rate it took: the warm-up, then the cosine down to lr_min
    assert [float(r["lr"]) for r in _rows(run)] == pytest.approx([learning_rate(cfg, s) for s in range(4)])
    assert [float(r["lr"]) for r in _rows(run)] == pytest.approx([1e-3, 1e-3, 5.5e-4, 1e-4])
    assert sorted(p.suffix for p in (run / "checkpoint").iterdir()) == [".json", ".safetensors"]  # no pickle


def _data_of(chain: dict[str, Path]) -> str:
    return json.loads((chain["autoencoder"] / "run.json").read_text())["data"]["folder"]


def test_spade_resumes_exactly_from_its_cached_latents(chain: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "spade"
    result = train("spade", run, _data_of(chain), spade_config(cycle_weight=0.5), steps=2,
                   first_stage=str(chain["autoencoder"]), progress=False)
    assert (result.step, result.status) == (2, "finished")

    def no_encoding(*args, **kwargs):
        raise AssertionError("the latents cache should have been used")

    monkeypatch.setattr(builders, "encode_codes", no_encoding)
    result = train("spade", run, None, resume=True, steps=4, progress=False)
    assert (result.step, result.status) == (4, "finished")
    assert checkpoint_differences(chain["spade"], run) == []
    assert _rows(run) == _rows(chain["spade"])


def test_diffusion_resumes_exactly(chain: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "diffusion"
    train("diffusion", run, _data_of(chain), diffusion_config(), steps=2, first_stage=str(chain["spade"]), progress=False)
    train("diffusion", run, resume=True, steps=4, progress=False)
    assert checkpoint_differences(chain["diffusion"], run) == []
    tensors, scalars = load_checkpoint(run / "checkpoint")
    assert scalars["ema_updates"] == 4
    raw, ema = tensors["model/unet/out.2.weight"], tensors["ema/unet/out.2.weight"]
    assert not torch.equal(raw, ema)  # the EMA lags the trained weights


def test_diffusion_timestep_range_limits_the_training_timesteps(chain: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mrtranslate.schedulers import DDIMScheduler

    seen: list[int] = []
    add_noise = DDIMScheduler.add_noise

    def record(self, x0, noise, t):
        seen.extend(t.tolist())
        return add_noise(self, x0, noise, t)

    monkeypatch.setattr(DDIMScheduler, "add_noise", record)
    train("diffusion", tmp_path / "low", _data_of(chain), diffusion_config(steps=6, timestep_range=[5, 8]),
          first_stage=str(chain["spade"]), progress=False)
    assert len(seen) == 12 and set(seen) <= {5, 6, 7} and len(set(seen)) > 1
    seen.clear()
    train("diffusion", tmp_path / "all", _data_of(chain), diffusion_config(steps=6), first_stage=str(chain["spade"]),
          progress=False)
    assert len(seen) == 12 and max(seen) >= 8  # as published: all 1000 timesteps
    for bad in ([5], [8, 5], [0, 1001], [0.5, 9]):
        with pytest.raises(UsageError, match="timestep_range"):
            load_config("diffusion", overrides=diffusion_config(timestep_range=bad))


def test_diffusion_crop_takes_one_box_of_source_target_and_spade_latents(chain: dict[str, Path], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mrtranslate.training.diffusion import DiffusionStage

    seen: list[tuple[dict, dict]] = []
    batch = DiffusionStage.batch

    def record(self, step):
        cropped = batch(self, step)
        crop, self.crop = self.crop, None
        whole = batch(self, step)  # the same pairs and timesteps, uncropped
        self.crop = crop
        seen.append((cropped, whole))
        return cropped

    monkeypatch.setattr(DiffusionStage, "batch", record)
    run = tmp_path / "crop"
    result = train("diffusion", run, _data_of(chain), diffusion_config(steps=3, crop=[8, 8, 8]),
                   first_stage=str(chain["spade"]), progress=False)
    assert result.status == "finished"
    offsets = set()
    for cropped, whole in seen:
        assert torch.equal(cropped["tgt"], whole["tgt"]) and torch.equal(cropped["t"], whole["t"])
        assert cropped["noise"].shape[2:] == cropped["cond"].shape[2:] == cropped["src_codes"].shape[1:] == (4, 4, 4)
        for i in range(cropped["tgt"].numel()):
            found = [
                (a, b, c)
                for a in range(whole["src_codes"].shape[1] - 3)
                for b in range(whole["src_codes"].shape[2] - 3)
                for c in range(whole["src_codes"].shape[3] - 3)
                if all(torch.equal(cropped[k][i], whole[k][i][..., a:a + 4, b:b + 4, c:c + 4])
                       for k in ("src_codes", "tgt_codes", "cond"))
            ]
            assert found, "the source, target and MS-SPADE crops must be the same box"
            offsets.update(found)
    assert len(offsets) > 1  # random boxes, not one fixed window
    for bad in ([6, 8, 8], [8, 8, 40]):
        with pytest.raises(UsageError, match="crop"):
            train("diffusion", tmp_path / f"bad{bad[0]}{bad[2]}", _data_of(chain), diffusion_config(crop=bad),
                  first_stage=str(chain["spade"]), progress=False)
    for bad_config in (diffusion_config(crop=[0, 8, 8]), diffusion_config(crop=[8, 8]),
                       diffusion_config(crop=[8, 8, 8], cache_spade=False)):
        with pytest.raises(UsageError, match="crop"):
            load_config("diffusion", overrides=bad_config)


def test_spade_draws_pairs_by_its_pair_weights(chain: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    stage = "spade"
    module = importlib.import_module(f"mrtranslate.training.{stage}")
    drawn: list[tuple[int, int]] = []
    draw = module.sample_pairs

    def record(*args):
        subjects, src, tgt = draw(*args)
        drawn.extend(zip(src.tolist(), tgt.tolist()))
        return subjects, src, tgt

    monkeypatch.setattr(module, "sample_pairs", record)
    weights = {p: float(p == "flair->t1ce") for p in EVERY_PAIR}
    train(stage, tmp_path / stage, _data_of(chain), spade_config(steps=3, pair_weights=weights),
          first_stage=str(chain["autoencoder"]), progress=False)
    assert drawn and set(drawn) == {(3, 1)}


def test_spade_image_term_is_the_brain_l1_of_the_decoded_translation_on_a_crop(
        chain: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mrtranslate.training import spade as spade_module
    from mrtranslate.training.data import step_generator
    from mrtranslate.training.spade import SpadeStage

    assert spade_module.IMAGE_BRAIN_LEVEL == -0.9  # 5 % of model space's range above the background
    # a 4-step autoencoder does not yet decode the background to -1: a level inside its range splits it
    monkeypatch.setattr(spade_module, "IMAGE_BRAIN_LEVEL", 0.0)
    seen: list[tuple] = []
    original = SpadeStage.image_l1

    def record(self, fake, z_tgt, step):
        value = original(self, fake, z_tgt, step)
        assert value.requires_grad  # it trains MS-SPADE
        seen.append((fake.detach().clone(), z_tgt.clone(), step, float(value.detach()), self.vqgan))
        return value

    monkeypatch.setattr(SpadeStage, "image_l1", record)
    run = tmp_path / "image"
    cfg = spade_config(steps=2, adv_weight=0.0, image_l1_weight=0.5, image_crop=[3, 4, 50])
    train("spade", run, _data_of(chain), cfg, first_stage=str(chain["autoencoder"]), progress=False)
    rows = _rows(run)
    assert len(rows) == 2 and all(float(r["image_l1"]) > 0 for r in rows)
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [float(r["l1"]) + 0.5 * float(r["image_l1"]) for r in rows], rel=1e-5)
    # the value: a direct computation on the step's crop (longer sides than the latent's take all of it)
    for fake, z_tgt, step, value, vqgan in seen:
        g = step_generator(5, step, 0, stream=1)
        box = []
        for side, want in zip(fake.shape[2:], (3, 4, 50), strict=True):
            size = min(side, want)
            start = int(torch.randint(side - size + 1, (1,), generator=g))
            box.append(slice(start, start + size))
        assert box[2] == slice(0, fake.shape[4])
        with torch.no_grad():
            image, target = vqgan.decode(fake[(..., *box)]), vqgan.decode(z_tgt[(..., *box)])
        brain = target > 0.0
        assert brain.any() and not brain.all()
        assert value == pytest.approx(float((image - target).abs()[brain].mean()), rel=1e-5)
    # only MS-SPADE trained: the decoder the term runs through is the first stage's
    tensors = load_checkpoint(run / "checkpoint")[0]
    first = load_checkpoint(chain["autoencoder"] / "checkpoint")[0]
    decoder = [k for k in tensors if k.startswith("model/vqgan/decoder.")]
    assert decoder and all(torch.equal(tensors[k], first[k]) for k in decoder)
    assert any(not torch.equal(tensors[k], first[k]) for k in tensors if k.startswith("model/vqgan/spade."))
    for bad in ({"image_crop": [4, 4]}, {"image_crop": [0, 4, 4]}, {"image_l1_weight": -1.0}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            load_config("spade", overrides=spade_config(**bad))


def test_max_minutes_stops_cleanly_after_one_step(phantoms: Path, tmp_path: Path) -> None:
    result = train("autoencoder", tmp_path / "run", phantoms, autoencoder_config(), max_minutes=0, progress=False)
    assert (result.step, result.status, result.exit_code) == (1, "time_limit", 0)
    assert load_checkpoint(tmp_path / "run" / "checkpoint")[1]["step"] == 1


def test_stages_chain_only_from_first_stages(chain: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="autoencoder or spade"):
        load_first_stage(chain["diffusion"])
    assert main(["train", "spade", "--data", _data_of(chain), "--run", str(tmp_path / "x"), "--quiet"]) == 2
    assert main(["train", "spade", "--run", str(tmp_path / "y"), "--resume", "--quiet"]) == 2


def test_diffusion_fine_tunes_from_a_model_folder(chain: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model"
    assert main(["export", str(chain["diffusion"]), "--out", str(model), "-q"]) == 0
    run = tmp_path / "ft"
    cfg = write_json(tmp_path / "ft.json", diffusion_config(steps=0))
    assert main(["train", "diffusion", "--data", _data_of(chain), "--run", str(run), "--config", str(cfg),
                 "--first-stage", str(chain["spade"]), "--init", str(model), "--quiet"]) == 0
    assert load_checkpoint(run / "checkpoint")[1]["step"] == 0
    tensors, _ = load_checkpoint(run / "checkpoint")
    start = ALDMPipeline.from_pretrained(model).unet
    for k, v in start.state_dict().items():  # the UNet and its EMA start as the model folder's UNet
        assert torch.equal(tensors[f"model/unet/{k}"], v), k
    for k, v in start.named_parameters():
        assert torch.equal(tensors[f"ema/unet/{k}"], v), k
    assert json.loads((run / "run.json").read_text())["init"]["path"] == str(model.resolve())
    assert main(["export", str(run), "--out", str(tmp_path / "ft-model"), "-q"]) == 0
    card = (tmp_path / "ft-model" / "README.md").read_text()
    assert f"UNet (and its EMA) started from the model folder `{model.resolve()}`" in card
    assert "--init" in card  # the command line, as run
    model.rename(tmp_path / "moved")  # resuming reads the checkpoint, not the init folder
    assert train("diffusion", run, resume=True, steps=2, progress=False).step == 2
    moved = load_checkpoint(run / "checkpoint")[0]
    assert not torch.equal(moved["model/unet/out.2.weight"], start.state_dict()["out.2.weight"])
    with pytest.raises(UsageError, match="not a model folder"):
        train("diffusion", tmp_path / "a", _data_of(chain), diffusion_config(init=str(chain["spade"])),
              first_stage=str(chain["spade"]), progress=False)
    assert not (tmp_path / "a").exists()  # refused before the data were encoded into the run folder
    with pytest.raises(UsageError, match="spade stage continues"):
        train("spade", tmp_path / "c", _data_of(chain), spade_config(), first_stage=str(chain["autoencoder"]),
              init=str(tmp_path / "moved"), progress=False)
    other = {**TINY_UNET.to_dict(), "model_channels": 2 * TINY_UNET.model_channels}
    with pytest.raises(UsageError, match="model_channels"):
        train("diffusion", tmp_path / "b", _data_of(chain), diffusion_config(init=str(tmp_path / "moved"), model=other),
              first_stage=str(chain["spade"]), progress=False)


def test_autoencoder_fine_tunes_from_a_vqgan_and_can_keep_its_encoder(chain: dict[str, Path], tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    model = tmp_path / "model"
    assert main(["export", str(chain["diffusion"]), "--out", str(model), "-q"]) == 0
    start = ALDMPipeline.from_pretrained(model).vqgan.state_dict()
    data = _data_of(chain)
    run = tmp_path / "decoder"
    cfg = write_json(tmp_path / "decoder.json", autoencoder_config(steps=3, freeze_encoder=True))
    assert main(["train", "autoencoder", "--data", data, "--run", str(run), "--config", str(cfg), "--init", str(model),
                 "--quiet"]) == 0
    tensors, _ = load_checkpoint(run / "checkpoint")
    kept = [k for k in start if k.startswith(FIRST_STAGE_ENCODER + ("spade.",))]
    trained = [k for k in start if k.startswith(("post_quant_conv.", "decoder."))]
    assert kept and trained and len(kept) + len(trained) == len(start)
    for k in kept:  # encoder and codebook (so the codes) and the MS-SPADE are the model's, bit for bit
        assert torch.equal(tensors[f"model/vqgan/{k}"], start[k]), k
    assert sum(not torch.equal(tensors[f"model/vqgan/{k}"], start[k]) for k in trained) > len(trained) // 2
    assert json.loads((run / "run.json").read_text())["init"]["path"] == str(model.resolve())
    assert main(["export", str(run), "--out", str(tmp_path / "decoder-model"), "-q"]) == 0
    assert f"The VQ-GAN started from the model folder `{model.resolve()}`" in (
        tmp_path / "decoder-model" / "README.md").read_text()
    # background_weight reaches the loss, and the rec column logs that loss
    import mrtranslate.training.autoencoder as ae_module

    seen: list[tuple[float, float]] = []

    def recording(x, rec, background_weight=1.0):
        loss = reconstruction_l1(x, rec, background_weight)
        seen.append((background_weight, float(loss.detach())))
        return loss

    monkeypatch.setattr(ae_module, "reconstruction_l1", recording)
    run = tmp_path / "edge"
    train("autoencoder", run, data, autoencoder_config(steps=2, freeze_encoder=True, background_weight=0.25),
          init=str(model), progress=False)
    assert [w for w, _ in seen] == [0.25, 0.25]
    assert [float(r["rec"]) for r in _rows(run)] == pytest.approx([v for _, v in seen])
    # a diffusion run on an autoencoder run warns of an untrained MS-SPADE only when that run started from scratch
    for first_stage, warns in ((run, False), (chain["autoencoder"], True)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="mrtranslate"):
            train("diffusion", tmp_path / f"unet-{warns}", data, diffusion_config(steps=0),
                  first_stage=str(first_stage), progress=False)
        assert ("MS-SPADE is untrained" in caplog.text) == warns
    # without freeze_encoder everything trains; a run works as init too; steps 0 keeps the init's weights
    run = tmp_path / "all"
    train("autoencoder", run, data, autoencoder_config(steps=0), init=str(chain["autoencoder"]), progress=False)
    tensors, _ = load_checkpoint(run / "checkpoint")
    first = load_checkpoint(chain["autoencoder"] / "checkpoint")[0]
    assert all(torch.equal(tensors[k], first[k]) for k in first if k.startswith("model/vqgan/"))
    train("autoencoder", run, resume=True, steps=2, progress=False)
    tensors, _ = load_checkpoint(run / "checkpoint")
    assert not torch.equal(tensors["model/vqgan/encoder.conv_in.weight"], first["model/vqgan/encoder.conv_in.weight"])
    for bad, message in ((dict(freeze_encoder=True), "needs init"),
                         (dict(freeze_encoder=True, init=str(model), codebook_restart_every=5), "codebook_restart")):
        with pytest.raises(UsageError, match=message):
            load_config("autoencoder", overrides=autoencoder_config(**bad))
    other = {**TINY_VQ.to_dict(), "n_embed": 2 * TINY_VQ.n_embed}
    with pytest.raises(UsageError, match="n_embed"):
        train("autoencoder", tmp_path / "b", data, autoencoder_config(model=other), init=str(model), progress=False)
    prep = {**autoencoder_config()["preprocessing"], "upper_percentile": 99.0}
    with pytest.raises(UsageError, match="same preprocessing"):
        train("autoencoder", tmp_path / "c", data, autoencoder_config(preprocessing=prep, freeze_encoder=True),
              init=str(model), progress=False)


def test_export_writes_a_loadable_model_with_a_model_card(chain: dict[str, Path], tmp_path: Path) -> None:
    assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "bad"), "--default-strength", "1.5", "-q"]) == 2
    assert not (tmp_path / "bad").exists()
    for bad in ("t1->t1ce", "t1->t1ce=x", "t1->t1=0.2", "t1->t1ce=1.5"):
        assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "bad"), "--pair-strength", bad,
                     "-q"]) == 2
        assert not (tmp_path / "bad").exists()
    assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "bad"), "--pair-strength", "t1->t1ce=0.2",
                 "--pair-strength", "t1n->t1c=0.3", "-q"]) == 2  # one pair, two spellings
    assert main(["export", str(chain["spade"]), "--out", str(tmp_path / "bad"), "--pair-strength", "t1->t2=0.2",
                 "-q"]) == 2  # no diffusion stage to sample
    for bad in ("flair", "flair=flair", "flair=t9"):
        assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "bad"), "--best-source", bad,
                     "-q"]) == 2
        assert not (tmp_path / "bad").exists()
    assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "model"), "--default-steps", "3",
                 "--default-strength", "0.5", "--pair-strength", "T1->t1c=0.2", "--best-source", "FLAIR=T2w",
                 "--best-source", "t1c=t1", "-q"]) == 0
    pipe = ALDMPipeline.from_pretrained(tmp_path / "model")
    assert pipe.config.components == ("vqgan", "unet", "scheduler")
    assert (pipe.config.default_steps, pipe.config.default_strength) == (3, 0.5)
    assert pipe.config.pair_strength == {"t1->t1ce": 0.2}
    assert pipe.config.best_source == {"flair": "t2", "t1ce": "t1"}
    assert pipe.config.preprocessing["spacing_mm"] == [PHANTOM_SPACING] * 3
    tensors, _ = load_checkpoint(chain["diffusion"] / "checkpoint")
    assert torch.equal(pipe.unet.state_dict()["out.2.weight"], tensors["ema/unet/out.2.weight"])
    assert torch.equal(pipe.vqgan.state_dict()["spade.block.0.conv_0.weight"],
                       load_checkpoint(chain["spade"] / "checkpoint")[0]["model/vqgan/spade.block.0.conv_0.weight"])
    card = (tmp_path / "model" / "README.md").read_text()
    for stage in ("autoencoder", "spade", "diffusion"):
        assert f"mrtranslate train {stage} --data" in card
    assert "Phantom_0_00000" in card and "seed 0" in card and "| diffusion | 4 |" in card
    assert "sampling it suggests: 3 DDIM steps, eta 1.0, strength 0.5 (t1->t1ce: 0.2)" in card
    assert pipe.config.default_solver == "ddim"
    assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "bad"), "--default-solver", "euler",
                 "-q"]) == 2
    assert main(["export", str(chain["diffusion"]), "--out", str(tmp_path / "unipc"), "--default-steps", "10",
                 "--default-solver", "unipc", "--pair-strength", "t2->t1ce=0", "-q"]) == 0
    assert ALDMPipeline.from_pretrained(tmp_path / "unipc").config.default_solver == "unipc"
    assert ALDMPipeline.from_pretrained(tmp_path / "unipc").config.pair_strength == {"t2->t1ce": 0.0}
    assert ("sampling it suggests: 10 UniPC steps, strength 1.0 (t2->t1ce: 0, MS-SPADE only)"
            in (tmp_path / "unipc" / "README.md").read_text())
    out = pipe.translate(torch.zeros(1, 1, 20, 24, 20), [2], SamplingOptions(steps=2), progress=False, source=0)
    assert out.shape == (1, 1, 20, 24, 20) and torch.isfinite(out).all()
    # a first-stage run exports a first-stage-only folder, usable as the first stage of a later run
    assert main(["export", str(chain["spade"]), "--out", str(tmp_path / "fs"), "-q"]) == 0
    assert ALDMPipeline.from_pretrained(tmp_path / "fs").config.components == ("vqgan",)
    a, b = load_first_stage(tmp_path / "fs").vqgan, load_first_stage(chain["spade"]).vqgan
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert main(["export", str(chain["spade"]), "--out", str(tmp_path / "fs"), "-q"]) == 2  # not empty


def test_dead_code_restart_moves_unused_codes_and_resumes_exactly(phantoms: Path, tmp_path: Path) -> None:
    """With codebook_restart_every, codes no sample chose are moved onto encoder outputs; resume stays exact."""
    cfg = autoencoder_config(codebook_restart_every=2, steps=4)
    straight, split, plain = tmp_path / "straight", tmp_path / "split", tmp_path / "plain"
    train("autoencoder", straight, phantoms, cfg, progress=False)
    train("autoencoder", split, phantoms, cfg, steps=3, progress=False)
    train("autoencoder", split, resume=True, steps=4, progress=False)
    assert checkpoint_differences(straight, split) == []
    with (straight / "metrics.csv").open() as fh:
        restarted = [float(r["codes_restarted"]) for r in csv.DictReader(fh)]
    assert restarted[0] == 0 and restarted[1] > 0  # usage is checked after steps 2 and 4 only
    # the same run without restarts is identical up to step 2; there the dead codes were moved
    train("autoencoder", plain, phantoms, autoencoder_config(steps=4), progress=False)
    key = "model/vqgan/quantize.embedding.weight"
    a, b = load_checkpoint(straight / "checkpoint")[0][key], load_checkpoint(plain / "checkpoint")[0][key]
    assert int((a != b).any(1).sum()) >= restarted[1]


def test_reconstruction_l1_weighs_the_background_by_background_weight() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 4, 5, 6, generator=g) * 2 - 1
    x[:, :, :2] = -1  # background: the raw scan's 0
    rec = torch.rand(2, 1, 4, 5, 6, generator=g) * 2 - 1
    diff, brain = (x - rec).abs().numpy(), (x > -1).numpy()
    assert float(reconstruction_l1(x, rec)) == pytest.approx(float(diff.mean()), rel=1e-6)  # published
    for w in (0.0, 0.1, 0.5):
        want = (diff[brain].sum() + w * diff[~brain].sum()) / (brain.sum() + w * (~brain).sum())
        assert float(reconstruction_l1(x, rec, w)) == pytest.approx(float(want), rel=1e-6)
    # weight 0: the background's reconstruction does not matter, the brain's does
    assert float(reconstruction_l1(x, torch.where(x > -1, rec, 5.0), 0.0)) == pytest.approx(
        float(diff[brain].mean()), rel=1e-6)
    assert float(reconstruction_l1(torch.full_like(x, -1.0), rec, 0.0)) == 0.0  # a crop of background only


def test_a_run_config_saved_with_a_removed_setting_still_loads() -> None:
    """A resumed run's config.json from an older version holds removed settings at their inert value."""
    assert load_config("spade", overrides=spade_config(anchor_targets=[], train_targets=None)).stage == "spade"
    assert load_config("autoencoder", overrides=autoencoder_config(translated_fraction=0.0)).stage == "autoencoder"
    assert load_config("diffusion", overrides=diffusion_config(pair_weights=None)).stage == "diffusion"
    with pytest.raises(UsageError, match="unknown setting.*anchor_targets"):
        load_config("spade", overrides=spade_config(anchor_targets=["t1ce"]))
    with pytest.raises(UsageError, match="unknown setting.*pair_weights"):
        load_config("diffusion", overrides=diffusion_config(pair_weights={"t1->t2": 2}))


RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "phantom-demo"


@pytest.mark.parametrize("path", sorted(RECIPE.glob("*.json")), ids=lambda p: p.name)
def test_the_demo_recipe_configs_are_valid(path: Path) -> None:
    stage = "autoencoder" if path.name.startswith("decoder") else path.name.split("-")[0].removesuffix(".json")
    data = json.loads(path.read_text())
    # what the command line adds: --init for a decoder fine-tune (see the recipe's reproduce.sh)
    overrides = {"init": "MODEL"} if data.get("freeze_encoder") and "init" not in data else None
    cfg = load_config(stage, path, overrides)
    assert cfg.stage == stage


def test_the_recipe_script_names_every_config_and_only_existing_ones() -> None:
    script = (RECIPE / "reproduce.sh").read_text()
    named = set(re.findall(r'"\$HERE/([\w.-]+\.json)"', script))
    assert named == {p.name for p in RECIPE.glob("*.json")}


# ---- MS-SPADE's per-pair source gate (source_gate, gate_only) ----------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"gate_only": True, "source_gate": True}, "adv_weight and cycle_weight to 0"),
        ({"gate_only": "yes", "adv_weight": 0}, "gate_only"),
    ],
)
def test_gate_config_errors_name_the_setting(override: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_config("spade", overrides=spade_config(**override))


def test_spade_trains_the_source_gate_alone_and_the_unet_sees_the_gated_latents(
        chain: dict[str, Path], tmp_path: Path) -> None:
    data = _data_of(chain)
    with pytest.raises(UsageError, match="has no source gate to train; set source_gate"):
        train("spade", tmp_path / "nogate", data, spade_config(gate_only=True, adv_weight=0),
              first_stage=str(chain["spade"]), progress=False)
    cfg = spade_config(source_gate=True, gate_only=True, adv_weight=0, lr=0.05)
    run = tmp_path / "gate"
    train("spade", run, data, cfg, first_stage=str(chain["spade"]), progress=False)
    before = load_checkpoint(chain["spade"] / "checkpoint")[0]
    after = load_checkpoint(run / "checkpoint")[0]
    gate = after.pop("model/vqgan/spade.source_gate")
    assert sorted(k for k in after if k.startswith("model/vqgan/")) == sorted(
        k for k in before if k.startswith("model/vqgan/"))
    assert all(torch.equal(after[k], before[k]) for k in after if k.startswith("model/vqgan/"))  # the rest frozen
    assert gate.shape == (4, 4, TINY_VQ.embed_dim) and bool(gate.abs().gt(0).any())
    assert torch.equal(gate.diagonal(dim1=0, dim2=1), torch.zeros(TINY_VQ.embed_dim, 4))  # no pair s -> s is drawn
    # resumed after 2 steps: the uninterrupted run
    half = tmp_path / "half"
    train("spade", half, data, cfg, steps=2, first_stage=str(chain["spade"]), progress=False)
    train("spade", half, None, resume=True, steps=4, progress=False)
    assert checkpoint_differences(run, half) == []
    # the exported first stage carries the gate; a diffusion run on it conditions on the gated latents
    assert main(["export", str(run), "--out", str(tmp_path / "model"), "-q"]) == 0
    pipe = ALDMPipeline.from_pretrained(tmp_path / "model")
    assert pipe.vqgan.config.spade_source_gate and torch.equal(pipe.vqgan.spade.source_gate, gate)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "MS-SPADE has a source gate" in card and f"| t1 | - | {float(gate[0, 1].mean()):.3f} |" in card
    diff = tmp_path / "diffusion"
    train("diffusion", diff, data, diffusion_config(steps=1), first_stage=str(run), progress=False)
    cache = load_file(str(diff / "latents-0-of-1.safetensors"))
    with torch.no_grad():
        z = pipe.vqgan.quantize.lookup(cache["codes"][0, 0][None].long())
    gated = pipe.target_like(z, [1, 2], source=0)
    assert torch.allclose(cache["translated"][0, 0, [1, 2]], gated, atol=1e-5)
    with torch.no_grad():
        pipe.vqgan.spade.source_gate.zero_()
    assert not torch.allclose(gated, pipe.target_like(z, [1, 2], source=0), atol=1e-4)  # the gate mattered


# ---- the brats-2mm recipe script ---------------------------------------------------------------------------

BRATS_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "brats-2mm"


def _run_recipe(roots: list[Path], work: Path, shim: Path, log: Path) -> list[list[str]]:
    import os
    import subprocess

    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "SHIM_LOG": str(log)}
    done = subprocess.run(["bash", str(BRATS_RECIPE / "train.sh"), *map(str, roots), str(work), "cpu"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return calls


def test_the_brats_recipe_script_trains_every_stage_on_its_split_with_valid_configs(tmp_path: Path) -> None:
    split = json.loads((BRATS_RECIPE / "split.json").read_text())
    every = sorted({c for cases in split.values() for c in cases})
    assert set(split["first_stage_training"]) <= set(split["training"])
    held_out = split["validation"] + split["validation_2mm"] + split["test_2mm"]
    assert not set(held_out) & set(split["training"]) and len(set(held_out)) == len(held_out)
    roots = [tmp_path / "samples", tmp_path / "pool"]
    for i, case in enumerate(every):  # the subjects are spread over the two folders
        (roots[i % 2] / case).mkdir(parents=True)
    shim = tmp_path / "bin"
    shim.mkdir()
    # a stand-in mrtranslate that records its arguments and leaves a run record (or a pack) where one is made
    (shim / "mrtranslate").write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "open(os.environ['SHIM_LOG'], 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['train', 'encode']:\n"
        "    open(sys.argv[sys.argv.index('--out') + 1], 'w').write('pack')\n"
        "elif sys.argv[1] == 'train' and '--run' in sys.argv:\n"
        "    run = sys.argv[sys.argv.index('--run') + 1]\n"
        "    os.makedirs(run, exist_ok=True)\n"
        "    open(os.path.join(run, 'run.json'), 'w').write('{}')\n"
    )
    (shim / "mrtranslate").chmod(0o755)
    work = tmp_path / "work"
    calls = _run_recipe(roots, work, shim, tmp_path / "calls.jsonl")
    assert [c[:2] if c[0] == "train" else c[:1] for c in calls] == [
        ["train", "autoencoder"], ["train", "spade"], ["train", "encode"], ["train", "diffusion"], ["export"],
        ["train", "spade"], ["train", "spade"], ["train", "diffusion"], ["export"], ["train", "standard"],
        ["evaluate"], ["train", "refiner"], ["evaluate"], ["evaluate"], ["evaluate"], ["train", "uncertainty"]]
    opts = [dict(zip(c[2::2], c[3::2], strict=False)) for c in calls[:4]]
    for o in opts[:2]:  # the first stage trains on the subjects it was first released with
        folder = Path(o["--data"])
        assert sorted(p.name for p in folder.iterdir()) == sorted(split["first_stage_training"])
    folder = Path(opts[2]["--data"])  # the UNet: every training subject, encoded once into a pack
    assert sorted(p.name for p in folder.iterdir()) == sorted(split["training"])
    assert all((folder / c).resolve() in {(r / c).resolve() for r in roots} for c in split["training"])
    assert opts[2]["--first-stage"] == str(work / "runs" / "spade") == opts[3]["--first-stage"]
    assert opts[3]["--data"] == opts[2]["--out"] == str(work / "training.safetensors")
    for call in calls:
        if "--config" in call:
            assert load_config(call[1], call[call.index("--config") + 1]).stage == call[1]
    # version 3: MS-SPADE continued on every training subject, then resumed to step 420 with a new schedule,
    # and the UNet fine-tuned from version 2's (exported) on its outputs, from the same pack
    value = lambda call, name: call[call.index(name) + 1]  # noqa: E731
    v2, spade2, longer, unet2 = calls[4], calls[5], calls[6], calls[7]
    assert v2[1] == str(work / "runs" / "diffusion")
    assert Path(value(spade2, "--data")) == work / "training"
    assert value(spade2, "--first-stage") == str(work / "runs" / "spade")
    assert value(spade2, "--run") == value(longer, "--run") == str(work / "runs" / "spade2")
    assert "--resume" in longer and value(longer, "--steps") == "420"
    assert json.loads((BRATS_RECIPE / value(spade2, "--config")).read_text())["steps"] == 160
    assert value(unet2, "--init") == value(v2, "--out") and value(unet2, "--data") == str(work / "training.safetensors")
    assert value(unet2, "--first-stage") == str(work / "runs" / "spade2")
    for part in ("validation", "validation_2mm", "test_2mm", "uncertainty_fit"):
        assert sorted(p.name for p in (work / part).iterdir()) == sorted(split[part])
    assert set(split["uncertainty_fit"]) <= set(split["training"]) - set(split["first_stage_training"])
    export, standard, fit = calls[-8], calls[-7], calls[-1]
    # the refiner: learnt from the exported, standardised model's own outputs on the 1 mm training subjects, at its
    # default sampling, before the error model is fitted on the refined model
    refiner_data, refiner = calls[-6], calls[-5]
    assert value(refiner_data, "--model") == value(refiner, "--model") == str(work / "brats-2mm")
    assert Path(value(refiner_data, "--data")) == Path(value(refiner, "--data")) == work / "first_stage_training"
    assert value(refiner_data, "--out") == value(refiner, "--report") and "all" in refiner_data
    assert not {"--steps", "--samples", "--solver", "--strength"} & set(refiner_data)
    assert export[1] == str(work / "runs" / "diffusion2")
    assert export[export.index("--out") + 1] == str(work / "brats-2mm")
    # the error model: the exported model at its defaults on the uncertainty_fit subjects, fitted into it, and
    # kept where it beats the samples' spread on both validation sets, evaluated the same way
    evaluated = {value(c, "--data"): value(c, "--out") for c in calls[-4:-1]}
    for c in calls[-4:-1]:
        assert value(c, "--model") == str(work / "brats-2mm") and "--uncertainty" in c and "all" in c
        assert not {"--steps", "--samples", "--solver", "--strength"} & set(c)
    assert value(fit, "--model") == str(work / "brats-2mm")
    assert evaluated[value(fit, "--data")] == value(fit, "--report") and value(fit, "--data") == str(work / "uncertainty_fit")
    checks = [fit[i + 1].split("=") for i, a in enumerate(fit) if a == "--validation"]
    assert [(n, d) for n, d, _ in checks] == [(p, str(work / p)) for p in ("validation", "validation_2mm")]
    assert all(evaluated[d] == r for _, d, r in checks)
    # the export sets the sampling the bundled model was released with
    index = json.loads((BRATS_RECIPE.parents[1] / "mrtranslate" / "bundled" / "brats-2mm"
                                           / "model_index.json").read_text())
    flag = lambda name: [export[i + 1] for i, a in enumerate(export) if a == name]  # noqa: E731
    assert (int(*flag("--default-steps")), int(*flag("--default-samples")), float(*flag("--default-eta")),
            *flag("--default-solver")) == (index["default_steps"], index["default_samples"], index["default_eta"],
                                           index["default_solver"])
    assert {k: float(v) for k, v in (e.split("=") for e in flag("--pair-strength"))} == index["pair_strength"]
    assert dict(e.split("=") for e in flag("--best-source")) == index["best_source"]
    # the output standardisation: landmarks of the first stage's 1 mm training scans, for the targets released
    assert value(standard, "--model") == str(work / "brats-2mm")
    assert Path(value(standard, "--data")) == work / "first_stage_training"
    assert sorted(standard[standard.index("--to") + 1:]) == sorted(index["output_standard"]["landmarks"])
    assert {p.name for p in BRATS_RECIPE.glob("*.json")} - {"split.json"} == {
        Path(c[c.index("--config") + 1]).name for c in calls if "--config" in c}
    # a second run resumes every stage and keeps the pack
    again = _run_recipe(roots, work, shim, tmp_path / "calls.jsonl")
    stages = ("autoencoder", "spade", "diffusion", "refiner")
    assert all("--resume" in c for c in again if c[:2] in (["train", s] for s in stages))
    assert len(again) == 15 and not any(c[:2] == ["train", "encode"] for c in again)
    (roots[0] / every[0]).rename(tmp_path / "gone")
    done = subprocess_run_recipe_fails(roots, tmp_path / "w2", shim)
    assert every[0] in done


def subprocess_run_recipe_fails(roots: list[Path], work: Path, shim: Path) -> str:
    import os
    import subprocess

    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}", "SHIM_LOG": os.devnull}
    done = subprocess.run(["bash", str(BRATS_RECIPE / "train.sh"), *map(str, roots), str(work), "cpu"], env=env,
                          capture_output=True, text=True)
    assert done.returncode != 0
    return done.stderr


def test_a_residual_unet_starts_as_ms_spade_and_learns_the_correction(chain: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from mrtranslate.training.diffusion import DiffusionStage
    from mrtranslate.training.stage import quantized

    seen: list[dict[str, torch.Tensor]] = []
    original = DiffusionStage.train_step

    def record(self, batch, step):
        noise_sd, self.cfg.cond_noise = self.cfg.cond_noise, 0.0
        clean = self.batch(step)["cond"]  # the same draw of step ``step``, without the perturbation
        self.cfg.cond_noise = noise_sd
        z_tgt = quantized(self.vqgan, batch["tgt_codes"])
        out = original(self, batch, step)
        seen.append({"cond": batch["cond"].clone(), "clean": clean, "z_tgt": z_tgt, "loss": out["loss"]})
        return out

    monkeypatch.setattr(DiffusionStage, "train_step", record)
    run = tmp_path / "residual"
    cfg = diffusion_config(scheduler={"prediction_type": "residual"}, steps=2, cond_noise=0.1)
    train("diffusion", run, _data_of(chain), cfg, first_stage=str(chain["spade"]), progress=False)
    # step 0: the zero-initialised UNet predicts no correction, so the loss is MSE(z_tgt, perturbed MS-SPADE)
    first = seen[0]
    assert float(first["loss"]) == pytest.approx(float(((first["z_tgt"] - first["cond"]) ** 2).mean()), rel=1e-5)
    perturbation = first["cond"] - first["clean"]
    assert float(perturbation.std()) == pytest.approx(0.1, rel=0.2)  # cond_noise perturbed the cached output
    tensors, _ = load_checkpoint(run / "checkpoint")
    assert tensors["model/unet/out.2.weight"].abs().sum() > 0  # the correction trains
    model = tmp_path / "model"
    assert main(["export", str(run), "--out", str(model), "-q"]) == 0
    assert ALDMPipeline.from_pretrained(model).scheduler.config.prediction_type == "residual"
    # a UNet that predicts another target is refused as a start, in one line, before any data is read
    with pytest.raises(UsageError, match="predicts 'residual'.*'sample'"):
        train("diffusion", tmp_path / "x", _data_of(chain), diffusion_config(init=str(model),
              scheduler={"prediction_type": "sample"}), first_stage=str(chain["spade"]), progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="cond_noise"):
        train("diffusion", tmp_path / "y", _data_of(chain), diffusion_config(cond_noise=-1),
              first_stage=str(chain["spade"]), progress=False)


def test_spade_and_diffusion_train_from_a_latent_pack_exactly_as_from_the_images(chain: dict[str, Path],
                                                                                tmp_path: Path) -> None:
    pack = tmp_path / "data.safetensors"
    assert main(["train", "encode", "--data", _data_of(chain), "--first-stage", str(chain["autoencoder"]),
                 "--out", str(pack), "--quiet"]) == 0
    spade_cfg = write_json(tmp_path / "spade.json", spade_config(cycle_weight=0.5))
    assert main(["train", "spade", "--data", str(pack), "--run", str(tmp_path / "spade"), "--config", str(spade_cfg),
                 "--first-stage", str(chain["autoencoder"]), "--quiet"]) == 0
    # the same batches of the same latents: the same weights, moments and losses as training from the folder
    assert checkpoint_differences(chain["spade"], tmp_path / "spade") == []
    assert _rows(tmp_path / "spade") == _rows(chain["spade"])
    record = json.loads((tmp_path / "spade" / "run.json").read_text())
    assert record["data"]["pack"] == str(pack.resolve()) and record["data"]["n_subjects"] >= 2
    assert main(["train", "diffusion", "--data", str(pack), "--run", str(tmp_path / "d"), "--first-stage",
                 str(chain["spade"]), "--config", str(write_json(tmp_path / "d.json", diffusion_config())),
                 "--quiet"]) == 0  # the spade run kept the encoder and quantizer: the same key
    # a pack of other first-stage weights is refused in one line, before anything is written
    with pytest.raises(UsageError, match="another first stage"):
        train("spade", tmp_path / "x", str(pack), spade_config(), first_stage=str(save_tiny(tmp_path / "m", seed=9)),
              progress=False)
    assert not (tmp_path / "x").exists()
    from mrtranslate.training.packs import write_pack

    with pytest.raises(UsageError, match="exists"):
        write_pack(_data_of(chain), load_first_stage(chain["autoencoder"]), pack, torch.device("cpu"), progress=False)
    with pytest.raises(UsageError, match="not a latent pack"):
        train("spade", tmp_path / "y", str(chain["spade"] / "latents-0-of-1.safetensors"), spade_config(),
              first_stage=str(chain["autoencoder"]), progress=False)


def test_pairs_whose_ms_spade_output_diverged_are_never_drawn_for_the_unet() -> None:
    from mrtranslate.training.data import sample_pairs
    from mrtranslate.training.diffusion import diverged_pairs_excluded

    n, m = 3, 4
    available = torch.ones(n, m, dtype=torch.bool)
    available[2, 3] = False
    translated = torch.rand(n, m, m, 2, 3, 3, 3)
    translated[1, 2, 1, :, 0, 0, 0] = 5e4  # subject 1, T2 -> T1ce diverged in one voxel
    allowed = diverged_pairs_excluded(translated, available)
    assert (~allowed).nonzero().tolist() == [[1, 2, 1]]
    drawn = set()
    for step in range(200):
        subjects, src, tgt = sample_pairs(available, 8, step_generator(0, step), allowed=allowed)
        drawn |= set(zip(subjects.tolist(), src.tolist(), tgt.tolist()))
    assert (1, 2, 1) not in drawn and all(s != t and available[i, s] and available[i, t] for i, s, t in drawn)
    assert len(drawn) == 3 * 12 - 1 - 6  # every other pair of the subjects' scans is drawn
    # nothing diverged: the draws are exactly those without the argument (a run resumes as it trained)
    fine = torch.ones(n, m, m, dtype=torch.bool)
    for step in range(5):
        a = sample_pairs(available, 8, step_generator(0, step), allowed=fine)
        b = sample_pairs(available, 8, step_generator(0, step))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
