"""ALDMPipeline: model folder round trip, sampling semantics, first-stage-only folders, load safety."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from _tiny import tiny_pipeline
from mrtranslate.errors import ModelFormatError, UsageError
from mrtranslate.pipeline import ALDMPipeline, SamplingOptions


def test_save_load_round_trip_is_exact(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "m")
    back = ALDMPipeline.from_pretrained(tmp_path / "m")
    for a, b in ((pipe.vqgan, back.vqgan), (pipe.unet, back.unet)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert back.config.to_dict() == pipe.config.to_dict()
    assert back.scheduler.config == pipe.scheduler.config
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(pipe.translate(x, [2], SamplingOptions(steps=2), generator=g1, progress=False),
                       back.translate(x, [2], SamplingOptions(steps=2), generator=g2, progress=False))
    files = sorted(str(p.relative_to(tmp_path / "m")) for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert files == ["README.md", "model_index.json", "scheduler/config.json", "unet/config.json",
                     "unet/model.safetensors", "vqgan/config.json", "vqgan/model.safetensors"]


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_pipeline().save_pretrained(tmp_path / "m")

    def refuse(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    ALDMPipeline.from_pretrained(tmp_path / "m")


def test_batched_targets_equal_one_at_a_time() -> None:
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    x_T = torch.randn(3, 4, 16, 16, 16)
    both = pipe.sample(z, [2, 3, 0], steps=3, eta=0.0, x_T=x_T, progress=False)
    for i, t in enumerate([2, 3, 0]):
        one = pipe.sample(z, [t], steps=3, eta=0.0, x_T=x_T[i : i + 1], progress=False)
        assert float((both[i : i + 1] - one).norm() / one.norm()) < 1e-5


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    a = pipe.sample(z, [1], steps=4, eta=1.0, generator=torch.Generator().manual_seed(7), progress=False)
    b = pipe.sample(z, [1], steps=4, eta=1.0, generator=torch.Generator().manual_seed(7), progress=False)
    c = pipe.sample(z, [1], steps=4, eta=1.0, generator=torch.Generator().manual_seed(8), progress=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_strength_runs_the_low_noise_steps_from_the_noised_spade_latent() -> None:
    """strength s < 1: start at the first DDIM timestep <= s*T from sqrt(a) spade + sqrt(1-a) x_T, then the
    usual updates; strength 1 is the published sampler (pure noise, every step)."""
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    x_T = torch.randn(2, 4, 16, 16, 16)
    targets = [1, 3]
    calls: list[int] = []
    forward = pipe.unet.forward

    def spy(x, t, y):
        calls.append(int(t[0]))
        return forward(x, t, y)

    pipe.unet.forward = spy
    full = pipe.sample(z, targets, steps=10, eta=0.0, x_T=x_T, progress=False)
    assert calls == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    assert torch.equal(full, pipe.sample(z, targets, steps=10, eta=0.0, x_T=x_T, progress=False, strength=1.0))

    calls.clear()
    got = pipe.sample(z, targets, steps=10, eta=0.0, x_T=x_T, progress=False, strength=0.35)
    assert calls == [301, 201, 101, 1]
    # the same by hand: coefficients from the schedule itself
    acp = pipe.scheduler.alphas_cumprod.double()
    spade = pipe.target_like(z.expand(2, -1, -1, -1, -1), targets).double()
    zs = z.expand(2, -1, -1, -1, -1).double()
    x = acp[301].sqrt() * spade + (1 - acp[301]).sqrt() * x_T.double()
    with torch.no_grad():
        for t, t_prev in ((301, 201), (201, 101), (101, 1), (1, 0)):
            eps = forward(torch.cat([x, zs, spade], 1).float(), torch.full((2,), t), torch.tensor(targets)).double()
            x0 = (x - (1 - acp[t]).sqrt() * eps) / acp[t].sqrt()
            x = acp[t_prev].sqrt() * x0 + (1 - acp[t_prev]).sqrt() * eps
    assert float((got.double() - x).norm() / x.norm()) < 1e-4
    assert float((got - full).norm() / full.norm()) > 1e-3

    # the pipeline's default comes from model_index.json
    pipe.config.default_strength = 0.35
    calls.clear()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    img = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    assert torch.equal(pipe.translate(img, [2], SamplingOptions(steps=10, eta=0.0), generator=g1, progress=False),
                       pipe.translate(img, [2], SamplingOptions(steps=10, eta=0.0, strength=0.35), generator=g2,
                                      progress=False))
    assert calls == [301, 201, 101, 1] * 2


@pytest.mark.parametrize("strength, match", [(-0.1, "use a number in"), (1.5, "use a number in"),
                                             (True, "use a number in"), (0.0005, "leaves no DDIM step")])
def test_bad_strength_is_refused(strength, match) -> None:
    pipe = tiny_pipeline()
    with pytest.raises(UsageError, match=match):
        pipe.sample(torch.zeros(1, 4, 16, 16, 16), [0], steps=10, strength=strength)


def test_first_stage_only_folder(tmp_path: Path) -> None:
    pipe = tiny_pipeline(first_stage_only=True)
    pipe.save_pretrained(tmp_path / "fs")
    assert not (tmp_path / "fs" / "unet").exists()
    back = ALDMPipeline.from_pretrained(tmp_path / "fs")
    z = back.encode(torch.zeros(1, 1, 32, 32, 32))
    assert back.decode(back.target_like(z, [3])).shape == (1, 1, 32, 32, 32)
    with pytest.raises(UsageError, match="first stage only"):
        back.sample(z, [3], steps=2)


def test_bad_inputs_to_methods() -> None:
    pipe = tiny_pipeline()
    with pytest.raises(UsageError, match="divisible"):
        pipe.encode(torch.zeros(1, 1, 31, 32, 32))
    with pytest.raises(UsageError, match="target class"):
        pipe.target_like(torch.zeros(1, 4, 16, 16, 16), [4])
    with pytest.raises(UsageError, match="steps"):
        pipe.sample(torch.zeros(1, 4, 16, 16, 16), [0], steps=0)


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize(
    "where, changes, match",
    [
        ("unet/config.json", {"model_channels": 10**7}, "model_channels"),
        ("vqgan/config.json", {"n_embed": 10**9}, "n_embed"),
        ("vqgan/config.json", {"_format_version": 99}, "newer"),
        ("model_index.json", {"components": ["vqgan", "unet", "scheduler", "../../etc"]}, "unknown component"),
        ("unet/config.json", {"in_channels": 9}, "in/out channels"),
        ("model_index.json", {"default_strength": -0.5}, "default_strength"),
        ("model_index.json", {"default_strength": 2.0}, "default_strength"),
    ],
)
def test_absurd_or_foreign_configs_are_refused_before_allocation(tmp_path: Path, where, changes, match) -> None:
    tiny_pipeline().save_pretrained(tmp_path / "m")
    _edit_json(tmp_path / "m" / where, **changes)
    with pytest.raises(ModelFormatError, match=match):
        ALDMPipeline.from_pretrained(tmp_path / "m")


def test_corrupted_or_mismatched_weights(tmp_path: Path) -> None:
    tiny_pipeline().save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "vqgan" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match="safetensors"):
        ALDMPipeline.from_pretrained(tmp_path / "m")
    tiny_pipeline().save_pretrained(tmp_path / "n")
    _edit_json(tmp_path / "n" / "vqgan" / "config.json", spade_nf=16)
    with pytest.raises(ModelFormatError, match="does not match|shape"):
        ALDMPipeline.from_pretrained(tmp_path / "n")


def test_unknown_config_keys_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tiny_pipeline().save_pretrained(tmp_path / "m")
    _edit_json(tmp_path / "m" / "unet" / "config.json", future_option=1)
    ALDMPipeline.from_pretrained(tmp_path / "m")
    assert "future_option" in caplog.text


@pytest.mark.slow
def test_published_configuration_runs_at_full_size() -> None:
    """encode -> target_like -> sample(steps=2) -> decode at 144x192x144 with the published networks."""
    pipe = ALDMPipeline.from_configs()
    n_vq = sum(p.numel() for p in pipe.vqgan.parameters())
    n_unet = sum(p.numel() for p in pipe.unet.parameters())
    assert n_unet > 30_000_000 and n_vq > 1_000_000
    x = torch.rand(1, 1, 144, 192, 144) * 2 - 1
    z = pipe.encode(x)
    assert z.shape == (1, 4, 36, 48, 36)
    assert pipe.target_like(z, [3]).shape == z.shape
    lat = pipe.sample(z, [2, 3], steps=2, generator=torch.Generator().manual_seed(0), progress=False)
    img = pipe.decode(lat[:1])
    assert img.shape == (1, 1, 144, 192, 144) and torch.isfinite(img).all()


def _gated(pipe: ALDMPipeline, values: dict[tuple[int, int], float]) -> ALDMPipeline:
    """``pipe`` with a source gate set to ``values`` per (source, target) pair (0 elsewhere)."""
    pipe.vqgan.add_source_gate()
    with torch.no_grad():
        for (s, t), v in values.items():
            pipe.vqgan.spade.source_gate[s, t] = v
    return pipe


def test_source_gate_moves_each_pair_towards_its_source_latent(tmp_path: Path) -> None:
    """out = y + g[s, t] * (z - y), per channel, with y the blocks' output; g = 0 is the model without a gate."""
    plain = tiny_pipeline()
    z = plain.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    y = plain.target_like(z, [1, 2, 3])
    pipe = _gated(tiny_pipeline(), {(0, 1): 1.0, (0, 2): 0.25})
    assert pipe.vqgan.config.spade_source_gate
    with pytest.raises(UsageError, match="source gate: pass the source class id"):
        pipe.target_like(z, [1])
    with pytest.raises(UsageError, match="source class id must be in 0..3"):
        pipe.target_like(z, [1], source=4)
    got = pipe.target_like(z, [1, 2, 3], source=0)
    assert torch.allclose(got[0], z[0], atol=1e-6)  # gate 1: the source latent itself
    assert torch.allclose(got[1], 0.75 * y[1] + 0.25 * z[0], atol=1e-6)
    assert torch.allclose(got[2], y[2], atol=1e-5)  # gate 0: the blocks alone
    assert torch.allclose(pipe.target_like(z, [1], source=2)[0], y[0], atol=1e-5)  # another source: its gate (0)
    # one channel's gate leaves the other channels as the blocks made them
    with torch.no_grad():
        pipe.vqgan.spade.source_gate[3, 2] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    got = pipe.target_like(z, [2], source=3)[0]
    assert torch.allclose(got[1], z[0, 1], atol=1e-6) and torch.allclose(got[[0, 2, 3]], y[1, [0, 2, 3]], atol=1e-5)
    # the sampler conditions on (and SDEdit starts from) the gated latent; the folder keeps the gate
    assert not torch.equal(pipe.sample(z, [1], steps=2, eta=0.0, x_T=torch.zeros(1, 4, 16, 16, 16), source=0,
                                       strength=0.5, progress=False),
                           plain.sample(z, [1], steps=2, eta=0.0, x_T=torch.zeros(1, 4, 16, 16, 16), strength=0.5,
                                        progress=False))
    pipe.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "vqgan" / "config.json").read_text())["spade_source_gate"] is True
    back = ALDMPipeline.from_pretrained(tmp_path / "m")
    assert torch.equal(back.vqgan.spade.source_gate, pipe.vqgan.spade.source_gate)
    assert torch.equal(back.target_like(z, [1, 2], source=3), pipe.target_like(z, [1, 2], source=3))
    # a folder without the gate ignores source= (the published MS-SPADE has no source input)
    assert torch.equal(plain.target_like(z, [1, 2, 3], source=0), plain.target_like(z, [1, 2, 3]))


