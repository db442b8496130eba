"""The refiner stage: the detail refiner (:mod:`mrtranslate.models.refiner`) on an exported model's own outputs.

Its data are the model's predictions on training subjects, read from an ``mrtranslate evaluate --source all``
report of that model at its default sampling (``report``), with the subjects' real scans (``--data``). Only
subjects whose scans are on a grid the refiner runs on (every voxel side at most its
``max_input_spacing_mm``) are used. Each scan is kept once in memory, in float16, inside the subject's
foreground box, scaled as :func:`mrtranslate.pipeline.refine.scaled_source` scales a source (the targets
too: the metrics' scale); each prediction is kept as written, in the output's units.

A step draws ``batch_size`` (subject, pair) items and one random box of ``crop`` voxels in each from ``(seed, step,
rank)`` alone, so that a resumed run draws what an uninterrupted one does. Loss: the L1 between the refined
output and the target over the brain (target and prediction > 0), plus ``ssim_weight`` times one minus their
mean SSIM there (Gaussian window, sigma 1.5, as the metrics; the box's border, where the window does not fit,
left out). When the run finishes, :func:`install_refiner` writes the refiner into the model folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UsageError
from ..evaluation.evaluate import _saved, model_fingerprint
from ..imaging.layout import find_subjects
from ..imaging.volume import load_volume
from ..models.refiner import Refiner, RefinerConfig
from ..pipeline.config import PipelineConfig
from ..pipeline.folder import INDEX_NAME, read_model_json, save_refiner
from ..pipeline.refine import scaled_source
from .checkpoint import load_checkpoint, load_module
from .config import RefinerTrainConfig
from .data import crop_offsets, step_generator
from .distributed import DistContext
from .stage import Stage

logger = logging.getLogger(__name__)

__all__ = ["RefinerData", "RefinerStage", "gaussian_window", "install_refiner", "load_refiner_data", "ssim_map"]

REFINER_FOLDER = "refiner"


@dataclass
class RefinerData:
    """Scaled scans ``scans[case][modality]`` and predictions ``preds[(case, source, target)]``, float16, each
    subject's inside its foreground box; ``items`` lists the (case, source, target) of every prediction."""

    scans: dict[str, dict[str, torch.Tensor]]
    preds: dict[tuple[str, str, str], torch.Tensor]
    items: list[tuple[str, str, str]]
    info: dict[str, Any]


def _unrefined(model: Path) -> PipelineConfig:
    """``model``'s config, checked to have no refiner yet (a refiner learns from the outputs without one)."""
    index = model / INDEX_NAME
    if not index.is_file():
        raise UsageError(f"{model} is not a model folder (no {INDEX_NAME}): pass the exported folder")
    config = PipelineConfig.from_dict(read_model_json(index, str(index)), origin=str(index))
    if config.has_refiner:
        raise UsageError(f"{model} has a refiner already: use a copy of the folder without it (remove {REFINER_FOLDER}/ "
                         f"and its entry in {INDEX_NAME}'s components), evaluated without it")
    return config


def _settings(report: Path) -> dict[str, Any]:
    path = report / "summary.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["settings"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise UsageError(f"{path} is not the summary of an evaluate report: pass the --out folder of "
                         "`mrtranslate evaluate --model MODEL --source all`") from None


def check_report(model: Path, report: Path) -> dict[str, Any]:
    """The settings of ``report`` (an evaluate report), checked to be of ``model``'s predictions before any
    refiner, at its default sampling; UsageError naming what differs."""
    config = _unrefined(model)
    settings = _settings(report)
    if settings.get("model_sha256") != model_fingerprint(model):
        raise UsageError(f"{report} was made with another model than {model}: evaluate this model first")
    defaults = {"steps": config.default_steps, "samples": config.default_samples, "solver": config.default_solver,
                "pair_strength": dict(config.pair_strength)}
    used = {k: settings.get(k) for k in defaults}
    if used != defaults or float(settings.get("strength", -1)) != float(config.default_strength):
        raise UsageError(f"{report} sampled with {used}, not the model's defaults {defaults}: evaluate with the "
                         "defaults (no --steps, --samples, --solver or --strength)")
    if "aldm" not in (settings.get("methods") or []):
        raise UsageError(f"{report} has no predictions of the model (method aldm): evaluate with --method aldm")
    return settings


