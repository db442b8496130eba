"""Old module paths of mrtranslate, kept importable after the package was arranged in layer folders.

``import mrtranslate.volumes`` (and ``from mrtranslate.metrics import ...``, ...) keep working: a finder
on ``sys.meta_path`` answers for exactly the names in :data:`MOVED` and hands back the module that now
holds the code, the very same module object, so attributes, private helpers and monkeypatching behave as
before. It is consulted only after the regular import system found no file of that name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

#: old dotted name -> the module that holds its code now
MOVED: dict[str, str] = {
    "mrtranslate.volumes": "mrtranslate.imaging.model_space",
    "mrtranslate.volumes_image": "mrtranslate.imaging.volume",
    "mrtranslate.volumes_resample": "mrtranslate.imaging.resample",
    "mrtranslate.layout": "mrtranslate.imaging.layout",
    "mrtranslate.pipeline_config": "mrtranslate.pipeline.config",
    "mrtranslate.runtime": "mrtranslate.pipeline.runtime",
    "mrtranslate.evaluate": "mrtranslate.evaluation.evaluate",
    "mrtranslate.evaluate_lut": "mrtranslate.evaluation.lut",
    "mrtranslate.evaluate_report": "mrtranslate.evaluation.report",
    "mrtranslate.evaluate_figures": "mrtranslate.evaluation.figures",
    "mrtranslate.metrics": "mrtranslate.evaluation.metrics",
    "mrtranslate.training.phantom": "mrtranslate.phantom.simulator",
    "mrtranslate.training.phantom_anatomy": "mrtranslate.phantom.anatomy",
    "mrtranslate.training.phantom_physics": "mrtranslate.phantom.physics",
    "mrtranslate.training.phantom_tumor": "mrtranslate.phantom.tumor",
    "mrtranslate.training.phantom_acquisition": "mrtranslate.phantom.acquisition",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a placeholder; exec_module replaces it in sys.modules

    def exec_module(self, module: types.ModuleType) -> None:
        # The import system returns whatever sys.modules holds under the old name once this returns.
        sys.modules[module.__name__] = importlib.import_module(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (after the regular finders)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
