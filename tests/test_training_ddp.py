"""DistributedDataParallel on CPU (gloo, 2 processes): one DDP step on batches b0, b1 equals one
single-process step on cat(b0, b1); and the whole training loop runs under two processes."""

from __future__ import annotations

import datetime
import gc
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from _tiny import TINY_UNET, TINY_VQ
from _training_utils import PREP, write_subjects

from mrtranslate.models import VQGAN
from mrtranslate.training.autoencoder import AutoencoderStage
from mrtranslate.training.config import AutoencoderConfig, DiffusionConfig, SpadeConfig
from mrtranslate.training.data import ImageSet
from mrtranslate.training.diffusion import DiffusionStage
from mrtranslate.training.distributed import DistContext, setup
from mrtranslate.training.first_stage import FirstStage
from mrtranslate.training.spade import SpadeStage

STAGES = ("autoencoder", "spade", "diffusion")


@pytest.fixture(autouse=True)
def one_thread():
    """One thread per process: two processes share the 2 cores (and tiny tensors gain nothing from more)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
BATCH = 4  # the union; each of the 2 processes takes half (so the configs give the optimiser rate: scale_lr false)


def make_stage(name: str, ctx: DistContext):
    """The same stage (weights, data) in every process: everything derives from fixed seeds."""
    g = torch.Generator().manual_seed(11)
    if name == "autoencoder":
        cfg = AutoencoderConfig(model=TINY_VQ.to_dict(), preprocessing=PREP, crop=[8, 8, 8], batch_size=BATCH,
                                lr=1e-4, seed=1, codebook_weight=1.0, codebook_init="normal", scale_lr=False)
        images = ImageSet(["a", "b"], torch.randn((2, 4, 16, 16, 16), generator=g), torch.ones(2, 4, dtype=torch.bool))
        return AutoencoderStage(cfg, ctx, images)
    with torch.random.fork_rng():
        torch.manual_seed(2)
        vqgan = VQGAN(TINY_VQ)
    first = FirstStage(vqgan, PREP, {"stage": "spade"}, [])
    codes = torch.randint(0, TINY_VQ.n_embed, (2, 4, 8, 8, 8), generator=g, dtype=torch.int32)
    available = torch.ones(2, 4, dtype=torch.bool)
    if name == "spade":
        cfg = SpadeConfig(batch_size=BATCH, lr=1e-4, cycle_weight=0.5, adv_weight=1.0, disc_channels=4, seed=3,
                          scale_lr=False)
        return SpadeStage(cfg, ctx, first, codes, available)
    cfg = DiffusionConfig(model=TINY_UNET.to_dict(), batch_size=BATCH, lr=1e-4, ema_decay=0.9, seed=4, scale_lr=False)
    return DiffusionStage(cfg, ctx, first, codes, available, torch.randn((2, 4, 4, 4, 8, 8, 8), generator=g))


def trained_state(stage) -> dict[str, torch.Tensor]:
    state = {f"{n}/{k}": v.detach().clone().contiguous() for n, net in stage.nets.items() for k, v in net.state_dict().items()}
    state.update({f"ema/{k}": v.clone().contiguous() for k, v in stage.ema.items()})
    return state


def _quiesce() -> None:
    """Before tearing the group down: free the DDP wrappers (they hold the group and its gloo threads; reference
    cycles would leave them to the interpreter's exit) and let both processes arrive. A worker that tore down
    while the other still worked once died on CI with "terminate called without an active exception"."""
    gc.collect()
    dist.barrier()


def _step_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        ctx = setup("cpu")
        assert (ctx.rank, ctx.world_size) == (rank, 2)
        for name in STAGES:
            stage = make_stage(name, ctx)
            batch = load_file(str(Path(folder) / f"{name}-batch.safetensors"))
            half = {k: v[rank * BATCH // 2 : (rank + 1) * BATCH // 2] for k, v in batch.items()}
            loss = float(ctx.mean(stage.train_step(half, 0)["loss"]))  # a collective: every process calls it
            if rank == 0:
                save_file(trained_state(stage), str(Path(folder) / f"{name}-ddp.safetensors"))
                (Path(folder) / f"{name}-loss.json").write_text(json.dumps(loss))
            del stage
        _quiesce()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fixed_pairs(stage, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets 0, 1 | 2, 3: each process leaves two classes' MS-SPADE layers unused (DDP must cope)."""
    subjects, src, tgt = torch.tensor([0, 1, 0, 1]), torch.tensor([1, 2, 3, 0]), torch.tensor([0, 1, 2, 3])
    batch = {**batch, "src_codes": stage.codes[subjects, src], "tgt_codes": stage.codes[subjects, tgt], "tgt": tgt}
    if "src" in batch:
        batch["src"] = src
    if "cond" in batch:
        batch["cond"] = stage.translated[subjects, src, tgt]
    return batch


def test_one_ddp_step_equals_one_step_on_the_union(tmp_path: Path) -> None:
    single = DistContext(torch.device("cpu"))
    before, expected, losses = {}, {}, {}
    for name in STAGES:
        stage = make_stage(name, single)
        batch = stage.batch(0)
        if name != "autoencoder":
            batch = _fixed_pairs(stage, batch)
        save_file({k: v.contiguous() for k, v in batch.items()}, str(tmp_path / f"{name}-batch.safetensors"))
        before[name] = trained_state(stage)
        losses[name] = float(stage.train_step(batch, 0)["loss"])
        expected[name] = trained_state(stage)
    mp.spawn(_step_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in STAGES:
        got = load_file(str(tmp_path / f"{name}-ddp.safetensors"))
        assert set(got) == set(expected[name])
        assert any(not torch.equal(v, before[name][k]) for k, v in got.items()), f"{name}: the step changed nothing"
        for k, v in got.items():
            torch.testing.assert_close(v, expected[name][k], rtol=1e-4, atol=2e-6, msg=f"{name}: {k}")
        assert json.loads((tmp_path / f"{name}-loss.json").read_text()) == pytest.approx(losses[name], rel=1e-5)


def _loop_worker(rank: int, port: int, folder: str) -> None:
    from mrtranslate.training.trainer import train

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        root = Path(folder)
        ae = {"model": TINY_VQ.to_dict(), "preprocessing": PREP, "crop": [8, 8, 8], "batch_size": 1, "steps": 2,
              "log_every": 1}
        train("autoencoder", root / "ae", root / "data", ae, device="cpu", progress=False, command=["ae"])
        sp = {"batch_size": 1, "steps": 2, "log_every": 1, "disc_channels": 4}
        train("spade", root / "sp", root / "data", sp, first_stage=str(root / "ae"), device="cpu", progress=False)
        _quiesce()
    finally:
        dist.destroy_process_group()


def test_training_loop_under_two_processes(tmp_path: Path) -> None:
    write_subjects(tmp_path / "data", n=2)
    mp.spawn(_loop_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    state = json.loads((tmp_path / "sp" / "checkpoint" / "state.json").read_text())
    assert (state["step"], state["world_size"]) == (2, 2)
    assert (tmp_path / "sp" / "latents-0-of-2.safetensors").is_file()
    assert (tmp_path / "sp" / "latents-1-of-2.safetensors").is_file()  # each process encoded its own subject
    run = json.loads((tmp_path / "ae" / "run.json").read_text())
    assert run["commands"][0]["world_size"] == 2 and run["data"]["n_subjects"] == 2
    rows = (tmp_path / "ae" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 steps, written once (by rank 0)