def test_samples_average_the_latents_of_that_many_samples() -> None:
    """samples k: each target's k samples draw their noises in turn from its generator; the mean is returned."""
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    kw = dict(steps=4, eta=0.0, strength=0.5, progress=False)
    got = pipe.sample_mean(z, [1, 3], 3, generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **kw)
    for i, (t, seed) in enumerate(((1, 5), (3, 6))):
        g = torch.Generator().manual_seed(seed)
        noises = [torch.randn((1, 4, 16, 16, 16), generator=g) for _ in range(3)]
        each = [pipe.sample(z, [t], x_T=n, **kw) for n in noises]
        mean = torch.stack(each).mean(0)
        assert float((got[i : i + 1] - mean).norm() / mean.norm()) < 1e-5
        assert float((each[0] - mean).norm() / mean.norm()) > 1e-3  # the samples differ, or this test could not fail
    one = pipe.sample(z, [1], generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(one, pipe.sample_mean(z, [1], 1, generator=torch.Generator().manual_seed(5), **kw))
    for bad in (0, 65, 2.0, True):
        with pytest.raises(UsageError, match="samples = .*: use an integer from 1 to 64"):
            pipe.sample_mean(z, [1], bad, **kw)
        with pytest.raises(UsageError, match="samples = .*: use an integer from 1 to 64"):
            SamplingOptions(samples=bad)


def test_samples_of_a_target_share_one_ms_spade_pass() -> None:
    """k samples of T targets from one source run MS-SPADE on T latents, not T * k, with the same result as
    when every draw runs it (a source latent repeated per draw)."""
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    batches: list[int] = []
    hook = pipe.vqgan.spade.register_forward_hook(lambda mod, args, out: batches.append(out.shape[0]))
    kw = dict(steps=3, eta=0.0, progress=False)
    noise = torch.randn(6, 4, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    shared = pipe.sample(z, [1, 1, 1, 3, 3, 3], x_T=noise, **kw)
    assert batches == [2]
    every = pipe.sample(z.repeat(6, 1, 1, 1, 1), [1, 1, 1, 3, 3, 3], x_T=noise, **kw)
    assert batches == [2, 6]
    hook.remove()
    assert float((shared - every).norm() / every.norm()) < 1e-5


def test_translate_takes_the_models_default_samples() -> None:
    """translate(), like Translator, averages the model's default_samples unless samples= is given."""
    pipe = tiny_pipeline()
    pipe.config.default_samples = 2
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    kw = dict(steps=4, eta=1.0, strength=0.5, progress=False)

    def run(**extra):
        options = SamplingOptions(steps=4, eta=1.0, strength=0.5, **extra)
        return pipe.translate(x, [1], options, generator=[torch.Generator().manual_seed(7)], progress=False)

    two = pipe.decode(pipe.sample_mean(pipe.encode(x), [1], 2, generator=[torch.Generator().manual_seed(7)], **kw))
    assert torch.equal(run(), two)
    one = run(samples=1)
    assert torch.equal(one, pipe.decode(pipe.sample(pipe.encode(x), [1], generator=[torch.Generator().manual_seed(7)], **kw)))
    assert float((one - two).norm() / two.norm()) > 1e-4  # one sample is not the mean of two


def test_per_target_strengths_sample_each_target_as_alone() -> None:
    """sample_by_strength: each target sampled with its own strength, as if alone (one generator per target)."""
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    kw = dict(steps=4, eta=1.0, progress=False)
    targets, strengths, seeds = [1, 2, 3], [0.6, 0.3, 0.6], [5, 6, 7]  # 4 steps: 0.6 runs 3, 0.3 runs 2
    for samples in (1, 2):
        got = pipe.sample_by_strength(z, targets, strengths, samples,
                                      generator=[torch.Generator().manual_seed(s) for s in seeds], **kw)
        for i, (t, s, seed) in enumerate(zip(targets, strengths, seeds)):
            alone = pipe.sample_mean(z, [t], samples, strength=s, generator=[torch.Generator().manual_seed(seed)], **kw)
            assert float((got[i : i + 1] - alone).norm() / alone.norm()) < 1e-5
    other = pipe.sample_mean(z, [2], 2, strength=0.6, generator=[torch.Generator().manual_seed(6)], **kw)
    assert float((got[1:2] - other).norm() / other.norm()) > 1e-3  # the strength of target 2 mattered
    with pytest.raises(UsageError, match="got 2 strengths for 3 targets"):
        pipe.sample_by_strength(z, targets, [0.6, 0.3], **kw)
    with pytest.raises(UsageError, match="strength = -0.1"):
        pipe.sample_by_strength(z, targets, [0.6, -0.1, 0.6], **kw)
    with pytest.raises(UsageError, match="one strength for every target"):
        pipe.sample(z, targets, strength=[0.6, 0.3, 0.6], **kw)


@pytest.mark.parametrize("solver", ["ddim", "unipc"])
def test_strength_zero_is_ms_spades_latent_without_a_unet_call(solver: str) -> None:
    """strength 0: no diffusion step, the target-like latent itself, for every draw; beside other strengths in
    one call, the other targets are sampled as if alone."""
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    calls = []
    pipe.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    spade = pipe.target_like(z, [1, 2])
    got = pipe.sample(z, [1, 2], steps=4, eta=1.0, strength=0.0, solver=solver, progress=False,
                      generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(got, spade) and calls == []
    draws = pipe.sample_draws(z, [2], 3, steps=4, strength=0.0, solver=solver, progress=False)
    assert draws.shape[:2] == (1, 3) and all(torch.equal(d, draws[0, 0]) for d in draws[0])
    assert float((draws[0, 0] - spade[1]).norm() / spade[1].norm()) < 1e-5
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    mixed = pipe.sample_by_strength(z, [1, 3], [0.0, 1.0], 2, steps=4, eta=1.0, solver=solver, progress=False,
                                    generator=gens())
    alone = pipe.sample_mean(z, [3], 2, steps=4, eta=1.0, solver=solver, progress=False, generator=gens()[1:])
    assert float((mixed[0] - spade[0]).norm() / spade[0].norm()) < 1e-5 and float((mixed[1:] - alone).norm() / alone.norm()) < 1e-5
    assert calls  # the strength-1 target ran the UNet


def test_pair_strength_is_the_models_strength_of_that_pair(tmp_path: Path) -> None:
    """model_index.json's pair_strength: translate() samples that pair at its own strength, the others at the
    default; it needs the source; aliases are canonicalised and bad entries refused when the folder loads."""
    pipe = tiny_pipeline()
    pipe.config.default_strength = 0.6  # 4 steps: 0.6 runs 3 of them, 0.3 runs 2
    pipe.config.pair_strength = {"T1->t1c": 0.3}
    pipe.config.validate()
    assert pipe.config.pair_strength == {"t1->t1ce": 0.3}
    assert pipe.config.strength_for("t1", "t1ce") == 0.3 and pipe.config.strength_for("t2", "t1ce") == 0.6
    assert "strength 0.6 (t1->t1ce: 0.3)" in pipe.default_model_card()
    back = ALDMPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "m"))
    assert back.config.pair_strength == {"t1->t1ce": 0.3}
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1

    def run(targets, source, **extra):
        gens = [torch.Generator().manual_seed(10 + t) for t in targets]
        return back.translate(x, targets, SamplingOptions(steps=4, eta=1.0, **extra), generator=gens, source=source,
                              progress=False)

    def close(a, b):  # (a batch of 2 and of 1 may round differently)
        return float((a - b).norm() / b.norm()) < 1e-5

    both = run([1, 2], 0)
    assert close(both[:1], run([1], 0, strength=0.3))
    assert close(both[1:], run([2], 0, strength=0.6))
    assert not close(both[:1], run([1], 0, strength=0.6))  # the pair's strength mattered
    assert close(run([1], 2), run([1], 2, strength=0.6))  # from T2 the default strength applies
    assert back.strengths([1, 2, 3], 0) == [0.3, 0.6, 0.6]
    with pytest.raises(UsageError, match="strength per pair.*pass the source"):
        run([1], None)
    for bad, match in (({"t1->t1": 0.3}, "must be 'source->target'"), ({"t1->t5": 0.3}, "must be 'source->target'"),
                       ({"t1->t1ce": 1.5}, r"must be a number in \[0, 1\]"), ({"t1->t1ce": 0.2, "t1n->t1c": 0.3}, "twice"),
                       ([0.3], "must be an object")):
        index = json.loads((tmp_path / "m" / "model_index.json").read_text())
        index["pair_strength"] = bad
        (tmp_path / "m" / "model_index.json").write_text(json.dumps(index))
        with pytest.raises(ModelFormatError, match=match):
            ALDMPipeline.from_pretrained(tmp_path / "m")
