"""The published settings train as the authors' code does, step for step.

For each stage, the same weights (a random checkpoint in the authors' format, converted for mrtranslate), the
same batch and the same random draws go through one optimiser step of ``mrtranslate.training`` with the
``recipes/aldm-published`` preset, and through the authors' own LightningModule (``VQModel`` stage 1 and 2,
``LatentDiffusion``), built from their yaml configs with only the network sizes made tiny (see
``_official_training`` for how their modules are imported). Loss and updated weights agree to a relative error
below 1e-4. A published value that drifts, in the preset or in ``train``'s defaults, fails here.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from _official_checkpoints import OfficialSizes, random_official_states, smooth_volume, write_official
from _official_functional import vq_encode
from _official_training import lightning_step, official_tree, published_configs, scaled_lr
from mrtranslate.cli import main as cli_main
from mrtranslate.convert import convert_to_folder
from mrtranslate.errors import ModelFormatError, UsageError
from mrtranslate.pipeline import ALDMPipeline
from mrtranslate.training.autoencoder import AutoencoderStage
from mrtranslate.training.config import CONFIGS, load_config
from mrtranslate.training.data import ImageSet, random_flips
from mrtranslate.training.diffusion import DiffusionStage
from mrtranslate.training.distributed import DistContext
from mrtranslate.training.first_stage import FirstStage
from mrtranslate.training.runs import RunFolder
from mrtranslate.training.spade import SpadeStage
from mrtranslate.training.stage import Stage

PUBLISHED = Path(__file__).resolve().parents[1] / "recipes" / "aldm-published"
# The authors' VQModel builds MS-SPADE with nf 128 and hidden width 64 whatever the config says; the UNet's
# GroupNorm has 32 groups, so its widths are multiples of 32. One code per latent voxel of the test batch (see
# the fixture).
SIZES = OfficialSizes(image=(16, 16, 16), ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4,
                      n_embed=2048, num_groups=4, spade_nf=128, model_channels=32, channel_mult=(1, 2),
                      unet_res_blocks=1, attention_resolutions=(2,), num_head_channels=32)
BATCH = 2
TOL = 1e-4
# Settings where train's defaults differ from the published preset, on purpose (docs/training.md says why).
DEFAULTS_DIFFER = {"autoencoder": {"crop", "amp"}, "spade": {"amp"}, "diffusion": {"amp"}}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Random weights in the authors' checkpoint format (EMA = raw weights, no EMA update yet), converted."""
    folder = tmp_path_factory.mktemp("official")
    paths = write_official(SIZES, folder / "ckpt", seed=21)
    vq, ldm = random_official_states(SIZES, seed=21)
    vq = {k: v for k, v in vq.items() if not k.startswith("loss.")}  # their discriminator: their own init
    # The codebook: the encoder's output at every latent voxel of the test volumes. Each voxel's nearest code is
    # then its own, and two codes nearly as near are nearly equal, so that the rounding differences of two
    # implementations cannot pick codes that differ by more than rounding (random codes can leave a voxel
    # within 1e-6 of a boundary between two distant codes, and one implementation on each side of it).
    x = smooth_volume(SIZES.image, seed=5, batch=4)
    z_e = vq_encode(vq, x, SIZES.num_groups)
    vq["quantize.embedding.weight"] = z_e.permute(0, 2, 3, 4, 1).reshape(-1, SIZES.embed_dim).contiguous()
    assert vq["quantize.embedding.weight"].shape[0] == SIZES.n_embed
    ldm.update({"first_stage_model." + k: v for k, v in vq.items()})
    raw = {k: v for k, v in ldm.items() if k.startswith("model.diffusion_model.")}
    for k, v in raw.items():
        ldm["model_ema." + k[len("model."):].replace(".", "")] = v.clone()
    ldm["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int32)
    for key, state in (("vqgan", vq), ("ldm", ldm)):
        torch.save({"state_dict": state, "global_step": 0}, paths[key])
    model = convert_to_folder(folder / "model", vqgan=paths["vqgan"], ldm=paths["ldm"], config=paths["config"])
    return {"paths": paths, "model": model, "source": x[:BATCH], "target": x[BATCH:], "yaml": published_configs()}


def _ours(stage: str, **overrides):
    """Our config of ``stage``: the published preset at the test's batch size."""
    return load_config(stage, PUBLISHED / f"{stage}.json", {"batch_size": BATCH, **overrides})


def _tiny_vq(params: dict, ckpt: Path) -> dict:
    """The authors' VQModel params of a yaml, with the tiny network sizes and our checkpoint."""
    params = copy.deepcopy(params)
    params["ddconfig"].update(ch=SIZES.ch, ch_mult=list(SIZES.ch_mult), num_groups=SIZES.num_groups,
                              num_res_blocks=SIZES.num_res_blocks, resolution=SIZES.image[0])
    params.update(n_embed=SIZES.n_embed, embed_dim=SIZES.embed_dim, ckpt_path=str(ckpt))
    return params


def _vq_params(model_yaml: dict, ckpt: Path) -> dict:
    params = _tiny_vq(model_yaml["model"]["params"], ckpt)
    # Their discriminator's default depth (3) needs 24 voxels a side; one layer fits the tiny volumes. As
    # published (disc_factor 0) it weighs nothing; were disc_factor to change, the step would differ.
    params["lossconfig"]["params"]["disc_num_layers"] = 1
    return params


def _moments(opt: torch.optim.Optimizer, names: dict[torch.nn.Parameter, str]) -> dict[str, dict[str, torch.Tensor]]:
    return {names[p]: st for p, st in opt.state.items() if st}


def _same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], kept: dict[str, torch.Tensor],
                  lr: float) -> None:
    """The same weights to TOL: all of them together, and each tensor on its well-determined elements (``kept``).

    Adam's first update is lr * g / (|g| + eps): where a gradient is rounding noise (a bias that a following
    norm removes, an attention key bias) the update's sign is noise too, so those elements may differ by up to
    two steps of lr; elsewhere the updates agree (checked on the updates themselves in ``_compare``)."""
    names = sorted(theirs)
    assert rel(torch.cat([ours[n].flatten() for n in names]), torch.cat([theirs[n].flatten() for n in names])) < TOL
    for n in names:
        if n in kept and kept[n].any():
            assert rel(ours[n][kept[n]], theirs[n][kept[n]]) < TOL, n
        assert float((ours[n].double() - theirs[n].double()).abs().max()) <= 2.5 * lr, n


