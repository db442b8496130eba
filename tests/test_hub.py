"""Where models come from: bundled, local folders, and the Hub (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from _hubserver import edit_index, hub_env, hub_server, make_model_folder, read_folder, set_hub_env  # noqa: F401

from mrtranslate import hub
from mrtranslate.cli import main
from mrtranslate.errors import HubError, ModelFormatError, ModelNotFoundError, UsageError
from mrtranslate.hub import MODEL_FILES, resolve_model, validate_model_folder

ROOT = Path(__file__).resolve().parents[1]
#: Files a Hub repo may hold besides a model folder; none of them may ever be requested.
HOSTILE_FILES = {
    "pytorch_model.bin": b"pickle",
    "vqgan/model.ckpt": b"pickle",
    "unet/diffusion_pytorch_model.pt": b"pickle",
    "../evil/config.json": b"{}",
    "vqgan/../../escape/model.safetensors": b"x",
}


def resolve_gets(server) -> set[str]:
    """The repo files the client downloaded (GET .../resolve/<rev>/<file>)."""
    out = set()
    for path in server.paths_requested("GET"):
        parts = path.split("/resolve/", 1)
        if len(parts) == 2:
            out.add(parts[1].split("/", 1)[1])
    return out


# -- local folders, bundled models, forms -------------------------------------------------------------
def test_missing_default_model_says_what_to_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "bundled")
    with pytest.raises(ModelNotFoundError, match="brats-2mm.*not installed.*pass model="):
        resolve_model()
    with pytest.raises(ModelNotFoundError, match="not installed"):
        resolve_model("brats-2mm")


def test_bundled_models_resolve_by_name_and_as_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "BUNDLED_DIR", tmp_path / "bundled")
    make_model_folder(tmp_path / "bundled" / hub.DEFAULT_MODEL)
    make_model_folder(tmp_path / "bundled" / "other", first_stage_only=True)
    default = resolve_model()
    assert (default.source, default.path.name, default.repo_id) == ("bundled", hub.DEFAULT_MODEL, None)
    assert resolve_model("other").path == (tmp_path / "bundled" / "other").resolve()
    with pytest.raises(UsageError, match="Hub models only"):
        resolve_model("other", revision="main")


def test_local_folder_as_str_or_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_model_folder(tmp_path / "org" / "name")
    monkeypatch.chdir(tmp_path)
    for model in (folder, str(folder), "org/name", Path("org/name")):
        resolved = resolve_model(model)  # an existing folder wins over a Hub id of the same spelling
        assert (resolved.source, resolved.path, resolved.revision) == ("local", folder.resolve(), None)
    with pytest.raises(UsageError):
        resolve_model(folder, revision="v1")


@pytest.mark.parametrize(
    "model",
    ["not a model", "a/b/c", "/no/such/folder", "../up", "org/na..me", "org/", "@main", "org/name@", "", Path("nope")],
)
def test_unknown_forms_say_what_is_accepted(model: str | Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="org/name"):
        resolve_model(model)


def test_a_checkpoint_file_is_not_a_model_folder(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match="is a file.*mrtranslate convert"):
        resolve_model(ckpt)


def test_conflicting_revisions(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="two revisions"):
        resolve_model("org/name@v1", revision="v2")


# -- validate_model_folder ----------------------------------------------------------------------------
def test_hub_knows_the_files_of_every_pipeline_component() -> None:
    from mrtranslate.pipeline.config import COMPONENTS

    assert set(hub.COMPONENT_FILES) == set(COMPONENTS)


def test_valid_folders_pass(tmp_path: Path) -> None:
    validate_model_folder(make_model_folder(tmp_path / "full"))
    validate_model_folder(make_model_folder(tmp_path / "first-stage", first_stage_only=True))
    pickles = make_model_folder(tmp_path / "with-extras")
    (pickles / "vqgan" / "model.ckpt").write_bytes(b"\x80\x04 not read")
    validate_model_folder(pickles)  # other files are never read, so they are no error


@pytest.mark.parametrize(
    "missing",
    ["model_index.json", "vqgan/config.json", "vqgan/model.safetensors", "unet/model.safetensors",
     "scheduler/config.json"],
)
def test_a_folder_missing_a_file(missing: str, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    (folder / missing).unlink()
    with pytest.raises(ModelFormatError, match=f"{Path(missing).name} is missing"):
        validate_model_folder(folder)


def test_declared_component_without_its_folder(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m", first_stage_only=True)
    edit_index(folder, components=["vqgan", "unet", "scheduler"])
    with pytest.raises(ModelFormatError, match="unet.*config.json is missing"):
        validate_model_folder(folder)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda b: b[: len(b) - 7],  # truncated
        lambda b: b[: len(b) // 2],
        lambda b: b + b"junk",
        lambda b: b"\x00" * len(b),
        lambda b: b"",
        lambda b: b"PK\x03\x04 a zip, or a pickle, or anything else",
        lambda b: (2).to_bytes(8, "little") + b"{}",  # a valid file with no tensors
    ],
)
def test_corrupted_safetensors(corrupt, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    weights = folder / "unet" / "model.safetensors"
    weights.write_bytes(corrupt(weights.read_bytes()))
    with pytest.raises(ModelFormatError, match="unet/model.safetensors"):
        validate_model_folder(folder)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\udcff"])
def test_unreadable_json(content: str, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    (folder / "vqgan" / "config.json").write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(ModelFormatError, match="vqgan/config.json"):
        validate_model_folder(folder)


def test_oversized_json_is_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = make_model_folder(tmp_path / "m")
    import mrtranslate.pipeline.folder

    monkeypatch.setattr(mrtranslate.pipeline.folder, "MAX_JSON_BYTES", 64)  # the one reader of model-folder JSON
    with pytest.raises(ModelFormatError, match="far larger than a config"):
        validate_model_folder(folder)
    with pytest.raises(ModelFormatError, match="far larger than a config"):
        mrtranslate.pipeline.ALDMPipeline.from_pretrained(folder)


def test_newer_format_version(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    edit_index(folder, _format_version=99)
    with pytest.raises(ModelFormatError, match="newer.*upgrade mrtranslate"):
        validate_model_folder(folder)


def test_absurd_sizes_are_refused(tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    edit_index(folder, preprocessing={"spacing_mm": [1, 1, 1], "grid": [10**9, 10**9, 10**9]})
    with pytest.raises(ModelFormatError, match="grid"):
        validate_model_folder(folder)


@pytest.mark.parametrize("name", ["../../outside", "/etc", "vqgan/../../x", "..", ".hidden", "a\\b"])
def test_component_names_that_try_path_traversal(name: str, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    edit_index(folder, components=["vqgan", name])
    with pytest.raises(ModelFormatError, match="not a plain folder name"):
        validate_model_folder(folder)


# -- the Hub, over HTTP ---------------------------------------------------------------------------------
def test_hub_download_loads_and_works_offline_afterwards(hub_env, tmp_path: Path) -> None:
    from _tiny import save_tiny

    from mrtranslate.pipeline import ALDMPipeline

    from mrtranslate.pipeline.error_model import ErrorModel, PairTable, load_error_model

    from mrtranslate.models.refiner import Refiner
    from mrtranslate.pipeline.folder import save_refiner

    source = save_tiny(tmp_path / "published")
    ErrorModel({"t1->t2": PairTable(np.linspace(0.1, 0.2, 16), [], [])}).save(source)  # every optional file too
    save_refiner(Refiner(), source)
    edit_index(source, components=["vqgan", "unet", "scheduler", "refiner"])
    commit = hub_env.add_repo("org/aldm-tiny", source, files=HOSTILE_FILES)
    resolved = resolve_model("org/aldm-tiny", progress=False)
    assert (resolved.source, resolved.repo_id, resolved.revision) == ("hub", "org/aldm-tiny", commit)
    assert resolve_gets(hub_env) == set(MODEL_FILES)  # exactly the model files; no pickle, no escaping name
    assert load_error_model(resolved.path).covers("t1", "t2")
    assert read_folder(resolved.path) == read_folder(source)
    assert resolved.path.is_relative_to(Path(os.environ["HF_HOME"]))
    ALDMPipeline.from_pretrained(resolved.path)  # the downloaded folder loads for real

    # Second load, offline: the same folder, without a single request.
    hub_env.requests.clear()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "mrtranslate", "download", "org/aldm-tiny", "-q"],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(resolved.path)
    assert hub_env.requests == []


def test_in_process_offline_mode_and_local_files_only(hub_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_env.add_repo("org/tiny", make_model_folder(tmp_path / "m"))
    for kwargs in ({"local_files_only": True}, {}):
        if not kwargs:
            set_hub_env(monkeypatch, offline=True)
        with pytest.raises(ModelNotFoundError, match="not in the local cache.*downloads are off"):
            resolve_model("org/tiny", progress=False, **kwargs)
    assert hub_env.requests == []
    set_hub_env(monkeypatch, offline=False)
    online = resolve_model("org/tiny", progress=False)
    set_hub_env(monkeypatch, offline=True)
    assert resolve_model("org/tiny", progress=False) == online
    assert resolve_model("org/tiny@main", local_files_only=True, progress=False) == online


def test_revisions_branches_tags_and_commits(hub_env, tmp_path: Path) -> None:
    old = hub_env.add_repo("org/tiny", make_model_folder(tmp_path / "v1", first_stage_only=True), branch="v1")
    new = hub_env.add_repo("org/tiny", make_model_folder(tmp_path / "v2"), branch="main")
    assert resolve_model("org/tiny").revision == new  # with progress bars (on stderr)
    first_stage = resolve_model("org/tiny@v1", progress=False)
    assert first_stage.revision == old and not (first_stage.path / "unet").exists()
    assert resolve_model("org/tiny", revision=old, progress=False).revision == old
    with pytest.raises(ModelNotFoundError, match="revision 'v9' of 'org/tiny' was not found"):
        resolve_model("org/tiny@v9", progress=False)


def test_unknown_repo(hub_env) -> None:
    with pytest.raises(ModelNotFoundError, match="'org/nope' was not found on the Hub.*check the id"):
        resolve_model("org/nope", progress=False)


def test_server_errors_and_the_cache_fallback(hub_env, tmp_path: Path) -> None:
    hub_env.add_repo("org/tiny", make_model_folder(tmp_path / "m"))
    hub_env.add_repo("org/other", make_model_folder(tmp_path / "o"))
    cached = resolve_model("org/tiny", progress=False)
    hub_env.fault = "error500"
    with pytest.raises(HubError, match="HTTP 500.*retry later.*no complete copy is in the local cache"):
        resolve_model("org/other", progress=False)
    assert resolve_model("org/tiny", progress=False) == cached  # the Hub is down: the cached copy serves


def test_timeout(hub_env, tmp_path: Path) -> None:
    hub_env.add_repo("org/tiny", make_model_folder(tmp_path / "m"))
    hub_env.fault, hub_env.delay_s = "delay", 10.0  # the client gives up after 1 s (hub_env)
    with pytest.raises(HubError, match="did not answer in time.*HF_HUB_ETAG_TIMEOUT"):
        resolve_model("org/tiny", progress=False)


def test_connection_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens there
    set_hub_env(monkeypatch, endpoint=f"http://127.0.0.1:{port}", home=tmp_path / "hf", offline=False, timeout_s=1)
    with pytest.raises(HubError, match="cannot connect.*HF_HUB_OFFLINE=1"):
        resolve_model("org/tiny", progress=False)


def test_a_download_that_breaks_mid_file_leaves_nothing_loadable(hub_env, tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "m")
    hub_env.add_repo("org/tiny", source)
    hub_env.fault = "truncate"
    with pytest.raises(HubError, match="broke off.*retry"):
        resolve_model("org/tiny", progress=False)
    cache = Path(os.environ["HF_HOME"]) / "hub" / "models--org--tiny"
    kept = [p for p in cache.rglob("*") if p.is_file() and ("snapshots" in p.parts or "blobs" in p.parts)]
    assert kept == []  # not one half file in the cache
    with pytest.raises(ModelNotFoundError):
        resolve_model("org/tiny", local_files_only=True, progress=False)
    hub_env.fault = None  # the next good attempt succeeds
    resolved = resolve_model("org/tiny", progress=False)
    assert read_folder(resolved.path) == read_folder(source)


def test_a_download_broken_once_is_resumed_intact(hub_env, tmp_path: Path) -> None:
    source = make_model_folder(tmp_path / "m")
    hub_env.add_repo("org/tiny", source)
    hub_env.fault = "truncate_once"
    resolved = resolve_model("org/tiny", progress=False)
    assert read_folder(resolved.path) == read_folder(source)
    resolve_paths = [p.split("/resolve/", 1)[1] for p in hub_env.paths_requested("GET") if "/resolve/" in p]
    gets = Counter(p.split("/", 1)[1] for p in resolve_paths)
    assert gets == {name: 2 for name in MODEL_FILES}  # each file broke once and was resumed once


def test_hub_repo_that_is_not_a_model(hub_env, tmp_path: Path) -> None:
    llm = {"README.md": b"# an LLM\n", "pytorch_model.bin": b"pickle", "config.json": b"{}"}
    hub_env.add_repo("org/llm", files=llm)
    with pytest.raises(ModelFormatError, match="not an mrtranslate model folder"):
        resolve_model("org/llm", progress=False)
    assert resolve_gets(hub_env) == {"README.md"}


def test_hub_model_with_a_corrupted_file(hub_env, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    weights = folder / "vqgan" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-9])
    hub_env.add_repo("org/broken", folder)
    with pytest.raises(ModelFormatError, match="org/broken.*vqgan/model.safetensors.*re-download"):
        resolve_model("org/broken", progress=False)


# -- push_to_hub and the CLI ---------------------------------------------------------------------------
def test_push_uploads_only_the_model_and_replaces_stale_components(hub_env, tmp_path: Path) -> None:
    full = make_model_folder(tmp_path / "full")
    (full / "vqgan" / "model.ckpt").write_bytes(b"pickle")
    (full / "notes.txt").write_text("private notes")
    commit = hub.push_to_hub(full, "me/model", token="hf_test")
    repo = hub_env.repos["me/model"]
    assert repo.branches["main"] == commit
    assert set(repo.commits[commit]) == set(MODEL_FILES) | {".gitattributes"}
    first_stage = make_model_folder(tmp_path / "fs", first_stage_only=True)
    commit2 = hub.push_to_hub(first_stage, "me/model", token="hf_test", commit_message="first stage only")
    first_stage_files = {"model_index.json", "README.md", "vqgan/config.json", "vqgan/model.safetensors"}
    assert set(repo.commits[commit2]) == first_stage_files | {".gitattributes"}
    resolved = resolve_model("me/model", progress=False)
    assert resolved.revision == commit2 and read_folder(resolved.path) == read_folder(first_stage)


def test_push_refuses_an_invalid_folder(hub_env, tmp_path: Path) -> None:
    folder = make_model_folder(tmp_path / "m")
    (folder / "vqgan" / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError):
        hub.push_to_hub(folder, "me/model", token="hf_test")
    with pytest.raises(UsageError, match="org/name"):
        hub.push_to_hub(make_model_folder(tmp_path / "ok"), "no-namespace", token="hf_test")
    assert hub_env.repos == {}
    hub_env.fault = "error500"
    with pytest.raises(HubError, match="HTTP 500.*retry later"):
        hub.push_to_hub(tmp_path / "ok", "me/model", token="hf_test")


def test_cli_download_push_and_errors(hub_env, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    folder = make_model_folder(tmp_path / "m")
    assert main(["push", str(folder), "me/cli-model", "-q"]) == 0
    assert main(["download", "me/cli-model", "--revision", "main", "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out).is_relative_to(tmp_path / "cache") and json.loads((Path(out) / "model_index.json").read_text())
    first_stage = make_model_folder(tmp_path / "fs", first_stage_only=True)
    assert main(["push", str(first_stage), "me/cli-model", "--revision", "dev"]) == 0
    assert "pushed" in capsys.readouterr().out
    assert not (resolve_model("me/cli-model@dev", progress=False).path / "unet").exists()
    assert (resolve_model("me/cli-model", progress=False).path / "unet").exists()
    assert main(["download", "me/missing"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model 'me/missing' was not found") and "\n" not in err