def load_refiner_data(model: Path | str, report: Path | str, data: Path | str, config: RefinerConfig,
                      progress: bool = True) -> RefinerData:
    """The training data of a refiner for ``model`` (module docstring); UsageError when ``report`` is not of this
    model or no subject is on a fine enough grid."""
    model, report = Path(model), Path(report)
    settings = check_report(model, report)
    subjects = {s.case: s for s in find_subjects(data)}
    cases = list(settings.get("cases") or [])
    missing = [c for c in cases if c not in subjects]
    if missing or not cases:
        raise UsageError(f"case {missing[0] if missing else '(none)'} of {report} is not in {data}: pass the data "
                         "folder that report evaluated")
    tasks = [tuple(t.split("->")) for t in settings.get("tasks", [])]
    scans: dict[str, dict[str, torch.Tensor]] = {}
    preds: dict[tuple[str, str, str], torch.Tensor] = {}
    coarse = []
    for case in tqdm(cases, desc="refiner data", unit="subject", disable=not progress):
        files = subjects[case].files
        vols = {m: load_volume(path) for m, path in files.items()}
        if max(max(v.spacing) for v in vols.values()) > config.max_input_spacing_mm + 1e-6:
            coarse.append(case)
            continue
        foreground = np.zeros(next(iter(vols.values())).shape, dtype=bool)
        for v in vols.values():
            foreground |= v.data > 0
        idx = np.argwhere(foreground)
        box = tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))
        scans[case] = {m: scaled_source(torch.from_numpy(v.data))[box].half() for m, v in vols.items()}
        for source, target in tasks:
            if source not in vols or target not in vols:
                continue
            path = report / "pred" / "aldm" / case / f"{case}_{target}_from_{source}.nii.gz"
            if not path.is_file():
                raise UsageError(f"{path} is missing: rerun the evaluate command to complete the report")
            pred = _saved(path)
            if pred.shape != foreground.shape:
                raise UsageError(f"{path} is not on the grid of {case}'s scans: pass the data folder that report "
                                 "evaluated")
            preds[(case, source, target)] = torch.from_numpy(np.maximum(pred, 0)[box]).half()
    if not preds:
        raise UsageError(f"no subject of {report} has voxels of at most {config.max_input_spacing_mm} mm: the refiner "
                         "learns from fine-grid scans (e.g. 1 mm); evaluate the model on such training subjects")
    if coarse:
        logger.info("refiner data: %d subject(s) on coarser grids left out (%s)", len(coarse), ", ".join(coarse))
    info = {"report": str(report.resolve()), "model_sha256": settings.get("model_sha256"),
            "cases": sorted(scans), "left_out_coarse": coarse, "items": len(preds)}
    return RefinerData(scans, preds, sorted(preds), info)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    """The metrics' SSIM window along one axis: Gaussian taps of ``sigma``, ``truncate`` sigmas each side, sum 1."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def ssim_map(a: torch.Tensor, b: torch.Tensor, taps: torch.Tensor, c1: float = 0.01 ** 2,
             c2: float = 0.03 ** 2) -> torch.Tensor:
    """SSIM map of ``a`` and ``b`` (``[B, 1, D, H, W]``, data range 1) with the separable window ``taps``, over the
    voxels where the whole window fits (each side shorter by ``len(taps) - 1``); differentiable."""
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    n = stack.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = taps.numel()
        stack = F.conv3d(stack, taps.to(stack).view(shape).expand(n, *shape[1:]).contiguous(), groups=n)
    ua, ub, uaa, ubb, uab = stack.split(1, dim=1)
    va, vb, cov = uaa - ua * ua, ubb - ub * ub, uab - ua * ub
    return ((2 * ua * ub + c1) * (2 * cov + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))


class RefinerStage(Stage):
    name = "refiner"
    metric_names = ["loss", "l1", "ssim"]

    def __init__(self, cfg: RefinerTrainConfig, ctx: DistContext, data: RefinerData, modalities: tuple[str, ...]):
        super().__init__(cfg, ctx)
        self.cfg: RefinerTrainConfig = cfg
        self.data = data
        self.modalities = modalities
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            net = Refiner(cfg.refiner_config())
        self.refiner = self.place(net)
        self.nets["refiner"] = self.refiner
        self.net = ctx.wrap(self.refiner)
        self.optimizers["refiner"] = self.adam(list(self.refiner.parameters()))
        self.taps = gaussian_window()
        # the box, where a subject's brain is smaller than the config's crop on an axis: the smallest there
        self.crop = [min([c, *(p.shape[k] for p in data.preds.values())]) for k, c in enumerate(cfg.crop)]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = step_generator(self.cfg.seed, step, self.ctx.rank)
        picks = torch.randint(len(self.data.items), (self.cfg.batch_size,), generator=g).tolist()
        out: dict[str, list[torch.Tensor]] = {"source": [], "output": [], "target": []}
        classes = []
        for i in picks:
            case, source, target = self.data.items[i]
            pred = self.data.preds[(case, source, target)]
            start = crop_offsets(pred.shape, self.crop, g)
            box = tuple(slice(a, a + c) for a, c in zip(start, self.crop))
            out["source"].append(self.data.scans[case][source][box])
            out["output"].append(pred[box])
            out["target"].append(self.data.scans[case][target][box])
            classes.append((self.modalities.index(source), self.modalities.index(target)))
        batch = {k: torch.stack(v)[:, None].float() for k, v in out.items()}
        batch["source_class"] = torch.tensor([c[0] for c in classes])
        batch["target_class"] = torch.tensor([c[1] for c in classes])
        return batch

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        self.refiner.train()
        source, output, target = (self.tensor(batch[k]) for k in ("source", "output", "target"))
        with self.autocast():
            refined = self.net(source, output, batch["source_class"].to(self.device),
                               batch["target_class"].to(self.device)).float()
        brain = ((target > 0) & (output > 0)).float()
        l1 = ((refined - target).abs() * brain).sum() / brain.sum().clamp_min(1.0)
        r = (self.taps.numel() - 1) // 2
        inner = brain[..., r:-r, r:-r, r:-r]
        ssim = (ssim_map(refined, target, self.taps) * inner).sum() / inner.sum().clamp_min(1.0)
        loss = l1 + self.cfg.ssim_weight * (1.0 - ssim)
        self.optimize(loss, self.optimizers["refiner"])
        self.finish_step()
        return {"loss": loss.detach().float(), "l1": l1.detach().float(), "ssim": ssim.detach().float()}

    def metadata(self) -> dict[str, Any]:
        return {"refiner_config": self.refiner.config.to_dict()}


def install_refiner(run: Path | str, model: Path | str, targets: Sequence[str] | None = None) -> Path:
    """Write the refiner of the refiner run ``run`` (its last checkpoint) into the model folder ``model`` as its
    ``refiner`` component (``model_index.json`` lists it); UsageError when the model has a refiner already or is
    not the model whose outputs the run learnt from (weights or settings changed since). ``targets``: the
    targets it refines, instead of the run's config's (a choice made on validation subjects after training)."""
    from .runs import RunFolder

    folder, model = RunFolder(run), Path(model)
    record = folder.read_run()
    expected = (record.get("data") or {}).get("model_sha256")
    config = _unrefined(model)
    if expected != model_fingerprint(model):
        raise UsageError(f"{model} is not the model whose outputs {folder.path} learnt to refine (its weights or "
                         "settings changed since): train the refiner again on a new report")
    tensors, scalars = load_checkpoint(folder.checkpoint_dir, prefix="model/refiner/")
    origin = str(folder.checkpoint_dir)
    settings = dict(scalars["refiner_config"])
    if targets is not None:
        settings["targets"] = list(targets)
    refiner = Refiner(RefinerConfig.from_dict(settings, origin=origin))
    load_module("model/refiner", refiner, tensors, origin)
    index = model / INDEX_NAME
    if refiner.config.num_classes != len(config.modalities):
        raise UsageError(f"the refiner has {refiner.config.num_classes} classes, {model} {len(config.modalities)} "
                         "modalities")
    save_refiner(refiner, model)
    config.components = (*config.components, "refiner")
    config.validate(str(index))
    index.write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return model / REFINER_FOLDER