def _compare(
    ours: torch.nn.Module, ours_opt: torch.optim.Optimizer, theirs: torch.nn.Module, theirs_opt: torch.optim.Optimizer,
    before: dict[str, torch.Tensor], prefix: str = "",
) -> dict[str, torch.Tensor]:
    """One optimiser step gave the same weights: the same optimiser and settings, the same moments (the
    gradients, through both betas), the same updated weights and the same updates, to TOL each. Returns the
    well-determined elements of each trained tensor (see ``_same_weights``)."""
    assert type(ours_opt) is type(theirs_opt)
    for ga, gb in zip(ours_opt.param_groups, theirs_opt.param_groups, strict=True):
        assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-12)
        assert {k: ga[k] for k in ("betas", "eps", "weight_decay", "amsgrad")} == {
            k: gb[k] for k in ("betas", "eps", "weight_decay", "amsgrad")}
    mine = _moments(ours_opt, {p: n for n, p in ours.named_parameters()})
    other = _moments(theirs_opt, {p: n[len(prefix):] for n, p in theirs.named_parameters() if n.startswith(prefix)})
    assert sorted(mine) == sorted(other) and mine  # the same parameters received gradients
    names = sorted(other)
    for key in ("exp_avg", "exp_avg_sq"):
        assert rel(torch.cat([mine[n][key].flatten() for n in names]),
                   torch.cat([other[n][key].flatten() for n in names])) < TOL
    after_ours = {k: v.detach() for k, v in ours.state_dict().items()}
    after = {k[len(prefix):]: v.detach() for k, v in theirs.state_dict().items()
             if k.startswith(prefix) and not k.startswith("loss.")}
    assert set(after_ours) == set(after) == set(before)
    for n in set(before) - set(names):  # frozen, or without a gradient: untouched on both sides
        assert torch.equal(after_ours[n], before[n]) and torch.equal(after[n], before[n]), n
    rms = torch.cat([other[n]["exp_avg"].flatten() for n in names]).double().pow(2).mean().sqrt()
    kept = {n: other[n]["exp_avg"].double().abs() > 1e-3 * rms for n in names}
    lr = ours_opt.param_groups[0]["lr"]
    _same_weights(after_ours, after, kept, lr)
    delta = [torch.cat([(a[n].double() - before[n].double())[kept[n]] for n in names]) for a in (after_ours, after)]
    assert delta[1].abs().max() > 0 and rel(*delta) < TOL
    return kept


