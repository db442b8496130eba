"""The run folder of one training stage, its metrics log, and graceful stops on SIGINT/SIGTERM.

::

    RUN/config.json           the resolved stage config (defaults + --config)
    RUN/run.json              stage, data, first stage, upstream runs, every command that ran in this folder
    RUN/metrics.csv           step, elapsed_s, one column per loss, lr
    RUN/checkpoint/           state.safetensors (+ state.json): the latest checkpoint only
    RUN/latents-*.safetensors the frozen first stage's codes of the data (spade and diffusion stages)
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ModelFormatError, OutputExistsError, UsageError
from .checkpoint import STATE_FILE
from .config import ADDED, TrainConfig, config_class

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoint"


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunFolder:
    """Paths and small files of a run folder. Only the main process writes (callers check)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def latents_path(self, rank: int, world_size: int) -> Path:
        return self.path / f"latents-{rank}-of-{world_size}.safetensors"

    def has_checkpoint(self) -> bool:
        return (self.checkpoint_dir / STATE_FILE).is_file()

    def is_run(self) -> bool:
        return (self.path / CONFIG_FILE).is_file() and (self.path / RUN_FILE).is_file()

    # -- creation and checks ----------------------------------------------------------------------
    def check_new(self) -> None:
        """Refuse to start a fresh run over one that has a checkpoint (a run that never reached one restarts)."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--run {self.path} exists and is not a folder: pass a folder path")
        if self.has_checkpoint():
            raise OutputExistsError(
                f"run folder {self.path} holds a run already: pass --resume to continue it, or choose another --run"
            )


    def check_resumable(self) -> None:
        if not self.is_run():
            raise UsageError(f"--resume: {self.path} is not a training run folder (no {CONFIG_FILE} and {RUN_FILE})")
        if not self.has_checkpoint():
            raise UsageError(
                f"--resume: {self.path} has no checkpoint yet (the run stopped before its first one): start it again "
                "without --resume in a new folder"
            )

    # -- config and run record -----------------------------------------------------------------
    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.path / CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")

    def read_config(self) -> TrainConfig:
        path = self.path / CONFIG_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path} is not readable JSON ({exc})") from None
        if not isinstance(data, dict) or "stage" not in data:
            raise ModelFormatError(f"{path} is not a training config (no 'stage')")
        cls = config_class(data["stage"])
        fields = {f.name for f in dataclasses.fields(cls)}
        for key, value in ADDED.items():  # saved before the setting existed: the value that run trained with
            if key in fields:
                data.setdefault(key, value)
        return cls.from_dict(data, origin=str(path))

    @property
    def stage(self) -> str:
        return str(self.read_run().get("stage", ""))

    def read_run(self) -> dict[str, Any]:
        path = self.path / RUN_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path} is not readable JSON ({exc}): is {self.path} a training run?") from None
        if not isinstance(data, dict):
            raise ModelFormatError(f"{path} is not a run record")
        return data

    def write_run(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(self.path / RUN_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")

    def new_record(self, stage: str, data: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return {"stage": stage, "created": now_iso(), "mrtranslate": __version__, "data": data, "commands": [], **extra}

    def add_command(self, argv: list[str], start_step: int, world_size: int) -> None:
        record = self.read_run()
        record.setdefault("commands", []).append(
            {"argv": list(argv), "started": now_iso(), "start_step": start_step, "world_size": world_size}
        )
        self.write_run(record)

    # -- metrics ---------------------------------------------------------------------------------
    def start_metrics(self, columns: list[str], after_step: int, fresh: bool = False) -> None:
        """Create metrics.csv with ``columns`` (``fresh``: replacing any), or keep its rows up to ``after_step``.

        Rows after the checkpoint a run resumes from belong to steps that are done again: they go.
        """
        path = self.metrics_path
        if fresh or not path.is_file():
            _write_text_atomic(path, ",".join(columns) + "\n")
            return
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or rows[0] != columns:
            raise ModelFormatError(f"{path} has columns {rows[0] if rows else []}, expected {columns}")
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= after_step]
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(kept)
        _write_text_atomic(path, buf.getvalue())

    def append_metrics(self, columns: list[str], row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerow([_fmt(row.get(c)) for c in columns])

    def last_metrics(self, upto: int | None = None) -> dict[str, float]:
        """The last row of metrics.csv (the last one at or before step ``upto`` when given)."""
        if not self.metrics_path.is_file():
            return {}
        with open(self.metrics_path, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if upto is None or int(r["step"]) <= upto]
        if not rows:
            return {}
        return {k: float(v) for k, v in rows[-1].items() if v not in (None, "")}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class StopSignals:
    """Turns SIGINT and SIGTERM into a flag the training loop polls (it then checkpoints and exits).

    A second SIGINT raises KeyboardInterrupt at once. Handlers are only installed in the main thread and
    the previous ones are restored on exit.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received) if self.received is not None else 0
