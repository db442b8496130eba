"""Translator: the user-facing object. Hub/local/bundled weights + NIfTI geometry + the ALDM pipeline.

Two states: a loaded model (``Translator.from_pretrained(...)``), or a model with a bound source image
(``Translator("t1.nii.gz")`` or ``loaded("t1.nii.gz", source="t1")``). ``.to(*targets)`` translates the
bound source into each target in one batched pass and returns images on the source's own voxel grid.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from . import __version__
from .errors import ModalityError, UsageError, option
from .hub import ResolvedModel, push_to_hub, resolve_model
from .modalities import canonical, canonical_list, guess_from_filename
from .imaging.model_space import ModelSpaceInverse, Preprocessing, to_model_space
from .imaging.volume import Volume, image_on_grid, load_volume
from .pipeline import ALDMPipeline, SamplingOptions
from .pipeline.error_model import ErrorModel, load_error_model
from .pipeline.runtime import Runtime
from .pipeline.standard import IntensityMap, OutputStandard, apply_map
from .imaging.skullstrip_check import check_skull_stripped

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
UNCERTAINTY_RECORD = ("per-voxel sample standard deviation (n - 1) across the decoded samples of this target, "
                      "in the output's intensity units; the output is the decoded mean latent of the same samples")
CALIBRATED_RECORD = ("per-voxel expected error, as the SD of a normal error, in the output's intensity units: the "
                     "mean absolute error the model made on its training subjects where the output's intensity, "
                     "the samples' spread and the source's intensity were alike (the model folder's "
                     "uncertainty.json); 0 outside the input's foreground")
STANDARD_RECORD = ("these targets' outputs were standardised: their own brain intensities at the model's landmark "
                   "percentiles moved piecewise linearly onto the landmarks of real scans of the contrast "
                   "(model_index.json output_standard), voxel order kept; their scale is the landmarks': the "
                   "0.5th and 99.5th brain percentiles at 0 and 1")
REFINER_RECORD = ("these targets' outputs passed through the model's detail refiner on the input's grid (its refiner/ "
                  "component): a correction computed from the source scan and the output, and where its config "
                  "asks, the guided detail transfer (the output's own values in the source's local structure), "
                  "made for inputs whose voxels are as fine as the scans it was trained on")
UNCERTAINTY_KINDS = ("calibrated", "samples")


class Translator:
    """Translate a brain MRI volume into other contrasts.

    >>> Translator("sub-01_T1w.nii.gz").to("flair")                       # bundled default model
    >>> tr = Translator.from_pretrained("org/aldm-brats2021")             # Hub id, folder or bundled name
    >>> out = tr("sub-01_T1w.nii.gz", source="t1").to("t2", "flair")      # dict of nibabel images

    Outputs are float32 ``nibabel.Nifti1Image`` on exactly the input's grid (shape, affine, qform and sform
    with codes); intensities >= 0 where 0 and 1 are the target's 0.5th and 99.5th percentiles (not clipped
    above: the brightest brain voxels lie above 1), 0 outside the input's foreground (voxels > 0). A model may
    standardise some targets (``standard``, ``pipeline.standard``): their histogram is then that of real scans.

    Sampling: ``sampling=SamplingOptions(...)`` or its fields as keywords (``steps``, ``eta``, ``strength``,
    ``samples``, ``seed``, ``solver``), here for every call, or in a call of ``to`` for that call; None takes the model's
    defaults. ``seed`` (default 0) makes runs reproducible; ``seed=None`` here draws fresh noise each run.
    """

    def __init__(
        self,
        image: Any = None,
        *,
        source: str | None = None,
        model: str | Path | None = None,
        revision: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        sampling: SamplingOptions | None = None,
        progress: bool = True,
        max_memory: int | str | None = None,
        compile: bool = False,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        token: str | None = None,
        allow_skull: bool = False,
        skull_strip: bool = False,
        _pipeline: ALDMPipeline | None = None,
        _resolved: ResolvedModel | None = None,
        **sampling_fields: Any,
    ):
        if skull_strip:  # a missing extra fails here, before a model is loaded
            from .preprocess.brain import check_available

            check_available()
        if _pipeline is None:
            _resolved = resolve_model(
                model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, progress=progress,
                token=token,
            )
            runtime = Runtime.create(device, dtype, max_memory=max_memory, compile=compile)
            _pipeline = ALDMPipeline.from_pretrained(_resolved.path, runtime=runtime)
        self.pipeline = _pipeline
        self.resolved = _resolved
        #: the model folder's error model (``uncertainty.json``), or None: what ``uncertainty=True`` maps with
        self.error_model: ErrorModel | None = load_error_model(_resolved.path if _resolved is not None else None)
        #: the model's output standardisation (``model_index.json``'s ``output_standard``), or None
        self.standard: OutputStandard | None = OutputStandard.from_dict(_pipeline.config.output_standard)
        self.sampling = SamplingOptions.build(sampling or SamplingOptions(seed=DEFAULT_SEED), **sampling_fields)
        self.progress = progress
        self.allow_skull = allow_skull
        self.skull_strip = skull_strip
        self._brain_mask: Any = None
        self._source: str | None = None
        self._volume: Volume | None = None
        self._tensor: torch.Tensor | None = None
        self._inverse: ModelSpaceInverse | None = None
        if image is not None:
            self._bind(image, source)
        elif source is not None:
            raise UsageError("source= given without an image: pass the image too, e.g. Translator('t1.nii.gz', source='t1')")

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model: str | Path | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_memory: int | str | None = None,
        compile: bool = False,
        sampling: SamplingOptions | None = None,
        progress: bool = True,
        token: str | None = None,
        allow_skull: bool = False,
        skull_strip: bool = False,
        **sampling_fields: Any,
    ) -> Translator:
        """Load a model: a Hub repo id (``org/name``, optional ``@revision``), a local model folder, or the name
        of a bundled model (None: the bundled default). ``device``: auto (CUDA when available), cpu or cuda;
        ``dtype``: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16, bf16. ``compile``: ``torch.compile`` the UNet
        (opt-in; the first volume pays the compilation, tens of seconds, later ones run faster). Sampling:
        as for ``Translator``. ``token``: a Hugging Face token for private Hub models (None: ``HF_TOKEN`` or
        the saved login). ``allow_skull``: translate inputs that do not look skull-stripped (refused by
        default: the model knows brains only; see :mod:`mrtranslate.imaging.skullstrip_check`). ``skull_strip``:
        extract the brain of each input first (HD-BET, :mod:`mrtranslate.preprocess.brain`; needs
        ``pip install "mrtranslate[preprocess]"``) and translate inside it: outputs are 0 outside the brain,
        and ``brain_mask`` holds the mask."""
        return cls(
            model=model, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, device=device,
            dtype=dtype, max_memory=max_memory, compile=compile, sampling=sampling, progress=progress,
            token=token, allow_skull=allow_skull, skull_strip=skull_strip, **sampling_fields,
        )

    def __call__(self, image: Any, source: str | None = None) -> Translator:
        """A translator bound to ``image`` (a path, nibabel image, ``(array, affine)`` or Volume), sharing this model."""
        bound = copy.copy(self)
        bound._bind(image, source)
        return bound

    def _bind(self, image: Any, source: str | None) -> None:
        vol = load_volume(image)
        named = guess_from_filename(vol.name or (str(image) if isinstance(image, (str, Path)) else ""))
        if source is not None:
            src = canonical(source)
            if named is not None and named != src:
                logger.warning("%s is declared as %s but its file name says %s: using %s as declared",
                               vol.label, src, named, src)
        elif named is not None:
            src = named
        else:
            raise ModalityError(
                f"cannot tell the modality of {vol.label} from its name: pass {option('source', 'MODALITY')}, "
                f"one of {', '.join(self.modalities)}"
            )
        if src not in self.modalities:
            raise ModalityError(f"source {src!r} is not a modality of this model ({', '.join(self.modalities)})")
        self._check_divisible()
        self._brain_mask = None
        if self.skull_strip:
            from .preprocess.brain import extract_brain

            self._brain_mask = extract_brain(vol, device=self.pipeline.device)
            vol = self._brain_mask.apply(vol)
        elif not self.allow_skull:
            check_skull_stripped(vol)
        prep = Preprocessing.from_dict(self.pipeline.config.preprocessing)
        self._tensor, self._inverse = to_model_space(vol, prep)
        self._volume, self._source = vol, src

    # -- information --------------------------------------------------------------------------------
    @property
    def modalities(self) -> tuple[str, ...]:
        return self.pipeline.modalities

    @property
    def source(self) -> str | None:
        return self._source

    @property
    def volume(self) -> Volume | None:
        return self._volume

    @property
    def brain_mask(self) -> nib.Nifti1Image | None:
        """With ``skull_strip=True``: the bound input's brain mask (uint8, on its grid); else None."""
        if self._brain_mask is None or self._volume is None:
            return None
        return self._brain_mask.to_image(self._volume.header)

    def __repr__(self) -> str:
        where = self.resolved.path if self.resolved else "in-memory"
        bound = f", source={self._source!r}, image={self._volume!r}" if self._volume is not None else ""
        return f"Translator(model={str(where)!r}, device={self.pipeline.device}{bound})"

    def _check_divisible(self) -> None:
        grid = self.pipeline.config.preprocessing["grid"]
        div = self.pipeline.latent_divisor
        if any(int(g) % div for g in grid):
            raise UsageError(f"the model's grid {grid} is not a multiple of {div}: the model folder is inconsistent")

    # -- translation -------------------------------------------------------------------------------
    def to(
        self,
        *targets: str,
        sampling: SamplingOptions | None = None,
        progress: bool | None = None,
        uncertainty: bool | str = False,
        **sampling_fields: Any,
    ) -> Any:
        """Translate the bound source into ``targets`` (modality names or aliases) in one batched pass.

        One target returns a ``nibabel.Nifti1Image``; several return a dict keyed by canonical name.
        ``sampling`` or its fields as keywords: this call's, over the translator's (None: theirs).

        ``uncertainty`` (2 or more samples per target) returns a pair ``(outputs, sd)``: the outputs as above,
        unchanged, and in the same shape (one image or a dict) a per-voxel SD map on the input's grid in the
        output's intensity units. ``True`` or ``"calibrated"``: the expected error where the model has an
        error model for the pair (``uncertainty.json``, see ``calibrated``), else the samples' spread;
        ``"samples"``: always the spread across the samples (see ``spread``).
        """
        kind = self.uncertainty_kind(uncertainty)
        names = self._bound_targets(targets)
        options = SamplingOptions.build(sampling, **sampling_fields)
        if kind is None:
            latents = self.translate_tensor(names, options, progress=progress)
            return self._images(names, latents, "")
        self.check_uncertainty(names, options)
        strength = self.resolve(names, options).strength
        each = strength if isinstance(strength, tuple) else (strength,) * len(names)
        fixed = [n for n, s in zip(names, each) if float(s) == 0.0 and not self._calibrates(n, kind)]  # type: ignore[arg-type]
        if fixed:
            logger.warning("%s from %s: MS-SPADE's output (strength 0, no sampling), so its SD map is 0 everywhere",
                           ", ".join(fixed), self._source)
        draws = self.translate_tensor(names, options, progress=progress, draws=True)
        # the output is the decoded mean latent, exactly as without uncertainty (sample_mean's mean)
        intensity: dict[str, IntensityMap | None] = {}
        images = self._images(names, draws.mean(1).contiguous(), "", intensity)
        maps = self.spread(names, draws, intensity)
        if any(self._calibrates(n, kind) for n in names):
            maps = self.calibrated(names, images, maps)
        return images, maps

    def standardised_targets(self, targets: Sequence[str]) -> list[str]:
        """Those of ``targets`` whose outputs the model standardises (``pipeline.standard``)."""
        return [t for t in targets if self.standard is not None and self.standard.covers(t)]

    def uncertainty_kind(self, uncertainty: bool | str | None) -> str | None:
        """None (no map), "calibrated" or "samples" for a call's ``uncertainty``; UsageError for anything else."""
        if uncertainty is None or uncertainty is False:
            return None
        if uncertainty is True:
            return "calibrated"
        if isinstance(uncertainty, str) and uncertainty.strip().lower() in UNCERTAINTY_KINDS:
            return uncertainty.strip().lower()
        raise UsageError(f"uncertainty={uncertainty!r}: use True, 'calibrated' or 'samples'")

    def _calibrates(self, target: str, kind: str | None) -> bool:
        return (kind == "calibrated" and self.error_model is not None and self._source is not None
                and self.error_model.covers(self._source, target))

    def calibrated(self, names: Sequence[str], outputs: Any, spreads: Any) -> Any:
        """Per target, the error model's expected-error SD map (``pipeline.error_model``) of an output, from the
        output itself, the bound source and the samples' spread (both as ``to`` returns them, one image or a
        dict); a target the error model does not cover keeps its spread."""
        self._require_bound()
        one = len(names) == 1
        outputs = {names[0]: outputs} if one else outputs
        spreads = {names[0]: spreads} if one else spreads
        source = np.asarray(self._volume.data, dtype=np.float32)  # type: ignore[union-attr]
        maps = {}
        for name in names:
            if self.error_model is None or not self.error_model.covers(self._source, name):  # type: ignore[arg-type]
                maps[name] = spreads[name]
                continue
            out = outputs[name]
            sd = self.error_model.predict(self._source, name, np.asarray(out.dataobj, dtype=np.float32),  # type: ignore[arg-type]
                                          source, np.asarray(spreads[name].dataobj, dtype=np.float32))
            img = nib.Nifti1Image(sd, out.affine, out.header.copy())
            img.header["descrip"] = f"mrtranslate {__version__} {self._source}->{name} expected error".encode()[:79]
            maps[name] = img
        return maps[names[0]] if one else maps

    def check_uncertainty(self, targets: Sequence[str] = (), sampling: SamplingOptions | None = None) -> int:
        """The number of samples per target of a run asked for uncertainty; UsageError when it is 1 (a spread
        needs two or more samples). Cheap: call it before any work."""
        k = self.resolve(list(targets), sampling).samples
        if k < 2:
            raise UsageError(f"uncertainty needs 2 or more samples per target, this run draws {k}: "
                             "pass samples=3 (--samples 3) or leave out uncertainty")
        return k

    def spread(self, names: Sequence[str], draws: torch.Tensor,
               intensity: dict[str, IntensityMap | None] | None = None) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Per target, the sample standard deviation (n - 1) across the decoded draws ``[T, k, C, ...]``, voxel by
        voxel, on the source's grid in the output's intensity units: each draw is decoded and mapped back to the
        input grid on its own (as an output would be; through the output's own standardisation map, from
        ``intensity``, where the model standardises the target; through the detail refiner where it runs on this
        input), then the spread is taken. 0 outside the source's
        foreground, where every draw is 0. Costs k decodes per target (the output itself decodes the mean latent
        once; none where the draws are identical, e.g. MS-SPADE's output at strength 0: the SD is 0)."""
        maps = {}
        for name, lat in zip(names, draws):
            same = all(torch.equal(d, lat[0]) for d in lat[1:])
            images = [self._inverse(self.pipeline.decode(d[None])[0, 0].cpu()) for d in (lat[:1] if same else lat)]
            mapping = (intensity or {}).get(name)
            if not same:  # (identical draws: the SD is 0 whatever maps them)
                images = [self._refined(name, image_on_grid(_standardised(np.asarray(img.dataobj, dtype=np.float32),
                                                                          mapping), img.affine, img.header))
                          for img in images]
            values = np.stack([np.asarray(img.dataobj, dtype=np.float32) for img in images])
            sd = np.zeros_like(values[0]) if same else np.std(values, axis=0, ddof=1).astype(np.float32)
            out = nib.Nifti1Image(sd, images[0].affine, images[0].header.copy())
            out.header["descrip"] = f"mrtranslate {__version__} {self._source}->{name} SD of {len(lat)}".encode()[:79]
            maps[name] = out
        return maps[names[0]] if len(names) == 1 else maps

    def to_spade_only(self, *targets: str) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """The first stage alone: MS-SPADE's target-like latent of each target, decoded without diffusion.

        An ablation (what the diffusion stage adds); deterministic, no sampling. Works with first-stage-only
        model folders. Outputs as ``to``: one image, or a dict keyed by canonical name for several targets.
        """
        names = self._bound_targets(targets)
        pipe = self.pipeline
        pipe.plan(self._tensor.shape[2:], len(names))  # refuses before allocating when it cannot fit
        latents = pipe.target_like(pipe.encode(self._tensor), [self.modalities.index(t) for t in names],
                                   self._source_id())
        return self._images(names, latents, " MS-SPADE only")

    def _bound_targets(self, targets: Sequence[str]) -> list[str]:
        self._require_bound()
        return _target_names(targets, self._source, self.modalities)

    def _images(
        self, names: Sequence[str], latents: torch.Tensor, note: str,
        intensity: dict[str, IntensityMap | None] | None = None,
    ) -> nib.Nifti1Image | dict[str, nib.Nifti1Image]:
        """Decode each target latent (one at a time: bounded memory) onto the source's own grid, standardised
        where the model standardises the target (each map used goes into ``intensity``)."""
        images = {}
        for name, lat in zip(names, latents):
            img = self._inverse(self.pipeline.decode(lat[None])[0, 0].cpu())
            if self.standard is not None and self.standard.covers(name):
                data = np.asarray(img.dataobj)
                mapping = self.standard.map_for(name, data, data > 0)
                img = image_on_grid(_standardised(data, mapping), img.affine, img.header)
                if intensity is not None:
                    intensity[name] = mapping
            img = self._refined(name, img)
            img.header["descrip"] = f"mrtranslate {__version__} {self._source}->{name}{note}".encode()[:79]
            images[name] = img
        return images[names[0]] if len(names) == 1 else images

    def refined_targets(self, targets: Sequence[str]) -> list[str]:
        """Those of ``targets`` whose outputs from the bound input the model's detail refiner refines (the input's
        voxels fine enough, the target among the refiner's; ``pipeline.refine``)."""
        if self._volume is None:
            return []
        return [t for t in targets if self.pipeline.refines(self._volume.spacing, t)]

    def _refined(self, name: str, img: nib.Nifti1Image) -> nib.Nifti1Image:
        """An output on the input grid through the detail refiner, where it refines this target from this input;
        else ``img``."""
        if not self.refined_targets([name]):
            return img
        out = self.pipeline.refine(torch.from_numpy(np.asarray(self._volume.data, dtype=np.float32)),  # type: ignore[union-attr]
                                   torch.from_numpy(np.asarray(img.dataobj, dtype=np.float32)),
                                   self._source_id(), self.modalities.index(name), self._volume.spacing)  # type: ignore[union-attr]
        return image_on_grid(out.numpy(), img.affine, img.header)

    def translate_tensor(
        self, targets: Sequence[str], sampling: SamplingOptions | None = None, *, progress: bool | None = None,
        draws: bool = False,
    ) -> torch.Tensor:
        """Target latents ``[T, C, ...]`` for the bound source (encode once, sample every target in one batch);
        ``draws``: every sample's latent, ``[T, k, C, ...]``, instead of their mean."""
        pipe = self.pipeline
        ids = [self.modalities.index(t) for t in targets]
        o = self.resolve(targets, sampling)
        pipe.plan(self._tensor.shape[2:], len(ids) * o.samples)  # refuses before allocating when it cannot fit
        # one generator per target, seeded by (seed, target): a target's output does not depend on which
        # other targets are translated with it (a resumed batch reproduces a full run)
        gen = [torch.Generator().manual_seed(int(o.seed) * 1009 + i) for i in ids] if o.seed is not None else None
        z = pipe.encode(self._tensor)
        return pipe.generate(z, ids, o, generator=gen, progress=self.progress if progress is None else progress,
                             source=self._source_id(), draws=draws)

    def _source_id(self) -> int:
        self._require_bound()
        return self.modalities.index(self._source)

    def _require_bound(self) -> None:
        if self._tensor is None or self._inverse is None or self._source is None:
            raise UsageError("no source image: call the translator with one first, e.g. tr('t1.nii.gz').to('t2')")

    def resolve(self, targets: Sequence[str] = (), sampling: SamplingOptions | None = None) -> SamplingOptions:
        """A call's sampling: its own options, else this translator's, else the model's defaults. The model's
        strength is per pair when it sets ``pair_strength``: then, for a bound source and ``targets``, a tuple
        with one strength per target where they differ (``ALDMPipeline.resolve``)."""
        o = (sampling or SamplingOptions()).over(self.sampling)
        if o.strength is None and (self._source is None or not targets):
            o = dataclasses.replace(o, strength=self.pipeline.config.default_strength)
        ids = [self.modalities.index(t) for t in targets]
        return self.pipeline.resolve(o, ids, self._source_id() if self._source is not None else None)

    def run_record(self, targets: Sequence[str], sampling: SamplingOptions | None = None,
                   uncertainty: bool | str = False) -> dict[str, Any]:
        """What produced an output: for a sidecar JSON written beside it (with ``uncertainty``, what the SD map
        is, and per target which kind: "calibrated" or "samples")."""
        pipe = self.pipeline
        kind = self.uncertainty_kind(uncertainty)
        extra: dict[str, Any] = {}
        if kind is not None:
            kinds = {t: "calibrated" if self._calibrates(t, kind) else "samples" for t in targets}
            extra = {"uncertainty": CALIBRATED_RECORD if "calibrated" in kinds.values() else UNCERTAINTY_RECORD,
                     "uncertainty_kind": kinds}
        return {
            "mrtranslate_version": __version__,
            "model": str(self.resolved.repo_id or self.resolved.path) if self.resolved else None,
            "model_source": self.resolved.source if self.resolved else None,
            "model_revision": self.resolved.revision if self.resolved else None,
            "source_modality": self._source,
            "targets": list(targets),
            **self.resolve(targets, sampling).as_record(),
            "device": str(pipe.device),
            "precision": str(pipe.runtime.dtype).replace("torch.", ""),
            "intensity": ("the model's scale of the target contrast: the training scans' 0.5th and 99.5th brain "
                          "percentiles at 0 and 1, not clipped above; 0 outside the source foreground"),
            **({"output_standard": standardised,
                "output_standard_note": STANDARD_RECORD} if (standardised := self.standardised_targets(targets)) else {}),
            **({"detail_refiner": refined, "detail_refiner_note": REFINER_RECORD}
               if (refined := self.refined_targets(targets)) else {}),
            **extra,
            **({"skull_strip": True, **self._brain_mask.record} if self._brain_mask is not None else {}),
        }

    # -- sharing ------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        card = None
        if self.resolved is not None and (self.resolved.path / "README.md").is_file():
            card = (self.resolved.path / "README.md").read_text(encoding="utf-8")
        return self.pipeline.save_pretrained(folder, model_card=card)

    def push_to_hub(self, repo_id: str, *, folder: str | Path | None = None, **kwargs: Any) -> str:
        """Upload this model to the Hub (huggingface_hub's upload). Writes a model folder first when needed."""
        import tempfile

        if folder is not None:
            return push_to_hub(Path(folder), repo_id, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            return push_to_hub(self.save_pretrained(Path(tmp) / "model"), repo_id, **kwargs)


def _standardised(data: np.ndarray, mapping: IntensityMap | None) -> np.ndarray:
    """An output's array through its standardisation map (its non-zero voxels; 0 stays 0)."""
    return apply_map(mapping, data, data > 0)


def _target_names(targets: Sequence[str], source: str | None, modalities: Sequence[str]) -> list[str]:
    flat: list[str] = []
    for t in targets:
        flat.extend([t] if isinstance(t, str) else list(t))
    if not flat:
        raise UsageError(f"no target given: name one or more of {', '.join(modalities)}")
    names = canonical_list(flat)
    for n in names:
        if n not in modalities:
            raise ModalityError(f"target {n!r} is not a modality of this model ({', '.join(modalities)})")
        if n == source:
            raise UsageError(f"target {n!r} is the source modality: choose another target")
    return names
