"""Typed configuration objects shared by the networks.

Each config is a dataclass whose defaults are the published ALDM configuration. It serialises to a
JSON-safe dict carrying its class name and format version, and refuses absurd sizes before anything
is allocated (a model folder from the internet must not be able to make us allocate 1 TB).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, ClassVar, TypeVar

from ..errors import ModelFormatError

logger = logging.getLogger(__name__)

C = TypeVar("C", bound="ModelConfig")

#: Upper bounds that no sensible ALDM configuration reaches; they exist to reject hostile configs.
MAX_CHANNELS = 4096
MAX_LEVELS = 8
MAX_BLOCKS = 16
MAX_CODEBOOK = 1 << 20
MAX_CLASSES = 64
MAX_PARAMETERS = 2_000_000_000


def _tuple_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if str(f.type).startswith("tuple")}


@dataclasses.dataclass
class ModelConfig:
    """Base class: JSON round trip, format-version check, validation."""

    FORMAT_VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d["_class_name"] = type(self).__name__
        d["_format_version"] = self.FORMAT_VERSION
        return dict(sorted(d.items()))

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, origin: str = "config") -> C:
        if not isinstance(data, dict):
            raise ModelFormatError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        name = data.pop("_class_name", cls.__name__)
        version = data.pop("_format_version", 1)
        if name != cls.__name__:
            raise ModelFormatError(f"{origin}: describes a {name!r}, expected {cls.__name__!r}")
        if not isinstance(version, int) or version > cls.FORMAT_VERSION:
            raise ModelFormatError(
                f"{origin}: format version {version!r} is newer than this mrtranslate understands "
                f"({cls.FORMAT_VERSION}); upgrade mrtranslate (pip install -U mrtranslate)"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("%s: ignoring unknown keys %s", origin, ", ".join(unknown))
        tuples = _tuple_fields(cls)
        kwargs = {}
        for k in known & set(data):
            v = data[k]
            kwargs[k] = tuple(v) if k in tuples and isinstance(v, list) else v
        try:
            cfg = cls(**kwargs)
        except TypeError as exc:
            raise ModelFormatError(f"{origin}: {exc}") from None
        cfg.validate(origin)
        return cfg

    def validate(self, origin: str = "config") -> None:
        """Raise ModelFormatError when a value is of the wrong type or outside sane bounds."""
        est = self.parameter_estimate()
        if est > MAX_PARAMETERS:
            raise ModelFormatError(
                f"{origin}: this configuration would have about {est:.3g} parameters; refusing "
                f"(limit {MAX_PARAMETERS:.0e}): the config file is corrupted or not an ALDM model"
            )

    def parameter_estimate(self) -> int:
        """A cheap upper-bound estimate of the parameter count, computed without allocating."""
        return 0


def check_int(origin: str, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ModelFormatError(f"{origin}: {name} = {value!r} must be an integer in [{lo}, {hi}]")
    return value


def check_int_tuple(origin: str, name: str, value: Any, lo: int, hi: int, max_len: int) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= max_len:
        raise ModelFormatError(f"{origin}: {name} = {value!r} must be a list of 1..{max_len} integers")
    for v in value:
        check_int(origin, name, v, lo, hi)
    return tuple(value)
