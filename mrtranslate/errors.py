"""Errors a user can cause. Each message says what was wrong and what to do.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``.
"""

from __future__ import annotations


class MRTranslateError(Exception):
    """Base class of every error mrtranslate raises for a user's input or environment."""

    exit_code = 1


class UsageError(MRTranslateError, ValueError):
    """Wrong arguments: unknown modality, source equal to target, conflicting options.

    Also a ``ValueError``, so that Python callers catching the built-in for a bad argument catch it too."""

    exit_code = 2


class ModalityError(UsageError):
    """A modality name that is not known, or a source that cannot be inferred."""


class InputImageError(MRTranslateError):
    """An input image that cannot be read or is not a usable 3D brain volume."""


class ModelNotFoundError(MRTranslateError):
    """A model id, folder or bundled name that does not resolve to a model folder."""


class ModelFormatError(MRTranslateError):
    """A model folder or checkpoint whose files are missing, corrupted or of an unknown format."""


class UnsafeCheckpointError(ModelFormatError):
    """A checkpoint that can only be opened by full unpickling (which may execute code)."""


class OutputExistsError(UsageError):
    """An output file that exists already (pass --overwrite) or that would replace the input."""


class MemoryBudgetError(MRTranslateError):
    """A run that cannot fit in the memory available, detected before allocating."""


class GridMismatchError(UsageError):
    """Images (or arrays) that must share one voxel grid but differ in shape or affine."""


class HubError(MRTranslateError):
    """The Hugging Face Hub could not be reached, timed out, failed, or broke off a download."""


class DatasetLayoutError(MRTranslateError):
    """A dataset folder without subjects in a known layout, or with ambiguous files in a subject."""


class MissingDependencyError(MRTranslateError):
    """An optional dependency that a feature needs is not installed (the message names the pip extra)."""


class OutputWriteError(MRTranslateError):
    """An output file that could not be written (disk full, no permission, read-only folder)."""
