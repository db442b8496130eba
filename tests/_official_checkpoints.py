"""Random checkpoints in the authors' Lightning layout (stage-2 VQ-GAN and LDM) for any network size,
with the matching authors'-style yaml. Key names and shapes are built from the architecture the authors'
code instantiates (taming Encoder/Decoder, SPADEGenerator, openaimodel.UNetModel, LitEma, DDPM buffers);
for aldm-tiny's sizes they equal the shared reference checkpoints (tested). Nothing here imports mrtranslate.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from _official_functional import State, Tensor, ldm_schedule, vq_encode


@dataclasses.dataclass(frozen=True)
class OfficialSizes:
    """The numbers of an authors' yaml (VQModel ddconfig + SPADE, UNetModel params, DDPM schedule)."""

    image: tuple[int, int, int]
    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    embed_dim: int
    n_embed: int
    num_groups: int
    spade_nf: int
    model_channels: int
    channel_mult: tuple[int, ...]
    unet_res_blocks: int
    attention_resolutions: tuple[int, ...]
    num_head_channels: int = -1
    num_heads: int = -1
    num_classes: int = 4
    spade_hidden: int = 64  # fixed in the authors' SPADE layer
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    timesteps: int = 1000

    @property
    def latent(self) -> tuple[int, int, int]:
        f = 2 ** (len(self.ch_mult) - 1)
        return tuple(s // f for s in self.image)  # type: ignore[return-value]


def vqgan_shapes(c: OfficialSizes) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a stage-2 VQ-GAN (taming Encoder/Decoder, quantizer, SPADEGenerator)."""
    out: dict[str, tuple[int, ...]] = {}

    def conv(p: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> None:
        out[p + "weight"] = (cout, cin, k, k, k)
        if bias:
            out[p + "bias"] = (cout,)

    def norm(p: str, ch: int) -> None:
        out[p + "weight"], out[p + "bias"] = (ch,), (ch,)

    def resnet(p: str, cin: int, cout: int) -> None:
        norm(p + "norm1.", cin)
        conv(p + "conv1.", cin, cout)
        norm(p + "norm2.", cout)
        conv(p + "conv2.", cout, cout)
        if cin != cout:
            conv(p + "nin_shortcut.", cin, cout, 1)

    ch, mult, last = c.ch, c.ch_mult, len(c.ch_mult) - 1
    conv("encoder.conv_in.", 1, ch)
    block_in = ch
    for lvl, m in enumerate(mult):
        for b in range(c.num_res_blocks):
            resnet(f"encoder.down.{lvl}.block.{b}.", block_in, ch * m)
            block_in = ch * m
        if lvl != last:
            conv(f"encoder.down.{lvl}.downsample.conv.", block_in, block_in)
    resnet("encoder.mid.block_1.", block_in, block_in)
    norm("encoder.norm_out.", block_in)
    conv("encoder.conv_out.", block_in, c.z_channels)
    conv("decoder.conv_in.", c.z_channels, block_in)
    resnet("decoder.mid.block_1.", block_in, block_in)
    for lvl in reversed(range(len(mult))):
        for b in range(c.num_res_blocks + 1):
            resnet(f"decoder.up.{lvl}.block.{b}.", block_in, ch * mult[lvl])
            block_in = ch * mult[lvl]
        if lvl != 0:
            conv(f"decoder.up.{lvl}.upsample.conv.", block_in, block_in)
    norm("decoder.norm_out.", block_in)
    conv("decoder.conv_out.", block_in, 1)
    out["quantize.embedding.weight"] = (c.n_embed, c.embed_dim)
    conv("quant_conv.", c.z_channels, c.embed_dim, 1)
    conv("post_quant_conv.", c.embed_dim, c.z_channels, 1)
    chans = [c.embed_dim, c.spade_nf, 2 * c.spade_nf, c.spade_nf, c.embed_dim]
    for b, (fin, fout) in enumerate(zip(chans[:-1], chans[1:])):
        p, fmid = f"spade.block.{b}.", min(fin, fout)
        conv(p + "conv_0.", fin, fmid)
        conv(p + "conv_1.", fmid, fout)
        if fin != fout:
            conv(p + "conv_s.", fin, fout, 1, bias=False)
        for name, width in (("norm_0", fin), ("norm_1", fmid)):
            for k in range(c.num_classes):
                q = f"{p}{name}.spades.{k}."
                conv(q + "mlp_shared.0.", width, c.spade_hidden)
                conv(q + "mlp_gamma.", c.spade_hidden, width)
                conv(q + "mlp_beta.", c.spade_hidden, width)
    return out


def unet_shapes(c: OfficialSizes) -> dict[str, tuple[int, ...]]:
    """Key -> shape of openaimodel.UNetModel(dims=3, conv_resample, no scale-shift norm), raw names."""
    out: dict[str, tuple[int, ...]] = {}
    mc, emb = c.model_channels, 4 * c.model_channels

    def conv(p: str, cin: int, cout: int, k: int = 3) -> None:
        out[p + "weight"], out[p + "bias"] = (cout, cin, k, k, k), (cout,)

    def res(p: str, cin: int, cout: int) -> None:
        out[p + "in_layers.0.weight"] = out[p + "in_layers.0.bias"] = (cin,)
        conv(p + "in_layers.2.", cin, cout)
        out[p + "emb_layers.1.weight"], out[p + "emb_layers.1.bias"] = (cout, emb), (cout,)
        out[p + "out_layers.0.weight"] = out[p + "out_layers.0.bias"] = (cout,)
        conv(p + "out_layers.3.", cout, cout)
        if cin != cout:
            conv(p + "skip_connection.", cin, cout, 1)

    def attn(p: str, ch: int) -> None:
        out[p + "norm.weight"] = out[p + "norm.bias"] = (ch,)
        out[p + "qkv.weight"], out[p + "qkv.bias"] = (3 * ch, ch, 1), (3 * ch,)
        out[p + "proj_out.weight"], out[p + "proj_out.bias"] = (ch, ch, 1), (ch,)

    out["time_embed.0.weight"], out["time_embed.0.bias"] = (emb, mc), (emb,)
    out["time_embed.2.weight"], out["time_embed.2.bias"] = (emb, emb), (emb,)
    out["label_emb.weight"] = (c.num_classes, emb)
    conv("input_blocks.0.0.", 3 * c.embed_dim, mc)
    skips, ch, ds, i = [mc], mc, 1, 1
    for lvl, m in enumerate(c.channel_mult):
        for _ in range(c.unet_res_blocks):
            res(f"input_blocks.{i}.0.", ch, m * mc)
            ch = m * mc
            if ds in c.attention_resolutions:
                attn(f"input_blocks.{i}.1.", ch)
            skips.append(ch)
            i += 1
        if lvl != len(c.channel_mult) - 1:
            conv(f"input_blocks.{i}.0.op.", ch, ch)
            skips.append(ch)
            i, ds = i + 1, ds * 2
    res("middle_block.0.", ch, ch)
    attn("middle_block.1.", ch)
    res("middle_block.2.", ch, ch)
    i = 0
    for lvl, m in reversed(list(enumerate(c.channel_mult))):
        for r in range(c.unet_res_blocks + 1):
            res(f"output_blocks.{i}.0.", ch + skips.pop(), m * mc)
            ch, j = m * mc, 1
            if ds in c.attention_resolutions:
                attn(f"output_blocks.{i}.1.", ch)
                j += 1
            if lvl and r == c.unet_res_blocks:
                conv(f"output_blocks.{i}.{j}.conv.", ch, ch)
                ds //= 2
            i += 1
    out["out.0.weight"] = out["out.0.bias"] = (ch,)
    conv("out.2.", mc, c.embed_dim)  # the authors' out conv takes model_channels (channel_mult[0] must be 1)
    return out


def _random(name: str, shape: tuple[int, ...], g: torch.Generator, offset: bool = True) -> Tensor:
    """N(0, 1/fan_in) weights, N(0, 0.1) biases, 1 + N(0, 0.1) norm scales, N(0, 1) label embeddings."""
    z = torch.randn(shape, generator=g)
    if name.endswith("label_emb.weight"):
        return z
    if len(shape) == 1:
        return (1.0 if offset and name.endswith("weight") else 0.0) + 0.1 * z
    return z / math.sqrt(math.prod(shape[1:]))


def smooth_volume(shape: tuple[int, ...], seed: int, batch: int = 1) -> Tensor:
    """A smooth random image ``[batch, 1, *shape]`` scaled to [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((batch, 1, *[max(2, s // 6) for s in shape]), generator=g)
    vol = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)
    return vol / vol.abs().amax()


def random_official_states(c: OfficialSizes, seed: int) -> tuple[State, State]:
    """(stage-2 VQ-GAN state_dict, LDM state_dict) with random weights, EMA weights != raw weights.

    The codebook is drawn around encoder outputs of a smooth volume so that many codes are used."""
    g = torch.Generator().manual_seed(seed)
    vq = {k: _random(k, s, g) for k, s in vqgan_shapes(c).items()}
    z_e = vq_encode(vq, smooth_volume(c.image, seed + 1, batch=2), c.num_groups)
    flat = z_e.permute(0, 2, 3, 4, 1).reshape(-1, c.embed_dim)
    pick = torch.randint(0, flat.shape[0], (c.n_embed,), generator=g)
    vq["quantize.embedding.weight"] = flat[pick] + 0.2 * flat.std(0) * torch.randn(c.n_embed, c.embed_dim, generator=g)
    for k, shape in (("weight", (c.ch, c.embed_dim, 4, 4, 4)), ("bias", (c.ch,))):  # training only, dropped
        vq["loss.discriminator.main.0." + k] = _random(k, shape, g, offset=False)
    ldm: State = _schedule_buffers(c)
    raw = {k: _random(k, s, g) for k, s in unet_shapes(c).items()}
    for k, v in raw.items():
        ldm["model.diffusion_model." + k] = v
    for k, v in raw.items():
        ldm["model_ema." + ("diffusion_model." + k).replace(".", "")] = v + 0.3 * _random(k, v.shape, g, offset=False)
    ldm["model_ema.decay"] = torch.tensor(0.9999, dtype=torch.float32)
    ldm["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    for k, v in vq.items():
        if not k.startswith("loss."):
            ldm["first_stage_model." + k] = v
    return vq, ldm


def _schedule_buffers(c: OfficialSizes) -> State:
    buffers = ldm_schedule(c.linear_start, c.linear_end, c.timesteps)
    out = {k: torch.tensor(v, dtype=torch.float32) for k, v in buffers.items()}  # DDPM's to_torch: float32
    out["scale_factor"] = torch.tensor(1.0)
    return out


def official_yaml(c: OfficialSizes) -> str:
    """The authors' LDM yaml (configs/latent-diffusion/brats-ldm-vq-4.yaml structure) for these sizes."""
    import yaml

    lat = c.latent[0]
    unet = {"num_classes": c.num_classes, "image_size": lat, "in_channels": 3 * c.embed_dim,
            "out_channels": c.embed_dim, "model_channels": c.model_channels,
            "attention_resolutions": list(c.attention_resolutions), "num_res_blocks": c.unet_res_blocks,
            "channel_mult": list(c.channel_mult), "num_head_channels": c.num_head_channels}
    if c.num_heads > 0:
        unet["num_heads"] = c.num_heads
    unet.update({"transformer_depth": 1, "use_spatial_transformer": False})
    dd = {"double_z": False, "z_channels": c.z_channels, "resolution": c.image[0], "in_channels": 1, "out_ch": 1,
          "ch": c.ch, "num_groups": c.num_groups, "ch_mult": list(c.ch_mult), "num_res_blocks": c.num_res_blocks,
          "attn_resolutions": [], "dropout": 0.0}
    params = {"linear_start": c.linear_start, "linear_end": c.linear_end, "num_timesteps_cond": 1,
              "log_every_t": 200, "timesteps": c.timesteps, "first_stage_key": "image", "cond_stage_key": "image",
              "image_size": lat, "channels": c.embed_dim, "cond_stage_trainable": False,
              "conditioning_key": "hybrid", "monitor": "val/loss_simple_ema",
              "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet},
              "first_stage_config": {"target": "ldm.models.vqgan.VQModel", "params": {
                  "num_classes": c.num_classes, "stage": 2, "embed_dim": c.embed_dim, "n_embed": c.n_embed,
                  "ddconfig": dd, "lossconfig": {"target": "torch.nn.Identity"}}},
              "cond_stage_config": "__is_unconditional__"}
    doc = {"model": {"base_learning_rate": 1.0e-05, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                     "params": params}}
    return yaml.safe_dump(doc, sort_keys=False)


def write_official(c: OfficialSizes, folder: Path, seed: int) -> dict[str, Path]:
    """Write ``vqgan.ckpt``, ``ldm.ckpt`` (Lightning-style dicts) and ``config.yaml`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vq, ldm = random_official_states(c, seed)
    paths = {"vqgan": folder / "vqgan.ckpt", "ldm": folder / "ldm.ckpt", "config": folder / "config.yaml"}
    for key, state in (("vqgan", vq), ("ldm", ldm)):
        lightning = {"state_dict": state, "epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.4.2"}
        torch.save(lightning, paths[key])
    paths["config"].write_text(official_yaml(c), encoding="utf-8")
    return paths
