"""The authors' training code (their LightningModules, losses and yaml configs), imported from their sources.

``official_tree("VQ-GAN" | "LDM")`` puts one of the two trees of ``../shared/reference/aldm-official`` on
``sys.path`` and imports from it; nothing of theirs is copied here. Their modules import pytorch-lightning 1.x
(multiple optimisers with ``optimizer_idx``, ``pytorch_lightning.utilities.distributed``), torchvision and their
``main.py`` at module level, none of which installs beside a current CPU torch (pytorch-lightning 1.x needs
``pkg_resources``; torchvision wheels are built for one torch). So, only while their modules are imported and
run, three stand-ins take those names:

- ``pytorch_lightning``: ``LightningModule`` is an ``nn.Module`` whose ``log``/``log_dict`` do nothing, with
  ``global_step`` 0, ``current_epoch`` 0 and ``device``; ``rank_zero_only`` returns the function.
- ``torchvision``: an empty module (their LPIPS loss, never built as published, and image logging import it).
- ``main``: ``instantiate_from_config`` (their one-line "import ``target``, call it with ``params``").

:func:`lightning_step` then runs what Lightning 1.x's automatic optimisation does for one batch: for each
optimiser of ``configure_optimizers`` in order, toggle (only that optimiser's parameters require grad),
``training_step``, zero_grad, backward, step, untoggle; then the ``on_train_batch_end`` hook (the EMA).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from conftest import SHARED, require_reference

OFFICIAL = SHARED / "reference" / "aldm-official"


class _LightningModule(nn.Module):
    """What the authors' modules use of ``pl.LightningModule`` outside a Trainer."""

    global_step = 0
    current_epoch = 0

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        pass


def _instantiate_from_config(config: dict) -> Any:
    module, name = config["target"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**config.get("params", {}))


def _stand_ins() -> dict[str, types.ModuleType]:
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = _LightningModule
    utilities = types.ModuleType("pytorch_lightning.utilities")
    distributed = types.ModuleType("pytorch_lightning.utilities.distributed")
    distributed.rank_zero_only = utilities.rank_zero_only = lambda fn: fn
    pl.utilities = utilities
    utilities.distributed = distributed
    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.make_grid = None
    main = types.ModuleType("main")
    main.instantiate_from_config = _instantiate_from_config
    return {"pytorch_lightning": pl, "pytorch_lightning.utilities": utilities,
            "pytorch_lightning.utilities.distributed": distributed, "torchvision": tv,
            "torchvision.models": tv.models, "torchvision.utils": tv.utils, "main": main}


@contextlib.contextmanager
def official_tree(tree: str) -> Iterator[Path]:
    """Import from the authors' ``VQ-GAN`` or ``LDM`` folder inside the block; afterwards every module imported
    from there, and the stand-ins, are gone from ``sys.modules``, and ``sys.path`` is as before."""
    root = require_reference(OFFICIAL) / tree
    before_modules = set(sys.modules)
    before_path = list(sys.path)
    shadowed = {k: sys.modules.pop(k) for k in ("main", "taming", "ldm") if k in sys.modules}
    sys.modules.update(_stand_ins())
    sys.path.insert(0, str(root))
    ours = root.resolve()
    try:
        yield root
    finally:
        sys.path[:] = before_path
        for name in set(sys.modules) - before_modules:  # theirs (not, say, a torch module imported lazily)
            file = getattr(sys.modules[name], "__file__", None)
            if name.split(".")[0] in ("taming", "ldm") or (file and Path(file).resolve().is_relative_to(ours)):
                del sys.modules[name]
        for name in _stand_ins():
            sys.modules.pop(name, None)
        sys.modules.update(shadowed)


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def published_configs() -> dict[str, dict]:
    """The authors' three yaml configs: ``stage1``, ``stage2`` (VQ-GAN) and ``ldm``."""
    root = require_reference(OFFICIAL)
    return {
        "stage1": read_yaml(root / "VQ-GAN" / "configs" / "brats_vqgan_stage1.yaml"),
        "stage2": read_yaml(root / "VQ-GAN" / "configs" / "brats_vqgan_stage2.yaml"),
        "ldm": read_yaml(root / "LDM" / "configs" / "latent-diffusion" / "brats-ldm-vq-4.yaml"),
    }


def scaled_lr(config: dict, batch_size: int, ngpu: int = 1, accumulate: int = 1) -> float:
    """The learning rate the authors' main.py sets: accumulate_grad_batches x ngpu x batch size x base_lr."""
    return accumulate * ngpu * batch_size * float(config["model"]["base_learning_rate"])


def lightning_step(
    module: nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.optim.Optimizer]]:
    """One training batch as Lightning 1.x's automatic optimisation runs it: the loss of each optimiser, and
    the optimisers."""
    configured = module.configure_optimizers()
    if isinstance(configured, torch.optim.Optimizer):
        optimizers = [configured]
    elif isinstance(configured, tuple):
        optimizers = list(configured[0])
    else:
        optimizers = list(configured)
    module.train()
    if hasattr(module, "on_train_batch_start"):
        module.on_train_batch_start(batch, 0, 0)
    losses = []
    for idx, opt in enumerate(optimizers):
        saved: dict[nn.Parameter, bool] = {}
        if len(optimizers) > 1:  # LightningModule.toggle_optimizer
            for other in optimizers:
                for group in other.param_groups:
                    for p in group["params"]:
                        if p not in saved:
                            saved[p] = p.requires_grad
                            p.requires_grad = False
            for group in opt.param_groups:
                for p in group["params"]:
                    p.requires_grad = saved[p]
        args = (batch, 0, idx) if len(optimizers) > 1 else (batch, 0)
        loss = module.training_step(*args)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        for p, flag in saved.items():  # untoggle_optimizer
            p.requires_grad = flag
        losses.append(loss.detach())
    if hasattr(module, "on_train_batch_end"):
        module.on_train_batch_end(None, batch, 0)
    return losses, optimizers
