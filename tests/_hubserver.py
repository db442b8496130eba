"""A local HTTP server on 127.0.0.1 that answers huggingface_hub the way the Hugging Face Hub does.

It serves model repositories from in-memory snapshots of local folders, logs every request it
receives (``server.requests``), and can be switched into fault modes:

* ``"error500"``  every request is answered with HTTP 500;
* ``"delay"``     every request waits ``delay_s`` seconds before being answered (longer than the
  client's timeout, so the client gives up first);
* ``"truncate"``  every file download sends the first half of the file and closes the connection;
  a resumed request (``Range``) starting at or past that point gets nothing before the close, so the
  download can never finish;
* ``"truncate_once"`` the first download of each file breaks off at half; later requests (the
  client's resume with ``Range``) are answered correctly.

Protocol (see ../shared/reference/HUB_PROTOCOL.md, checked against huggingface_hub 2.4):
``GET /api/models/{repo}[/revision/{rev}]``, ``GET /api/models/{repo}/tree/{rev}``,
``HEAD|GET /{repo}/resolve/{rev}/{path}``; errors carry ``X-Error-Code``. For uploads the server also
answers ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular",
so no LFS) and ``POST /api/models/{repo}/commit/{rev}`` (NDJSON with base64 file contents).

Also here: ``make_model_folder`` (a syntactically valid tiny model folder) and the pytest fixtures
``hub_server`` and ``hub_env`` (HF_ENDPOINT, HF_HOME, timeouts and offline mode for one test).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from safetensors.numpy import save_file

#: How long a delayed or hanging answer waits at most; the fixture's teardown releases it at once.
MAX_DELAY_S = 30.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit_of(files: dict[str, bytes]) -> str:
    """A deterministic 40-hex commit id for a set of files (what a git commit id looks like)."""
    h = hashlib.sha1()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + sha256_hex(files[name]).encode() + b"\0")
    return h.hexdigest()


@dataclass
class Repo:
    """One repository: its branches and the files of every commit."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its POSIX path relative to ``folder``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubServer:
    """A threaded Hub look-alike on 127.0.0.1 with a random free port."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.fault: str | None = None
        self.delay_s: float = 3.0
        self._broken_once: set[str] = set()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- content ---------------------------------------------------------------------------------
    def add_repo(
        self, repo_id: str, folder: Path | None = None, *, files: dict[str, bytes] | None = None, branch: str = "main"
    ) -> str:
        """Publish ``folder`` (and/or ``files``) as a new commit on ``branch``; returns the commit id."""
        content = read_folder(folder) if folder is not None else {}
        content.update(files or {})
        commit = commit_of(content)
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo())
            repo.commits[commit] = content
            repo.branches[branch] = commit
        return commit

    def paths_requested(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [p for m, p in self.requests if method is None or m == method]

    # -- request handling (called from the handler threads) -----------------------------------------
    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def wait_delay(self) -> None:
        self._release.wait(min(self.delay_s, MAX_DELAY_S))

    def break_this_download(self, key: str) -> bool:
        if self.fault == "truncate":
            return True
        if self.fault == "truncate_once":
            with self._lock:
                if key not in self._broken_once:
                    self._broken_once.add(key)
                    return True
        return False


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # huggingface_hub opens up to 8 connections at once; a short backlog drops some


def _split_repo(parts: list[str]) -> tuple[str, list[str]] | None:
    if len(parts) < 2:
        return None
    return f"{parts[0]}/{parts[1]}", parts[2:]


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr logging
            return

        # -- small helpers ----------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.close_connection = True

        def _json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
            extra = dict(headers or {})
            if code is not None:
                extra["X-Error-Code"] = code
            extra["X-Error-Message"] = message
            self._json(status, {"error": message}, extra)

        # -- dispatch --------------------------------------------------------------------------
        def do_HEAD(self) -> None:  # noqa: N802 - http.server naming
            self._dispatch()

        def do_GET(self) -> None:  # noqa: N802
            self._dispatch()

        def do_POST(self) -> None:  # noqa: N802
            self._dispatch()

        def _dispatch(self) -> None:
            server.log(self.command, self.path)
            try:
                if server.fault == "delay":
                    server.wait_delay()
                if server.fault == "error500":
                    self._error(500, None, "Internal Error - We're working hard to fix this as soon as possible!")
                    return
                self._route()
            except (BrokenPipeError, ConnectionResetError, socket.timeout):
                self.close_connection = True

        def _route(self) -> None:
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/") if p]
            if parts[:2] == ["api", "models"] and self.command == "GET":
                split = _split_repo(parts[2:])
                if split is not None and not split[1]:  # model_info without a revision: the default branch
                    return self._api_revision(split[0], "main")
                if split is not None and len(split[1]) >= 2 and split[1][0] in ("revision", "tree"):
                    repo_id, rest = split
                    kind, rev = rest[0], rest[1]
                    return self._api_revision(repo_id, rev) if kind == "revision" else self._api_tree(repo_id, rev)
            if parts[:3] == ["api", "repos", "create"] and self.command == "POST":
                return self._create_repo()
            if parts[:2] == ["api", "validate-yaml"] and self.command == "POST":
                self._body()
                return self._json(200, {"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and self.command == "POST":
                split = _split_repo(parts[2:])
                if split is not None and len(split[1]) >= 2 and split[1][0] in ("preupload", "commit", "branch"):
                    repo_id, rest = split
                    rev = "/".join(rest[1:])
                    if rest[0] == "branch":
                        return self._create_branch(repo_id, rev)
                    return self._preupload(repo_id) if rest[0] == "preupload" else self._commit(repo_id, rev)
            split = _split_repo(parts)
            if split is not None and len(split[1]) >= 3 and split[1][0] == "resolve":
                repo_id, rest = split
                return self._resolve(repo_id, rest[1], "/".join(rest[2:]))
            self._error(404, None, "Not Found")

        # -- Hub API ---------------------------------------------------------------------------
        def _repo_and_commit(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
            repo = server.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            commit = repo.resolve(rev)
            if commit is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, commit

        def _api_revision(self, repo_id: str, rev: str) -> None:
            found = self._repo_and_commit(repo_id, rev)
            if found is not None:
                repo, commit = found
                siblings = [{"rfilename": name} for name in sorted(repo.commits[commit])]
                info = {"id": repo_id, "modelId": repo_id, "sha": commit, "private": False, "siblings": siblings}
                self._json(200, info)

        def _api_tree(self, repo_id: str, rev: str) -> None:
            found = self._repo_and_commit(repo_id, rev)
            if found is not None:
                repo, commit = found
                entries = [
                    {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for name, data in sorted(repo.commits[commit].items())
                ]
                self._json(200, entries)

        def _resolve(self, repo_id: str, rev: str, path: str) -> None:
            found = self._repo_and_commit(repo_id, rev)
            if found is None:
                return
            repo, commit = found
            data = repo.commits[commit].get(path)
            if data is None:
                self._error(404, "EntryNotFound", f"Entry not found: {path}", {"X-Repo-Commit": commit})
                return
            headers = {"ETag": f'"{sha256_hex(data)}"', "X-Repo-Commit": commit, "Accept-Ranges": "bytes"}
            start = 0
            range_header = self.headers.get("Range", "")
            if range_header.startswith("bytes=") and range_header[6:].split("-")[0].isdigit():
                start = min(int(range_header[6:].split("-")[0]), len(data))
            if self.command == "HEAD":
                self._send(200, data, headers)
                return
            status = 206 if start else 200
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            if not server.break_this_download(f"{repo_id}@{commit}/{path}"):
                self._send(status, body, headers)
                return
            # Promise the whole body, send the part before the breaking point, close the connection.
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(data[start : max(start, len(data) // 2)])
            self.wfile.flush()
            self.close_connection = True

        # -- uploads ---------------------------------------------------------------------------
        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length", "0"))
            return self.rfile.read(n) if n > 0 else b""

        def _create_repo(self) -> None:
            payload = json.loads(self._body() or b"{}")
            name, org = payload.get("name", ""), payload.get("organization")
            repo_id = f"{org}/{name}" if org else name
            if repo_id in server.repos:
                # As the Hub does: the conflict's body still carries the repo's url.
                body = {"error": "You already created this model repo", "url": f"{server.url}/{repo_id}"}
                self._json(409, body, {"X-Error-Message": body["error"]})
                return
            server.add_repo(repo_id, files={".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
            self._json(200, {"url": f"{server.url}/{repo_id}", "name": repo_id, "id": repo_id})

        def _create_branch(self, repo_id: str, branch: str) -> None:
            self._body()
            repo = server.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
            elif branch in repo.branches:
                self._error(409, None, "Reference already exists")
            else:
                with server._lock:
                    repo.branches[branch] = repo.branches["main"]
                self._json(200, {})

        def _preupload(self, repo_id: str) -> None:
            payload = json.loads(self._body() or b"{}")
            files = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in payload.get("files", [])
            ]
            self._json(200, {"files": files, "commitOid": server.repos.get(repo_id, Repo()).branches.get("main")})

        def _commit(self, repo_id: str, rev: str) -> None:
            repo = server.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return
            branch = rev or "main"
            parent = repo.branches.get(branch)
            content = dict(repo.commits.get(parent, {})) if parent else {}
            for line in self._body().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item.get("value", {})
                if item.get("key") == "file":
                    content[value["path"]] = base64.b64decode(value["content"])
                elif item.get("key") == "deletedFile":
                    content.pop(value["path"], None)
            commit = commit_of(content)
            with server._lock:
                repo.commits[commit] = content
                repo.branches[branch] = commit
            url = f"{server.url}/{repo_id}/commit/{commit}"
            self._json(200, {"commitUrl": url, "commitOid": commit, "success": True})

    return Handler


# -- test model folders ----------------------------------------------------------------------------
def make_model_folder(path: Path, *, first_stage_only: bool = False, name: str = "hub-test") -> Path:
    """Write a syntactically valid tiny model folder: JSON configs and small safetensors files.

    ``model_index.json`` is a real ``PipelineConfig``; the component configs and the random tensors only
    have to be well-formed (hub checks files, the pipeline checks networks).
    """
    from mrtranslate.pipeline.config import PipelineConfig

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    # a full folder holds every component, the optional refiner included
    components = ("vqgan",) if first_stage_only else ("vqgan", "unet", "scheduler", "refiner")
    index = PipelineConfig(
        components=components,
        default_steps=3,
        name=name,
        preprocessing={
            "spacing_mm": [2.0, 2.0, 2.0], "grid": [16, 16, 16], "lower_percentile": 0.5, "upper_percentile": 99.5
        },
    ).to_dict()
    write_json(path / "model_index.json", index)
    (path / "README.md").write_text(f"# {name}\n\nRandom weights for tests.\n")
    for component in components:
        (path / component).mkdir(exist_ok=True)
        config = {"_class_name": f"{component}-config", "_format_version": 1, "ch": 4}
        write_json(path / component / "config.json", config)
        if component != "scheduler":
            tensors = {
                f"{component}.conv.weight": rng.standard_normal((4, 1, 3, 3, 3), dtype=np.float32),
                f"{component}.conv.bias": np.zeros(4, dtype=np.float32),
            }
            save_file(tensors, str(path / component / "model.safetensors"))
    if not first_stage_only:  # the optional error model too, so that a full folder holds every model file
        from mrtranslate.pipeline.error_model import ErrorModel, PairTable

        ErrorModel({"t1->t2": PairTable(np.linspace(0.1, 0.2, 16), [], [])}).save(path)
    return path


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def edit_index(folder: Path, **changes: object) -> None:
    """Change keys of ``folder/model_index.json`` (as a hand-edited or hostile file would)."""
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    write_json(folder / "model_index.json", index)


# -- pytest fixtures -------------------------------------------------------------------------------
def set_hub_env(
    monkeypatch: pytest.MonkeyPatch,
    *,
    endpoint: str | None = None,
    home: Path | None = None,
    offline: bool | None = None,
    timeout_s: int | None = None,
) -> None:
    """Point huggingface_hub at ``endpoint`` / ``home`` / offline mode inside this test process.

    huggingface_hub reads its environment once, at import (``huggingface_hub.constants``), so setting
    the variables is not enough in a process that has imported it already: the derived constants are
    patched too. Subprocesses started by the test see the environment variables.
    """
    from huggingface_hub import constants

    if endpoint is not None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    if home is not None:
        monkeypatch.setenv("HF_HOME", str(home))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        for name, value in {
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
            "HF_ASSETS_CACHE": str(home / "assets"),
            "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        }.items():
            if hasattr(constants, name):
                monkeypatch.setattr(constants, name, value)
    if offline is not None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if timeout_s is not None:
        for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
            monkeypatch.setenv(name, str(timeout_s))
            monkeypatch.setattr(constants, name, timeout_s)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A running HubServer; stopped (and any delayed answer released) at teardown."""
    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_env(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """``hub_server`` with HF_ENDPOINT pointing at it, HF_HOME in a temporary folder, online, 1 s timeouts."""
    set_hub_env(monkeypatch, endpoint=hub_server.url, home=tmp_path / "hf-home", offline=False, timeout_s=1)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return hub_server