def _state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k.startswith(prefix)}


def test_autoencoder_step_equals_the_authors_vqmodel_stage_1(official: dict) -> None:
    cfg = official["yaml"]["stage1"]
    pipe = ALDMPipeline.from_pretrained(official["model"])
    before = _state(pipe.vqgan)
    x = official["source"]

    stage = AutoencoderStage(_ours("autoencoder", model=pipe.vqgan.config.to_dict()), DistContext(torch.device("cpu")),
                             None, init_vqgan=pipe.vqgan, progress=False)
    loss = stage.train_step({"x": x}, 0)["loss"]

    with official_tree("VQ-GAN"):
        from taming.models.vqgan import VQModel

        torch.manual_seed(0)  # their discriminator's initialisation
        model = VQModel(**_vq_params(cfg, official["paths"]["vqgan"]))
        model.learning_rate = scaled_lr(cfg, BATCH)
        losses, opts = lightning_step(model, {"source": x, "target": x, "target_class": torch.tensor([1, 2])})
    assert rel(loss, losses[0]) < TOL
    _compare(stage.vqgan, stage.optimizers["vqgan"], model, opts[0], before)
    assert float(losses[1]) == 0.0  # the discriminator's loss, times disc_factor 0


def test_spade_step_equals_the_authors_vqmodel_stage_2(official: dict) -> None:
    cfg = official["yaml"]["stage2"]
    pipe = ALDMPipeline.from_pretrained(official["model"])
    before = _state(pipe.vqgan)
    src, tgt = torch.tensor([0, 3]), torch.tensor([2, 1])
    with torch.no_grad():
        src_codes = pipe.vqgan.quantize(pipe.vqgan.encode_continuous(official["source"]))[1]
        tgt_codes = pipe.vqgan.quantize(pipe.vqgan.encode_continuous(official["target"]))[1]
    first = FirstStage(pipe.vqgan, dict(pipe.config.preprocessing), {"stage": "model"}, [])
    codes = torch.stack([src_codes, tgt_codes], dim=1).int()  # unused by train_step; the stage holds them
    available = torch.ones(BATCH, 4, dtype=torch.bool)
    stage = SpadeStage(_ours("spade"), DistContext(torch.device("cpu")), first, codes, available)
    loss = stage.train_step({"src_codes": src_codes, "tgt_codes": tgt_codes, "src": src, "tgt": tgt}, 0)["loss"]

    with official_tree("VQ-GAN"):
        from taming.models.vqgan import VQModel

        torch.manual_seed(0)  # their discriminator's initialisation
        model = VQModel(**_vq_params(cfg, official["paths"]["vqgan"]))
        model.learning_rate = scaled_lr(cfg, BATCH)
        batch = {"source": official["source"], "target": official["target"], "target_class": tgt}
        losses, opts = lightning_step(model, batch)
    assert rel(loss, losses[0]) < TOL
    _compare(stage.vqgan, stage.optimizers["spade"], model, opts[0], before)
    theirs = model.state_dict()
    assert all(torch.equal(theirs[k], before[k]) for k in before if not k.startswith("spade."))
    assert float(losses[1]) == 0.0  # the latent discriminator's loss, times disc_factor 0


