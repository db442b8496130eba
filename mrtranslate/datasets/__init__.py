"""Whole datasets: translate every subject of a BraTS tree, a BIDS dataset or a folder (:func:`translate_dataset`),
or fill in each subject's missing contrasts (:func:`complete_dataset`); outputs named in the input's own
convention (:mod:`.names`). Depends on the Translator, never the reverse."""

from .run import complete_dataset, translate_dataset

__all__ = ["complete_dataset", "translate_dataset"]
