"""Where model weights come from: a bundled model, a local model folder, or a Hugging Face Hub repository.

A model folder holds only JSON and safetensors (plus a model card that is never parsed)::

    model_index.json                       pipeline config: format version, modalities, grid, components
    vqgan/config.json + vqgan/model.safetensors
    unet/config.json  + unet/model.safetensors     (absent in a first-stage-only folder)
    scheduler/config.json                          (with unet)
    README.md                              model card

Hub downloads go through ``huggingface_hub`` (its cache, ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE`` and ``HF_TOKEN`` apply) and fetch exactly the file names above, nothing else: a
repository's pickles, other files, and names that try to leave the folder are never downloaded.

About 400 lines: resolving, downloading, validating and pushing a folder share one list of the files a
model folder may hold and one translation of huggingface_hub's errors into one-line messages.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .errors import HubError, ModelFormatError, ModelNotFoundError, MRTranslateError, UsageError, option

logger = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
DEFAULT_MODEL = "brats-2mm"

INDEX_NAME = "model_index.json"
CARD_NAME = "README.md"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The files each component folder holds.
COMPONENT_FILES: dict[str, tuple[str, ...]] = {
    "vqgan": (CONFIG_NAME, WEIGHTS_NAME),
    "unet": (CONFIG_NAME, WEIGHTS_NAME),
    "scheduler": (CONFIG_NAME,),
    "refiner": (CONFIG_NAME, WEIGHTS_NAME),  # optional: the detail refiner (models.refiner)
}
#: Every file a model folder may hold: what a Hub download fetches and what push_to_hub uploads.
ERROR_MODEL_NAME = "uncertainty.json"  # optional: the model's error model (pipeline.error_model)
MODEL_FILES: tuple[str, ...] = (INDEX_NAME, CARD_NAME, ERROR_MODEL_NAME) + tuple(
    f"{component}/{name}" for component, names in COMPONENT_FILES.items() for name in names
)

_SIMPLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_REPO_ID = re.compile(r"([A-Za-z0-9][\w.-]{0,95})/([A-Za-z0-9][\w.-]{0,95})")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ACCEPTED_FORMS = (
    "a Hub repo id 'org/name' (optionally 'org/name@revision'), an existing model folder, "
    "or the name of a bundled model"
)


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on local disk and where it came from."""

    path: Path
    source: str  # "bundled" | "local" | "hub"
    repo_id: str | None = None
    revision: str | None = None  # the commit id, for Hub models


# -- model folders ---------------------------------------------------------------------------------
def is_simple_name(name: object) -> bool:
    """True for a plain file or folder name: no separators, no '..', not absolute, not hidden."""
    return isinstance(name, str) and _SIMPLE_NAME.fullmatch(name) is not None and ".." not in name


