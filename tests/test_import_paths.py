"""Every public import path from before the layer folders still works, and names the same objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import mrtranslate
from mrtranslate._moved import MOVED

# old module -> names users import from it
OLD_NAMES = {
    "mrtranslate.volumes": ["Preprocessing", "to_model_space", "ModelSpaceInverse", "Volume", "load_volume",
                            "save_image"],
    "mrtranslate.volumes_image": ["Volume", "load_volume", "save_image", "MIN_FIELD_OF_VIEW_MM"],
    "mrtranslate.volumes_resample": ["gaussian_smooth", "foreground_box", "ras_reorder"],
    "mrtranslate.layout": ["Subject", "find_subjects", "file_role"],
    "mrtranslate.pipeline_config": ["PipelineConfig", "PUBLISHED_PREPROCESSING", "check_samples"],
    "mrtranslate.runtime": ["Runtime", "plan_memory", "parse_memory"],
    "mrtranslate.evaluate": ["evaluate", "task_pairs"],
    "mrtranslate.evaluate_lut": ["IntensityLUT", "fit_luts", "N_BINS"],
    "mrtranslate.evaluate_report": [],
    "mrtranslate.evaluate_figures": ["DPI", "VIEWS"],
    "mrtranslate.metrics": ["compute_metrics", "normalize", "METRICS"],
    "mrtranslate.training.phantom": ["simulate_subject", "write_dataset", "PhantomSubject"],
    "mrtranslate.training.phantom_anatomy": [],
    "mrtranslate.training.phantom_physics": [],
    "mrtranslate.training.phantom_tumor": [],
    "mrtranslate.training.phantom_acquisition": [],
}


def test_the_table_of_moved_modules_is_tested_whole() -> None:
    assert set(OLD_NAMES) == set(MOVED)


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_module_path_imports_the_moved_module(old: str) -> None:
    pytest.importorskip("scipy")  # the phantom and training modules need the train extra
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    for name in OLD_NAMES[old]:
        assert hasattr(module, name), f"{old}.{name}"
    parent, _, child = old.rpartition(".")
    assert getattr(importlib.import_module(parent), child) is module  # `import a.b` then `a.b.x` works


def test_the_public_names_of_the_package_and_the_pipeline() -> None:
    from mrtranslate.pipeline import ALDMPipeline, read_model_json
    from mrtranslate.pipeline.aldm import ALDMPipeline as Moved
    from mrtranslate.pipeline.folder import read_model_json as reader
    from mrtranslate.translator import Translator

    assert mrtranslate.ALDMPipeline is ALDMPipeline is Moved
    assert mrtranslate.Translator is Translator
    assert read_model_json is reader


def test_an_unknown_module_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("mrtranslate.no_such_module")


def test_old_paths_work_in_a_fresh_interpreter() -> None:
    """`from mrtranslate.volumes import ...` as a user's first import, with nothing imported before it."""
    code = ("from mrtranslate.volumes import Preprocessing; from mrtranslate.metrics import compute_metrics; "
            "from mrtranslate.layout import find_subjects; import mrtranslate.evaluate; "
            "print(Preprocessing.__module__, compute_metrics.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["mrtranslate.imaging.model_space", "mrtranslate.evaluation.metrics"]
