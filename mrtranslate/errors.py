"""Errors a user can cause. Each message says what was wrong and what to do.

The CLI prints ``str(error)`` on one line and exits with ``error.exit_code``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

#: True while the command line runs: messages then name settings as options (``--out-dir``), else as
#: keyword arguments (``out_dir=``).
_COMMAND_LINE = contextvars.ContextVar("mrtranslate_command_line", default=False)

#: keyword arguments whose option is not simply ``--`` + the name with dashes
_OPTION_NAMES = {"dtype": "--precision", "compile": "--compile", "local_files_only": "--offline"}


def on_command_line() -> bool:
    """True while the command line runs (messages name options), False for Python callers (keywords)."""
    return _COMMAND_LINE.get()


def option(name: str, value: object = None) -> str:
    """How a user names the setting ``name`` where the error is raised: ``--out-dir DIR`` on the command
    line, ``out_dir=DIR`` in Python (``value``: an example value; booleans as ``--flag`` / ``flag=True``)."""
    if _COMMAND_LINE.get():
        flag = _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
        return flag if value is None or value is True else f"{flag} {value}"
    if isinstance(value, str) and value.isupper():  # a placeholder such as DIR
        return f"{name}={value}"
    if value is None:
        return f"{name}="
    return f"{name}={value!r}"


@contextlib.contextmanager
def command_line_words() -> Iterator[None]:
    """Within this block, :func:`option` names settings as command-line options."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


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
