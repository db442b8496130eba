"""`mrtranslate download` and `mrtranslate push`: sharing model folders through the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("download")
def download_command(
    model: str = typer.Argument(
        ..., help="Hub repo id (org/name or org/name@revision), a bundled model's name, or a model folder."
    ),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch, tag or commit of a Hub model."),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="Hub cache folder (default: $HF_HUB_CACHE, i.e. $HF_HOME/hub)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; print only the folder."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Download a model (only its safetensors and JSON files), check it, and print its local folder.

    With HF_HUB_OFFLINE=1 nothing is downloaded: the model must be in the cache already.
    """
    from ..hub import resolve_model

    resolved = resolve_model(model, revision=revision, cache_dir=cache_dir, progress=not quiet)
    typer.echo(str(resolved.path))


@app.command("push")
def push_command(
    folder: Path = typer.Argument(..., help="Model folder to upload (as written by save_pretrained or convert)."),
    repo_id: str = typer.Argument(..., help="Hub repository, org/name (created if it does not exist)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created if needed)."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    message: str = typer.Option("Upload mrtranslate model", "--message", "-m", help="Commit message."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing on success."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Upload a model folder to the Hub (log in first: `hf auth login`, or set HF_TOKEN)."""
    from ..hub import push_to_hub

    commit = push_to_hub(folder, repo_id, revision=revision, private=private or None, commit_message=message)
    if not quiet:
        typer.echo(f"pushed {folder} to {repo_id} (commit {commit})")