def _check_safetensors(path: Path, origin: str) -> None:
    """Parse the safetensors header (names, dtypes, shapes, offsets) without reading tensor data."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelFormatError(f"{origin} is missing: the model folder is incomplete (re-download or re-export it)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            names = list(f.keys())
            for name in names:
                f.get_slice(name).get_shape()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{origin} is not a readable safetensors file ({exc}): the file is corrupted or truncated; re-download it"
        ) from None
    if not names:
        raise ModelFormatError(f"{origin} holds no tensors: the model folder is corrupted")


def validate_model_folder(path: Path) -> None:
    """Check that ``path`` is a complete model folder, without loading any tensor data.

    Checks: ``model_index.json`` parses and is a pipeline config this version understands (format version,
    known components, sane sizes; see ``PipelineConfig``); every declared component has its files; every
    ``config.json`` is a JSON object; every ``model.safetensors`` has a valid header and at least one tensor.
    Raises ModelNotFoundError (no such folder) or ModelFormatError.
    """
    from .pipeline.folder import read_model_json  # torch: imported only when a folder is checked

    path = Path(path)
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a model folder (no such directory)")
    index = read_model_json(path / INDEX_NAME, str(path / INDEX_NAME))
    components = index.get("components")
    if isinstance(components, list):
        for name in components:
            if not is_simple_name(name):
                raise ModelFormatError(
                    f"{path / INDEX_NAME}: component name {name!r} is not a plain folder name; refusing to read it"
                )
    from .pipeline.config import PipelineConfig  # the pipeline's own rules for model_index.json

    config = PipelineConfig.from_dict(index, origin=str(path / INDEX_NAME))
    for component in config.components:
        if component not in COMPONENT_FILES:
            raise ModelFormatError(f"{path / INDEX_NAME}: component {component!r} has no known files in this version")
        for name in COMPONENT_FILES[component]:
            file = path / component / name
            if name.endswith(".json"):
                read_model_json(file, str(file))
            else:
                _check_safetensors(file, str(file))
    if (path / ERROR_MODEL_NAME).is_file():
        from .pipeline.error_model import load_error_model

        load_error_model(path)


# -- resolution ------------------------------------------------------------------------------------
def resolve_model(
    model: str | Path | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    progress: bool = True,
    token: str | None = None,
) -> ResolvedModel:
    """Find (and if needed download) a model folder and validate it.

    ``model`` is None (the bundled default model), an existing local folder, the name of a bundled model,
    or a Hub repo id ``org/name`` with an optional ``@revision`` (branch, tag or commit). ``revision``,
    ``cache_dir``, ``local_files_only`` and ``token`` (private models; None: ``HF_TOKEN`` or the login of
    ``hf auth login``) apply to Hub models only.
    """
    if model is None:
        return _bundled(DEFAULT_MODEL, revision)
    if isinstance(model, Path) or (isinstance(model, str) and model.strip()):
        text = str(model).strip()
        local = Path(text).expanduser()
        if local.is_dir():
            _no_revision(revision, text)
            validate_model_folder(local)
            return ResolvedModel(path=local.resolve(), source="local")
        if local.exists():
            raise ModelNotFoundError(
                f"{local} is a file, not a model folder: pass the folder that holds model_index.json "
                "(convert published checkpoints with `mrtranslate convert`)"
            )
        if isinstance(model, str):
            if is_simple_name(text) and ((BUNDLED_DIR / text).is_dir() or text == DEFAULT_MODEL):
                return _bundled(text, revision)
            repo_id, _, at_revision = text.partition("@")
            if _is_repo_id(repo_id) and (at_revision or "@" not in text):
                if at_revision and revision is not None and at_revision != revision:
                    raise UsageError(f"two revisions given for {repo_id}: '@{at_revision}' and revision={revision!r}")
                return _from_hub(repo_id, at_revision or revision or None, cache_dir, local_files_only, progress,
                                 token)
        raise ModelNotFoundError(f"no model folder at {local}; a model is {_ACCEPTED_FORMS} "
                                 f"({', '.join(bundled_names())})")
    raise ModelNotFoundError(f"model must be {_ACCEPTED_FORMS}, not {model!r}")


def bundled_names() -> list[str]:
    """The names of the models bundled with this copy of mrtranslate, the default first."""
    names = sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / INDEX_NAME).is_file()) if BUNDLED_DIR.is_dir() else []
    return sorted(names, key=lambda n: n != DEFAULT_MODEL)


def _no_revision(revision: str | None, model: str) -> None:
    if revision is not None:
        raise UsageError(f"revision={revision!r} applies to Hub models only, and {model} is not one")


def _is_repo_id(text: str) -> bool:
    m = _REPO_ID.fullmatch(text)
    return m is not None and not any(".." in part or "--" in part or part.endswith(".") for part in m.groups())


def _bundled(name: str, revision: str | None) -> ResolvedModel:
    _no_revision(revision, f"the bundled model {name!r}")
    folder = BUNDLED_DIR / name
    if not (folder / INDEX_NAME).is_file():
        if name == DEFAULT_MODEL:
            raise ModelNotFoundError(
                f"the bundled default model {DEFAULT_MODEL!r} is not installed in this copy of mrtranslate: "
                f"pass {option('model')} with a Hub id 'org/name' or a model folder"
            )
        raise ModelNotFoundError(f"the bundled model {name!r} is not installed in this copy of mrtranslate")
    validate_model_folder(folder)
    return ResolvedModel(path=folder.resolve(), source="bundled")


class _SilentTqdm(tqdm):
    """A progress bar that never shows (``progress=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _from_hub(
    repo_id: str, revision: str | None, cache_dir: str | Path | None, local_files_only: bool, progress: bool,
    token: str | None = None,
) -> ResolvedModel:
    from huggingface_hub import HfApi, constants, snapshot_download

    offline_reason = "local_files_only=True" if local_files_only else None
    if offline_reason is None and constants.HF_HUB_OFFLINE:
        offline_reason = "HF_HUB_OFFLINE is set"
    context = _Context(repo_id, revision, cache_dir or constants.HF_HUB_CACHE, offline_reason)
    network_error: MRTranslateError | None = None
    if offline_reason is None:
        # huggingface_hub asks for the revision without a timeout: ask first, with one, so that a
        # stalled server fails after HF_HUB_ETAG_TIMEOUT seconds instead of hanging.
        try:
            HfApi(token=token).model_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - classified; anything unknown propagates unchanged
            network_error = context.translate(exc)
            if network_error is None:
                raise
            if not isinstance(network_error, HubError):
                raise network_error from exc
            logger.warning("%s; looking for a cached copy", network_error)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline_reason is not None or network_error is not None,
            allow_patterns=list(MODEL_FILES),
            token=token,
            tqdm_class=None if progress else _SilentTqdm,
        )
    except Exception as exc:  # noqa: BLE001 - classified; anything unknown propagates unchanged
        if network_error is not None:
            raise type(network_error)(f"{network_error} (no complete copy is in the local cache either)") from exc
        error = context.translate(exc)
        if error is None:
            raise
        raise error from exc
    path = Path(folder)
    if not (path / INDEX_NAME).is_file():
        raise ModelFormatError(
            f"'{context.name}' on the Hub is not an mrtranslate model folder (it has no {INDEX_NAME}): check the id"
        )
    try:
        validate_model_folder(path)
    except MRTranslateError as exc:
        raise ModelFormatError(f"Hub model '{context.name}' ({path.name[:12]}): {exc}") from None
    commit = path.name if _COMMIT.fullmatch(path.name) else None
    return ResolvedModel(path=path, source="hub", repo_id=repo_id, revision=commit)