def test_diffusion_step_equals_the_authors_latent_diffusion(official: dict) -> None:
    cfg = official["yaml"]["ldm"]
    pipe = ALDMPipeline.from_pretrained(official["model"])
    before = _state(pipe.unet)
    src, tgt = torch.tensor([0, 3]), torch.tensor([2, 1])
    with torch.no_grad():
        src_codes = pipe.vqgan.quantize(pipe.vqgan.encode_continuous(official["source"]))[1]
        tgt_codes = pipe.vqgan.quantize(pipe.vqgan.encode_continuous(official["target"]))[1]
    # the authors' forward draws t = randint(0, T, (B,)) and then noise = randn_like(z) from the global generator
    torch.manual_seed(1234)
    t = torch.randint(0, cfg["model"]["params"]["timesteps"], (BATCH,))
    noise = torch.randn((BATCH, SIZES.embed_dim, *SIZES.latent))
    first = FirstStage(pipe.vqgan, dict(pipe.config.preprocessing), {"stage": "model"}, [])
    codes = torch.stack([src_codes, tgt_codes], dim=1).int()
    ours = _ours("diffusion", model=pipe.unet.config.to_dict())
    stage = DiffusionStage(ours, DistContext(torch.device("cpu")), first, codes, torch.ones(BATCH, 4, dtype=torch.bool),
                           init_unet=pipe.unet)
    batch = {"src_codes": src_codes, "tgt_codes": tgt_codes, "src": src, "tgt": tgt, "t": t, "noise": noise}
    loss = stage.train_step(batch, 0)["loss"]

    params = copy.deepcopy(cfg["model"]["params"])
    unet = params["unet_config"]["params"]
    unet.update(model_channels=SIZES.model_channels, channel_mult=list(SIZES.channel_mult),
                attention_resolutions=list(SIZES.attention_resolutions), num_res_blocks=SIZES.unet_res_blocks,
                num_head_channels=SIZES.num_head_channels, image_size=SIZES.latent[0])
    first_params = params["first_stage_config"]["params"]
    params["first_stage_config"]["params"] = _tiny_vq(first_params, official["paths"]["vqgan"])
    params.update(ckpt_path=str(official["paths"]["ldm"]), image_size=SIZES.latent[0])
    with official_tree("LDM"):
        from ldm.models.diffusion.ddpm import LatentDiffusion

        model = LatentDiffusion(**params)
        model.learning_rate = scaled_lr(cfg, BATCH)
        torch.manual_seed(1234)
        losses, opts = lightning_step(model, {"source": official["source"], "target": official["target"],
                                              "target_class": tgt})
    assert rel(loss, losses[0]) < TOL
    kept = _compare(stage.unet, stage.optimizers["unet"], model, opts[0], before,
                    prefix="model.diffusion_model.")
    # LitEma keeps a parameter's EMA under its name in the wrapper with the dots removed
    shadow = {n: model.model_ema.state_dict()[("diffusion_model." + n).replace(".", "")] for n in kept}
    assert sorted(f"unet/{n}" for n in kept) == sorted(stage.ema)
    ema = {n: stage.ema[f"unet/{n}"] for n in kept}
    _same_weights(ema, shadow, kept, stage.optimizers["unet"].param_groups[0]["lr"])
    moved = [torch.cat([(e[n].double() - before[n].double())[kept[n]] for n in kept]) for e in (ema, shadow)]
    assert moved[1].abs().max() > 0 and rel(*moved) < TOL
    assert stage.ema_updates == int(model.model_ema.num_updates) == 1


# ---- the published values themselves ----------------------------------------------------------------------
def test_the_published_preset_holds_the_authors_yaml_values() -> None:
    y = published_configs()
    ae, sp, df = (load_config(s, PUBLISHED / f"{s}.json") for s in ("autoencoder", "spade", "diffusion"))
    for ours, theirs in ((ae, y["stage1"]), (sp, y["stage2"]), (df, y["ldm"])):
        assert ours.lr == float(theirs["model"]["base_learning_rate"]) and ours.scale_lr
        assert ours.batch_size == theirs["data"]["params"]["batch_size"]
        assert ours.lr_schedule == "constant" and ours.warmup_steps == 0 and not ours.amp  # float32, no scheduler
    for ours in (ae, sp):
        assert tuple(ours.betas) == (0.5, 0.9) and ours.weight_decay == 0.0  # their Adam(lr, betas=(0.5, 0.9))
    loss1 = y["stage1"]["model"]["params"]["lossconfig"]["params"]
    assert (ae.codebook_weight, ae.disc_weight) == (loss1["codebook_weight"], loss1["disc_factor"]) == (0, 0)
    assert ae.perceptual_weight == 0.0 and ae.codebook_beta == 0.25 and ae.flip_prob == 0.1 and ae.crop is None
    assert ae.codebook_init == "uniform"  # VectorQuantizer2: embedding.weight.uniform_(-1 / n_e, 1 / n_e)
    dd = y["stage1"]["model"]["params"]["ddconfig"]
    vq = ae.vqgan_config()
    assert (vq.ch, list(vq.ch_mult), vq.num_res_blocks, vq.z_channels, vq.num_groups, vq.dropout) == (
        dd["ch"], dd["ch_mult"], dd["num_res_blocks"], dd["z_channels"], dd["num_groups"], dd["dropout"])
    p1 = y["stage1"]["model"]["params"]
    assert (vq.embed_dim, vq.n_embed, vq.num_classes) == (p1["embed_dim"], p1["n_embed"], p1["num_classes"])
    assert (vq.spade_nf, vq.spade_hidden, vq.spade_source_gate) == (128, 64, False)  # fixed in their code
    assert sp.adv_weight == y["stage2"]["model"]["params"]["lossconfig"]["params"]["disc_factor"] == 0
    assert (sp.l1_weight, sp.cycle_weight, sp.pair_weights, sp.source_gate) == (1.0, 0.0, None, False)
    # LatentDiffusion: torch AdamW defaults, LitEma(decay 0.9999) with its warm-up, t ~ U{0..T-1}, eps, MSE
    assert (tuple(df.betas), df.weight_decay, df.ema_decay, df.ema_warmup) == ((0.9, 0.999), 0.01, 0.9999, True)
    assert df.timestep_range is None and df.crop is None
    lp = y["ldm"]["model"]["params"]
    sched = df.scheduler_config()
    assert (sched.beta_start, sched.beta_end, sched.num_train_timesteps) == (
        lp["linear_start"], lp["linear_end"], lp["timesteps"])
    assert sched.prediction_type == "epsilon" and sched.scale_factor == 1.0 and "scale_factor" not in lp
    up = lp["unet_config"]["params"]
    unet = df.unet_config()
    assert (unet.model_channels, list(unet.channel_mult), unet.num_res_blocks, list(unet.attention_resolutions),
            unet.num_head_channels, unet.in_channels, unet.out_channels, unet.num_classes) == (
        up["model_channels"], up["channel_mult"], up["num_res_blocks"], up["attention_resolutions"],
        up["num_head_channels"], up["in_channels"], up["out_channels"], up["num_classes"])
    # the first stage the LDM trains on is the stage-2 VQ-GAN
    assert lp["first_stage_config"]["params"]["ddconfig"] == dd


