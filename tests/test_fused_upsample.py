"""Nearest x2 + 3x3x3 convolution computed as one transposed convolution (inference fast path) equals the
two-step form of the published networks to float rounding."""

from __future__ import annotations

import pytest
import torch
from _tiny import TINY_UNET, TINY_VQ

from mrtranslate.models import VQGAN, UNet, streaming
from mrtranslate.models.layers import upsample_conv, upsample_nearest2x
from mrtranslate.models.unet import Upsample as UNetUpsample
from mrtranslate.models.vqgan import Upsample as VQUpsample


def upsamplers(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in module.modules() if isinstance(m, (VQUpsample, UNetUpsample))]


@pytest.mark.parametrize("shape", [(1, 5, 4, 4, 4), (2, 5, 3, 6, 5), (1, 5, 1, 2, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_transposed_convolution_equals_upsampling_then_convolving(shape, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    conv = torch.nn.Conv3d(5, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64))
        conv.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if channels_last:
        x, conv = x.contiguous(memory_format=torch.channels_last_3d), conv.to(memory_format=torch.channels_last_3d)
    expected = conv(upsample_nearest2x(x))
    got = upsample_conv(x, conv)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)  # float64: any wrong tap shows at 1e-1
    assert torch.allclose(streaming.upsample_conv_slabs(conv, x, 3), expected, rtol=0, atol=1e-12)


def test_the_networks_take_the_fast_path_at_inference_only():
    torch.manual_seed(0)
    vq = VQGAN(TINY_VQ)
    ups = upsamplers(vq)
    assert ups and all(u.fused for u in ups)
    z = torch.randn(2, TINY_VQ.embed_dim, 5, 4, 6)
    calls = []
    original = torch.nn.functional.conv_transpose3d

    def spy(*a, **k):
        calls.append(1)
        return original(*a, **k)

    torch.nn.functional.conv_transpose3d = spy
    try:
        with torch.no_grad():
            vq.train()
            trained = vq.decode(z)
            assert not calls  # training keeps the two-step form (and its gradients as they were)
            vq.eval()
            fast = vq.decode(z)
            assert len(calls) == len(ups)
    finally:
        torch.nn.functional.conv_transpose3d = original
    for u in ups:
        u.fused = False
    with torch.no_grad():
        slow = vq.decode(z)
    assert torch.equal(trained, slow)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-5 * float(slow.abs().max()))


def test_the_unet_and_the_slab_wise_decoder_agree_with_the_two_step_form():
    torch.manual_seed(1)
    unet = UNet(TINY_UNET).eval()
    for p in unet.parameters():  # the output convs start at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, TINY_UNET.in_channels, 8, 12, 8)
    t, y = torch.tensor([3, 700]), torch.tensor([1, 2])
    vq = VQGAN(TINY_VQ).eval()
    z = torch.randn(1, TINY_VQ.embed_dim, 6, 5, 4)
    with torch.no_grad():
        fast, fast_dec, fast_slabs = unet(x, t, y), vq.decode(z), streaming.decode(vq, z, slab=3)
        for u in upsamplers(unet) + upsamplers(vq):
            u.fused = False
        slow, slow_dec = unet(x, t, y), vq.decode(z)
    assert torch.allclose(fast, slow, rtol=0, atol=1e-5 * float(slow.abs().max()))
    assert torch.allclose(fast_dec, slow_dec, rtol=0, atol=1e-5 * float(slow_dec.abs().max()))
    assert torch.allclose(fast_slabs, slow_dec, rtol=0, atol=1e-5 * float(slow_dec.abs().max()))