# -- huggingface_hub's errors -> ours --------------------------------------------------------------
def _http_errors(*names: str) -> tuple[type[BaseException], ...]:
    """The exception classes ``names`` of whichever HTTP client huggingface_hub uses (httpx2, httpx, requests)."""
    found: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx", "requests", "requests.exceptions"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        found += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    return tuple(found)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 32:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@dataclass
class _Context:
    repo_id: str
    revision: str | None
    cache_dir: str | Path
    offline_reason: str | None
    action: str = "fetch"  # or "push to"

    @property
    def name(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def translate(self, exc: BaseException) -> MRTranslateError | None:
        """Our error for a huggingface_hub / HTTP failure; None when ``exc`` is not one of those."""
        from huggingface_hub import constants
        from huggingface_hub import errors as hf

        chain = list(_chain(exc))

        def find(*types: type[BaseException]) -> BaseException | None:
            return next((e for e in chain if types and isinstance(e, types)), None)

        where = f"the Hub ({constants.ENDPOINT})"
        if find(hf.GatedRepoError):
            return ModelNotFoundError(
                f"'{self.repo_id}' is a gated model: accept its conditions on the Hub, then log in "
                "(`hf auth login` or HF_TOKEN)"
            )
        if find(hf.RepositoryNotFoundError):
            return ModelNotFoundError(
                f"model '{self.repo_id}' was not found on {where}: check the id (org/name); if it is private, "
                "log in (`hf auth login` or HF_TOKEN)"
            )
        if find(hf.RevisionNotFoundError):
            return ModelNotFoundError(
                f"revision '{self.revision}' of '{self.repo_id}' was not found on {where}: "
                "check the branch, tag or commit"
            )
        if self.offline_reason is not None or find(hf.OfflineModeIsEnabled):
            reason = self.offline_reason or "HF_HUB_OFFLINE is set"
            state = "incomplete in" if find(getattr(hf, "IncompleteSnapshotError", ())) else "not in"
            return ModelNotFoundError(
                f"model '{self.name}' is {state} the local cache ({self.cache_dir}) and downloads are off "
                f"({reason}): download it once with network access (`mrtranslate download {self.name}`)"
            )
        if find(*_http_errors("TimeoutException", "Timeout"), TimeoutError):
            return HubError(
                f"{where} did not answer in time as we tried to {self.action} '{self.name}': check your network "
                "and retry, or raise HF_HUB_ETAG_TIMEOUT / HF_HUB_DOWNLOAD_TIMEOUT (seconds)"
            )
        if find(*_http_errors("ConnectError", "ConnectionError"), ConnectionRefusedError):
            return HubError(
                f"cannot connect to {where} to {self.action} '{self.name}': check your network and HF_ENDPOINT, "
                "or set HF_HUB_OFFLINE=1 to use models already in the cache"
            )
        broken = find(*_http_errors("RemoteProtocolError", "ReadError", "ChunkedEncodingError"))
        if broken is not None or any("Consistency check failed" in str(e) for e in chain):
            return HubError(
                f"the download of '{self.name}' broke off before the files were complete (the connection closed "
                "early); nothing incomplete was kept: retry"
            )
        if find(getattr(hf, "FileMetadataError", ())):
            return HubError(
                f"the server at {constants.ENDPOINT} does not answer like a Hugging Face Hub "
                "(no ETag / X-Repo-Commit headers): check HF_ENDPOINT"
            )
        http = find(hf.HfHubHTTPError)
        status = getattr(getattr(http, "response", None), "status_code", None)
        if isinstance(status, int) and status >= 500:
            return HubError(f"{where} answered HTTP {status} (server error) for '{self.name}': retry later")
        if status in (401, 403):
            return HubError(
                f"{where} refused to let us {self.action} '{self.name}' (HTTP {status}): log in (`hf auth login` "
                "or HF_TOKEN) with a token that has access to it"
            )
        if isinstance(status, int):
            return HubError(f"{where} answered HTTP {status} for '{self.name}': check the id and retry")
        if find(hf.EntryNotFoundError):
            return HubError(
                f"{where} listed files of '{self.name}' that it then did not serve: the repository changed "
                "during the download; retry"
            )
        if find(hf.HFValidationError):
            return ModelNotFoundError(f"'{self.repo_id}' is not a valid Hub repo id; a model is {_ACCEPTED_FORMS}")
        return None


# -- sharing ---------------------------------------------------------------------------------------
def push_to_hub(
    folder: Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload mrtranslate model",
) -> str:
    """Upload a model folder to a Hub repository (created if needed); returns the new commit id.

    Only the model-folder files are uploaded; files of the model-folder layout that the repository holds
    but ``folder`` does not (e.g. a ``unet/`` of an earlier upload) are deleted in the same commit, so the
    repository ends up holding exactly this model. Other files in the repository are left alone.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    validate_model_folder(folder)
    if not _is_repo_id(repo_id):
        raise UsageError(f"{repo_id!r} is not a Hub repo id: use 'org/name'")
    context = _Context(repo_id, revision, "", None, action="push to")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=list(MODEL_FILES),
            delete_patterns=list(MODEL_FILES),
        )
    except Exception as exc:  # noqa: BLE001 - classified; anything unknown propagates unchanged
        error = context.translate(exc)
        if error is None:
            raise
        raise error from exc
    return str(info.oid)