@pytest.mark.parametrize("stage", ["autoencoder", "spade", "diffusion"])
def test_train_defaults_are_the_published_preset(stage: str) -> None:
    preset = json.loads((PUBLISHED / f"{stage}.json").read_text())
    defaults = CONFIGS[stage]().to_dict()
    resolved = load_config(stage, PUBLISHED / f"{stage}.json").to_dict()
    differ = sorted(k for k in resolved if resolved[k] != defaults[k])
    assert differ == sorted(DEFAULTS_DIFFER[stage])
    assert set(DEFAULTS_DIFFER[stage]) <= set(preset)


def test_a_scale_factor_other_than_one_is_refused(official: dict, tmp_path: Path, capsys) -> None:
    """The LDM code multiplies latents by scale_factor; ALDM is published with 1.0, the only value supported."""
    with pytest.raises(UsageError, match=r"scale_factor 0\.18 is not supported.*set scale_factor to 1\.0"):
        load_config("diffusion", overrides={"scheduler": {"scale_factor": 0.18}})
    model = tmp_path / "model"
    ALDMPipeline.from_pretrained(official["model"]).save_pretrained(model)
    sched = model / "scheduler" / "config.json"
    data = json.loads(sched.read_text())
    data["scale_factor"] = 0.18
    sched.write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match=r"scale_factor 0\.18 is not supported") as err:
        ALDMPipeline.from_pretrained(model)
    assert "\n" not in str(err.value)
    # on the command line: one line, exit code 2, before any work (the data folder need not exist)
    config = tmp_path / "diffusion.json"
    config.write_text(json.dumps({"scheduler": {"scale_factor": 0.5}}))
    assert cli_main(["train", "diffusion", "--data", str(tmp_path / "none"), "--run", str(tmp_path / "run"),
                     "--config", str(config), "--first-stage", str(model), "--quiet"]) == 2
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err_lines) == 1 and "scale_factor 0.5 is not supported" in err_lines[0]
    assert not (tmp_path / "run").exists()


RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Defaults that changed to the published values, with the values the bundled recipes trained with.
CHANGED = {"scale_lr": False, "codebook_weight": 1.0, "flip_prob": 0.0, "codebook_init": "normal", "adv_weight": 1.0}


BUNDLED_RECIPES = [p for folder in ("brats-2mm", "phantom-demo") for p in sorted((RECIPES / folder).glob("*.json"))
                   if p.name != "split.json"]


