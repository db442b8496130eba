"""Slab-wise (tiled) VQ-GAN execution equals the plain forward; the optimised runtime equals the naive one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _tiny import tiny_pipeline
from mrtranslate.errors import MemoryBudgetError
from mrtranslate.models import VQGAN, VQGANConfig, streaming
from mrtranslate.pipeline.runtime import Runtime, parse_memory, plan_memory


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=[(8, (1, 1, 2), 1), (8, (1, 2, 2), 2), (8, (1, 2), 1)])
def vqgan(request) -> VQGAN:
    ch, mult, nrb = request.param
    torch.manual_seed(1)
    m = VQGAN(VQGANConfig(ch=ch, ch_mult=mult, num_res_blocks=nrb, num_groups=4, n_embed=32, spade_nf=4)).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.25)  # non-trivial norms and biases everywhere
    return m


@pytest.mark.parametrize("slab", [1, 4])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_tiled_decode_equals_untiled(vqgan: VQGAN, slab: int, layout) -> None:
    z = torch.randn(2, 4, 5, 3, 6)
    with torch.inference_mode():
        ref = vqgan.decode(z)
        m = vqgan.to(memory_format=layout)
        out = streaming.decode(m, z.contiguous(memory_format=layout), slab)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-4


@pytest.mark.parametrize("slab", [1, 3])
def test_tiled_encode_equals_untiled(vqgan: VQGAN, slab: int) -> None:
    x = torch.randn(1, 1, 20, 12, 17)  # odd side: the end-padded stride-2 downsampling must match
    with torch.inference_mode():
        ref = vqgan.encode_continuous(x)
        out = streaming.encode_continuous(vqgan, x, slab)
    assert out.shape == ref.shape
    assert rel(out, ref) < 1e-4


def test_optimised_runtime_matches_naive_path() -> None:
    naive = tiny_pipeline()
    fast = tiny_pipeline().configure(Runtime.create("cpu", max_memory="64MB"))
    x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
    x_T = torch.randn(3, 4, 16, 16, 16)
    outs = []
    for pipe in (naive, fast):
        z = pipe.encode(x)
        lat = pipe.sample(z, [1, 2, 3], steps=3, eta=0.0, x_T=x_T, progress=False)
        outs.append(pipe.decode(lat))
    assert rel(outs[1], outs[0]) < 1e-4


def test_planner_shrinks_slabs_then_refuses() -> None:
    kw = dict(grid=(144, 192, 144), ch=64, ch_mult=(1, 1, 2), n_targets=3, unet_channels=128, unet_mult=(1, 1, 2),
              bytes_per_value=4)
    roomy = plan_memory(budget=64 << 30, **kw)
    assert 8 <= roomy.slab < 144  # bounded temporaries even when memory is plentiful
    budget = roomy.persistent_bytes + roomy.slab_bytes // 3
    tight = plan_memory(budget=budget, **kw)
    assert tight.slab < roomy.slab and tight.peak_bytes <= budget
    with pytest.raises(MemoryBudgetError, match="GiB"):
        plan_memory(budget=512 << 20, **kw)


def test_planner_splits_the_sampling_batch_to_stay_within_the_vqgan_peak() -> None:
    kw = dict(grid=(80, 96, 80), ch=16, ch_mult=(1, 2), unet_channels=32, unet_mult=(1, 2, 2), bytes_per_value=4,
              latent_factor=2)
    one = plan_memory(n_targets=1, budget=64 << 30, **kw)
    many = plan_memory(n_targets=18, budget=64 << 30, **kw)
    assert one.unet_rows == 1 and 1 <= many.unet_rows < 18
    assert many.unet_bytes == many.unet_rows * one.unet_bytes
    assert many.unet_bytes <= many.persistent_bytes + many.slab_bytes  # the sampler never sets the peak
    # a budget that holds one UNet row but not eighteen: planned in single rows, not refused
    tight = plan_memory(n_targets=18, budget=many.persistent_bytes + many.slab_bytes, **kw)
    assert tight.peak_bytes <= many.persistent_bytes + many.slab_bytes
    big_unet = dict(kw, unet_channels=512)
    rows = plan_memory(n_targets=18, budget=64 << 30, **big_unet)
    assert rows.unet_rows == 1  # one row needs more than the VQ-GAN: one row at a time
    with pytest.raises(MemoryBudgetError):
        plan_memory(n_targets=1, budget=rows.unet_bytes - 1, **big_unet)


@pytest.mark.parametrize("solver,eta", [("ddim", 1.0), ("unipc", 0.0)])
def test_sampling_in_chunks_equals_one_batch(monkeypatch, solver: str, eta: float) -> None:
    pipe = tiny_pipeline()
    z = pipe.encode(torch.rand(1, 1, 32, 32, 32) * 2 - 1)
    real_plan = type(pipe).plan
    outs, batches = {}, []
    pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    for rows in (6, 1, 4):
        monkeypatch.setattr(type(pipe), "plan", lambda self, g, n, r=rows: dataclasses.replace(real_plan(self, g, n), unet_rows=r))
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        batches.clear()
        outs[rows] = pipe.sample_draws(z, [1, 3], 3, steps=3, eta=eta, solver=solver, generator=gens, progress=False)
        per_step = {6: [6], 1: [1] * 6, 4: [3, 3]}[rows]  # one call, six, or two even ones
        assert batches and batches == per_step * (len(batches) // len(per_step))
    assert outs[6].shape[:2] == (2, 3) and float(outs[6].std()) > 0
    for rows in (1, 4):  # one row per call, and uneven chunks (2 of 3 rows)
        assert rel(outs[rows], outs[6]) < 1e-5


def test_parse_memory() -> None:
    assert parse_memory("8GB") == 8 << 30
    assert parse_memory("1.5GiB") == int(1.5 * (1 << 30))
    assert parse_memory("512mb") == 512 << 20
    assert parse_memory(1234) == 1234
