"""Rigid co-registration of two scans of one head (SimpleITK's registration framework).

Six parameters (three rotations about the centre, three translations), Mattes mutual information (works
across contrasts), regular-step gradient descent over three resolutions (shrunk 4x, 2x, 1x, smoothed 2, 1,
0 mm), started from the alignment of the two images' centres of mass. The metric samples a fixed random
20% of the voxels with a fixed seed, so a run is reproducible.

The transform maps points of the fixed (reference) scan to the moving scan, in SimpleITK's LPS world
coordinates, as ``.tfm`` files store it (ITK/SimpleITK, ANTs and 3D Slicer read them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputImageError
from ..imaging.sitk_bridge import array_of, sitk, to_sitk
from ..imaging.volume import Volume

logger = logging.getLogger(__name__)

_FEATURE = "co-registration (--preprocess)"
SEED = 20241207


def register_rigid(fixed: Volume, moving: Volume) -> Any:
    """The rigid ``sitk.Euler3DTransform`` taking points of ``fixed`` to ``moving`` (see the module docstring)."""
    s = sitk(_FEATURE)
    f = to_sitk(np.maximum(fixed.data, 0), fixed.affine, _FEATURE)
    m = to_sitk(np.maximum(moving.data, 0), moving.affine, _FEATURE)
    initial = s.CenteredTransformInitializer(f, m, s.Euler3DTransform(),
                                             s.CenteredTransformInitializerFilter.MOMENTS)
    reg = s.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.2, SEED)
    reg.SetInterpolator(s.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    try:
        result = reg.Execute(f, m)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[-160:]
        raise InputImageError(f"{moving.label} could not be registered to {fixed.label} ({msg}): check that both "
                              "are scans of the same head") from None
    logger.info("%s -> %s: rigid registration, metric %.4f after %d iterations (%s)", fixed.label, moving.label,
                reg.GetMetricValue(), reg.GetOptimizerIteration(), reg.GetOptimizerStopConditionDescription())
    # the composite returned holds one Euler3DTransform: flatten it so that the .tfm file is a plain rigid one
    tfm = s.CompositeTransform(result).GetNthTransform(0) if result.GetName() == "CompositeTransform" else result
    return s.Euler3DTransform(tfm)


def resample_onto(moving: Volume, fixed: Volume, transform: Any, *, nearest: bool = False) -> Volume:
    """``moving`` on the grid of ``fixed`` through ``transform`` (fixed -> moving points); linear or nearest
    neighbour; 0 outside the moving scan's field of view. Keeps ``moving``'s name, takes ``fixed``'s header."""
    s = sitk(_FEATURE)
    m = to_sitk(moving.data, moving.affine, _FEATURE)
    f = to_sitk(np.zeros(fixed.shape, dtype=np.float32), fixed.affine, _FEATURE)
    out = s.Resample(m, f, transform, s.sitkNearestNeighbor if nearest else s.sitkLinear, 0.0, s.sitkFloat32)
    return Volume(array_of(out), fixed.affine.copy(), fixed.header.copy(), moving.name)


def save_transform(transform: Any, path: Path) -> Path:
    """Write ``transform`` as an ITK ``.tfm`` text file."""
    s = sitk(_FEATURE)
    path.parent.mkdir(parents=True, exist_ok=True)
    s.WriteTransform(transform, str(path))
    return path