@pytest.mark.parametrize("path", BUNDLED_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_bundled_recipes_name_every_setting_whose_default_changed(path: Path) -> None:
    """So that they train as they did before the defaults became the published ones."""
    stage = "autoencoder" if path.name.startswith("decoder") else path.name.split("-")[0].removesuffix(".json")
    data = json.loads(path.read_text())
    fields = CONFIGS[stage]().to_dict()
    assert sorted(k for k in CHANGED if k in fields and k not in data) == []
    assert data["scale_lr"] is False


# ---- the settings the published preset adds ----------------------------------------------------------------
def test_the_learning_rate_scales_with_batch_and_processes_as_the_authors_main() -> None:
    """scale_lr: the optimiser runs at lr x batch_size x processes (batch_size is per process under torchrun)."""
    images = ImageSet(["a"], torch.zeros((1, 4, 16, 16, 16)), torch.ones(1, 4, dtype=torch.bool))
    model = {"ch": 8, "ch_mult": [1, 2], "num_groups": 4, "n_embed": 16, "spade_nf": 8, "spade_hidden": 8}
    cfg = load_config("autoencoder", overrides={"model": model, "crop": None, "batch_size": 6, "lr": 3e-4,
                                                "warmup_steps": 2})
    stage = AutoencoderStage(cfg, DistContext(torch.device("cpu")), images, progress=False)
    assert stage.lr == pytest.approx(3e-4 * 6)
    stage.set_lr(0)  # the warm-up's first step: half of it
    assert stage.lr == pytest.approx(3e-4 * 6 / 2)
    assert Stage(cfg, DistContext(torch.device("cpu"), world_size=2)).lr_scale == 12  # what two processes take
    cfg.scale_lr = False
    assert Stage(cfg, DistContext(torch.device("cpu"), world_size=2)).lr_scale == 1
    assert AutoencoderStage(cfg, DistContext(torch.device("cpu")), images, progress=False).lr == pytest.approx(3e-4)


def test_a_new_codebook_starts_as_the_authors_quantizer() -> None:
    images = ImageSet(["a"], torch.zeros((1, 4, 16, 16, 16)), torch.ones(1, 4, dtype=torch.bool))
    model = {"ch": 8, "ch_mult": [1, 2], "num_groups": 4, "n_embed": 64, "spade_nf": 8, "spade_hidden": 8}
    ctx = DistContext(torch.device("cpu"))
    codebooks = {}
    for init in ("uniform", "normal"):
        cfg = load_config("autoencoder", overrides={"model": model, "crop": None, "codebook_init": init})
        codebooks[init] = AutoencoderStage(cfg, ctx, images, progress=False).vqgan.quantize.embedding.weight.detach()
    assert codebooks["uniform"].abs().max() <= 1 / 64 and codebooks["uniform"].std() > 0.25 / 64
    assert codebooks["normal"].std() > 0.5  # torch's N(0, 1), what runs before this setting used
    with pytest.raises(UsageError, match="codebook_init = 'zeros': use one of uniform, normal"):
        load_config("autoencoder", overrides={"codebook_init": "zeros"})


def test_flips_each_axis_of_each_sample_with_the_given_probability() -> None:
    x = torch.arange(2 * 2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 2, 3, 4, 5)
    g = torch.Generator().manual_seed(0)
    assert random_flips(x, 0.0, g) is x and torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    assert torch.equal(random_flips(x, 1.0, g), x.flip(2, 3, 4))
    combos = [[d for d in range(3) if mask >> d & 1] for mask in range(8)]
    seen = torch.zeros(3)
    for seed in range(400):
        out = random_flips(x[:1], 0.1, torch.Generator().manual_seed(seed))[0]
        match = [axes for axes in combos if torch.equal(out, x[0].flip([d + 1 for d in axes]))]
        assert len(match) == 1  # the sample is itself with some axes reversed
        seen[match[0]] += 1
    assert ((seen / 400 - 0.1).abs() < 0.05).all()  # about 10% each (400 draws: 0.1 +- 0.015 std)


def test_a_run_saved_before_scale_lr_and_flips_resumes_with_them_off(tmp_path: Path) -> None:
    """Older runs' config.json lacks the new settings: they resume as they trained (not at the new defaults)."""
    folder = RunFolder(tmp_path / "run")
    folder.write_config(load_config("autoencoder"))
    data = json.loads((folder.path / "config.json").read_text())
    assert data["scale_lr"] is True and data["flip_prob"] == 0.1
    for key in ("scale_lr", "flip_prob", "codebook_init"):
        del data[key]
    (folder.path / "config.json").write_text(json.dumps(data))
    cfg = folder.read_config()
    assert (cfg.scale_lr, cfg.flip_prob, cfg.codebook_init) == (False, 0.0, "normal")
    assert load_config("autoencoder", overrides={k: v for k, v in data.items() if k != "stage"}).scale_lr
