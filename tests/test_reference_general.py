"""mrtranslate's ALDM is general, not fitted to one reference file.

An independent functional implementation of the authors' computation (tests/_official_functional.py) is
first proven against the authors' own numbers (../shared/reference/aldm-tiny). Then random checkpoints in
the authors' layout, of sizes that differ from aldm-tiny in every dimension, are converted with the CLI,
loaded with ALDMPipeline and compared with that implementation stage by stage (checkpoints and yaml from
tests/_official_checkpoints.py).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import _official_checkpoints as oc
import _official_functional as of
from mrtranslate.cli import main as cli_main
from mrtranslate.pipeline import ALDMPipeline, SamplingOptions

TOL = 1e-4

# A: 3 VQ levels, 2 res blocks, 3 latent channels, 3 GroupNorm groups; UNet 64 channels x (1, 2, 3),
#    attention only at factor 2, 16-channel heads; 16 x 32 x 48 images; 7 DDIM steps (8 timesteps).
SIZES_A = oc.OfficialSizes(
    image=(16, 32, 48), ch=12, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=3, embed_dim=3, n_embed=40,
    num_groups=3, spade_nf=6, model_channels=64, channel_mult=(1, 2, 3), unet_res_blocks=2,
    attention_resolutions=(2,), num_head_channels=16,
)
# B: 2 VQ levels (factor 2), 3 res blocks, z_channels 5 != embed_dim 2, 5 groups; UNet with 5 res blocks a
#    level (12 input and 12 output blocks: two-digit indices), attention only in the middle block, a head
#    count (num_heads 2) instead of a head width; a 600-step schedule with other betas; 28 x 8 x 12 images
#    (the UNet's deepest level is 7 x 2 x 3); 4 DDIM steps.
SIZES_B = oc.OfficialSizes(
    image=(28, 8, 12), ch=10, ch_mult=(1, 2), num_res_blocks=3, z_channels=5, embed_dim=2, n_embed=25,
    num_groups=5, spade_nf=5, model_channels=64, channel_mult=(1, 2), unet_res_blocks=5,
    attention_resolutions=(), num_heads=2, linear_start=0.001, linear_end=0.02, timesteps=600,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These networks are tiny: a second intra-op thread only adds synchronisation (and, on a shared
    machine, waits for a free core). One thread for this module, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# -- the independent implementation against the authors' numbers ------------------------------------
def _tiny_sizes(reference_dir: Path) -> oc.OfficialSizes:
    cfg = json.loads((reference_dir / "config.json").read_text())
    fs, u = cfg["first_stage"], cfg["unet"]
    dd = fs["ddconfig"]
    return oc.OfficialSizes(
        image=(32, 48, 32), ch=dd["ch"], ch_mult=tuple(dd["ch_mult"]), num_res_blocks=dd["num_res_blocks"],
        z_channels=dd["z_channels"], embed_dim=fs["embed_dim"], n_embed=fs["n_embed"], num_groups=dd["num_groups"],
        spade_nf=fs["spade_nf"], spade_hidden=fs["spade_hidden"], model_channels=u["model_channels"],
        channel_mult=tuple(u["channel_mult"]), unet_res_blocks=u["num_res_blocks"],
        attention_resolutions=tuple(u["attention_resolutions"]), num_head_channels=u["num_head_channels"],
    )


def test_generator_reproduces_the_reference_layout(reference_dir: Path) -> None:
    """For aldm-tiny's sizes the generator writes exactly the authors' keys and shapes (LDM: plus the
    schedule buffers the authors' code registers), and the authors' schedule buffers bit for bit."""
    vq_ref = torch.load(reference_dir / "official_vqgan_stage2.ckpt", weights_only=True)["state_dict"]
    ldm_ref = torch.load(reference_dir / "official_ldm.ckpt", weights_only=True)["state_dict"]
    vq, ldm = oc.random_official_states(_tiny_sizes(reference_dir), seed=0)
    assert {k: tuple(v.shape) for k, v in vq.items()} == {k: tuple(v.shape) for k, v in vq_ref.items()}
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    assert {k: tuple(v.shape) for k, v in ldm_ref.items()}.items() <= shapes.items()
    assert set(shapes) - set(ldm_ref) <= set(of.ldm_schedule(0.0015, 0.0195, 1000))
    for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "scale_factor"):
        assert torch.equal(ldm[k], ldm_ref[k]), k


def test_functional_implementation_matches_the_authors_numbers(reference_dir: Path) -> None:
    vec = load_file(str(reference_dir / "vectors.safetensors"))
    vq = torch.load(reference_dir / "official_vqgan_stage2.ckpt", weights_only=True)["state_dict"]
    ldm = torch.load(reference_dir / "official_ldm.ckpt", weights_only=True)["state_dict"]
    groups, heads = _tiny_sizes(reference_dir).num_groups, _tiny_sizes(reference_dir).num_head_channels
    ema, fs = of.ema_unet_state(ldm), of.sub(ldm, "first_stage_model.")  # the LDM's own first stage
    assert all(torch.equal(fs[k], vq[k]) for k in fs)
    with torch.no_grad():
        z_e = of.vq_encode(vq, vec["input"], groups)
        z_q, codes = of.vq_quantize(vq, z_e)
        assert rel(z_e, vec["z_e"]) < TOL
        assert torch.equal(codes, vec["codes"])
        assert rel(z_q, vec["z_q"]) < TOL
        assert rel(of.vq_decode(vq, vec["z_q"], groups), vec["recon"]) < TOL
        per_class = of.spade(vq, vec["z_q"].expand(4, -1, -1, -1, -1), torch.arange(4))
        for c in range(4):
            assert rel(per_class[c : c + 1], vec[f"spade_{c}"]) < TOL
        t = vec["targets"]
        cond = torch.cat([vec["z_q"].expand(len(t), -1, -1, -1, -1), per_class[t]], dim=1)
        probe = of.unet(ema, torch.cat([vec["x_T"], cond], dim=1), vec["unet_probe_t"], t, num_head_channels=heads)
        assert rel(probe, vec["unet_probe_out"]) < TOL
        p = of.ddim_parameters(ldm["alphas_cumprod"], 5, 1.0)
        for ours, theirs in (("timesteps", "ddim_timesteps"), ("alphas", "ddim_alphas"),
                             ("alphas_prev", "ddim_alphas_prev"), ("sigmas", "ddim_sigmas_eta1")):
            assert torch.equal(torch.from_numpy(p[ours]), vec[theirs]), ours

        def eps(x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
            return of.unet(ema, torch.cat([x, cond], dim=1), ts, t, num_head_channels=heads)

        lat = of.ddim_sample(eps, vec["x_T"], ldm["alphas_cumprod"], 5, 0.0)
        assert rel(lat, vec["ddim_samples"]) < TOL
        assert rel(of.vq_decode(fs, lat, groups), vec["translated"]) < TOL


# -- other sizes: converted with the CLI, loaded with ALDMPipeline, compared stage by stage ---------
@dataclasses.dataclass
class Case:
    sizes: oc.OfficialSizes
    steps: int
    targets: list[int]
    seed: int
    vq: dict[str, torch.Tensor]  # the authors' state dicts as written
    ldm: dict[str, torch.Tensor]
    pipe: ALDMPipeline
    raw_pipe: ALDMPipeline
    image: torch.Tensor

    def heads(self) -> dict[str, int]:
        return {"num_head_channels": self.sizes.num_head_channels, "num_heads": self.sizes.num_heads}

    def eps_fn(self, z_q: torch.Tensor, targets: torch.Tensor):
        ema = of.ema_unet_state(self.ldm)
        z = z_q.expand(len(targets), -1, -1, -1, -1)
        cond = torch.cat([z, of.spade(self.vq, z, targets)], dim=1)
        return lambda x, ts: of.unet(ema, torch.cat([x, cond], dim=1), ts, targets, **self.heads())


CASES = {"A": (SIZES_A, 7, [3, 0, 2], 11), "B": (SIZES_B, 4, [1, 3], 23)}


def _convert(paths: dict[str, Path], out: Path, *extra: str) -> ALDMPipeline:
    args = ["convert", "--vqgan", str(paths["vqgan"]), "--ldm", str(paths["ldm"]), "--config", str(paths["config"])]
    assert cli_main([*args, "--out", str(out), "--quiet", *extra]) == 0
    return ALDMPipeline.from_pretrained(out)


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    sizes, steps, targets, seed = CASES[request.param]
    root = tmp_path_factory.mktemp(f"general-{request.param}")
    paths = oc.write_official(sizes, root / "official", seed)
    ckpt = {k: torch.load(paths[k], weights_only=True)["state_dict"] for k in ("vqgan", "ldm")}
    return Case(
        sizes, steps, targets, seed, ckpt["vqgan"], ckpt["ldm"],
        pipe=_convert(paths, root / "ema"), raw_pipe=_convert(paths, root / "raw", "--weights", "raw"),
        image=oc.smooth_volume(sizes.image, seed + 100),
    )


def test_sizes_differ_from_the_shared_reference(reference_dir: Path) -> None:
    tiny = _tiny_sizes(reference_dir)
    for sizes, steps, _, _ in CASES.values():
        for field in ("image", "ch", "ch_mult", "num_res_blocks", "z_channels", "embed_dim", "n_embed", "num_groups",
                      "spade_nf", "model_channels", "channel_mult", "unet_res_blocks", "attention_resolutions",
                      "num_head_channels"):
            assert getattr(sizes, field) != getattr(tiny, field), field
        assert steps != 5


def test_first_stage(case: Case) -> None:
    g = case.sizes.num_groups
    with torch.no_grad():
        z_e = of.vq_encode(case.vq, case.image, g)
        z_q, codes = of.vq_quantize(case.vq, z_e)
        assert tuple(z_q.shape[2:]) == case.sizes.latent and z_q.shape[1] == case.sizes.embed_dim
        assert codes.unique().numel() >= 5  # the quantizer really chooses among entries
        ours = case.pipe.vqgan.encode_continuous(case.image)
        our_q, our_codes = case.pipe.vqgan.quantize(ours)
        assert rel(ours, z_e) < TOL
        assert torch.equal(our_codes.reshape(codes.shape), codes)
        assert rel(our_q, z_q) < TOL
        assert rel(case.pipe.encode(case.image), z_q) < TOL
        assert rel(case.pipe.decode(z_q), of.vq_decode(case.vq, z_q, g)) < TOL


def test_ms_spade_each_class_and_mixed_batch(case: Case) -> None:
    with torch.no_grad():
        z_q, _ = of.vq_quantize(case.vq, of.vq_encode(case.vq, case.image, case.sizes.num_groups))
        outs = [of.spade(case.vq, z_q, torch.tensor([c])) for c in range(4)]
        for c in range(4):
            assert rel(case.pipe.target_like(z_q, [c]), outs[c]) < TOL
        assert min(rel(outs[a], outs[b]) for a in range(4) for b in range(a)) > 1e-2  # classes really differ
        mixed = case.pipe.target_like(z_q, [2, 0, 3, 2])
        for i, c in enumerate([2, 0, 3, 2]):
            assert rel(mixed[i : i + 1], outs[c]) < TOL


def test_unet_probe_at_several_timesteps_ema_and_raw(case: Case) -> None:
    """One batch with a different timestep and class per sample, with the EMA and with the raw weights."""
    T = case.sizes.timesteps
    gen = torch.Generator().manual_seed(case.seed)
    x = torch.randn((4, 3 * case.sizes.embed_dim, *case.sizes.latent), generator=gen)
    t, y = torch.tensor([T - 1, 1, T // 2 + 7, (3 * T) // 4]), torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        want = of.unet(of.ema_unet_state(case.ldm), x, t, y, **case.heads())
        assert rel(case.pipe.unet(x, t, y), want) < TOL
        want_raw = of.unet(of.sub(case.ldm, "model.diffusion_model."), x, t, y, **case.heads())
        assert rel(case.raw_pipe.unet(x, t, y), want_raw) < TOL
    assert rel(want_raw, want) > 1e-2  # EMA and raw weights give clearly different outputs


def test_ddim_coefficients(case: Case) -> None:
    acp = case.ldm["alphas_cumprod"]
    for eta in (0.0, 1.0):
        want = of.ddim_parameters(acp, case.steps, eta)
        got = case.pipe.scheduler.coefficients(case.steps, eta)
        assert got["timesteps"].tolist() == want["timesteps"].tolist()
        for k in ("alphas", "alphas_prev", "sigmas"):
            assert torch.equal(got[k], torch.from_numpy(want[k])), (k, eta)
    n_ts = len(range(0, case.sizes.timesteps, case.sizes.timesteps // case.steps))
    assert len(want["timesteps"]) == n_ts  # S = 7 over 1000 steps gives 8 timesteps


def test_ddim_eta0_samples_and_decoded_translation(case: Case) -> None:
    y = torch.tensor(case.targets)
    shape = (len(y), case.sizes.embed_dim, *case.sizes.latent)
    x_T = torch.randn(shape, generator=torch.Generator().manual_seed(case.seed + 1))
    with torch.no_grad():
        z_q, _ = of.vq_quantize(case.vq, of.vq_encode(case.vq, case.image, case.sizes.num_groups))
        want = of.ddim_sample(case.eps_fn(z_q, y), x_T, case.ldm["alphas_cumprod"], case.steps, 0.0)
        got = case.pipe.sample(z_q, case.targets, steps=case.steps, eta=0.0, x_T=x_T, progress=False)
        assert rel(got, want) < TOL
        assert rel(case.pipe.decode(got), of.vq_decode(case.vq, want, case.sizes.num_groups)) < TOL


def test_translate_eta1_with_seeded_generator(case: Case) -> None:
    """eta = 1: the pipeline draws x_T, then one N(0, I) per update, from the generator; the same draws are
    handed to the functional sampler as explicit noise tensors."""
    y = torch.tensor(case.targets)
    shape = (len(y), case.sizes.embed_dim, *case.sizes.latent)
    sigmas = of.ddim_parameters(case.ldm["alphas_cumprod"], case.steps, 1.0)["sigmas"]
    assert sigmas.min() > 1e-2  # every update adds noise, so unmatched draws could not pass
    n_updates = len(sigmas)
    draws = torch.Generator().manual_seed(case.seed + 2)
    x_T = torch.randn(shape, generator=draws)
    noises = [torch.randn(shape, generator=draws) for _ in range(n_updates)]
    with torch.no_grad():
        z_q, _ = of.vq_quantize(case.vq, of.vq_encode(case.vq, case.image, case.sizes.num_groups))
        lat = of.ddim_sample(case.eps_fn(z_q, y), x_T, case.ldm["alphas_cumprod"], case.steps, 1.0, noises)
        want = of.vq_decode(case.vq, lat, case.sizes.num_groups)
        got = case.pipe.translate(case.image, case.targets, SamplingOptions(steps=case.steps, eta=1.0),
                                  generator=torch.Generator().manual_seed(case.seed + 2), progress=False)
        assert rel(got, want) < TOL
