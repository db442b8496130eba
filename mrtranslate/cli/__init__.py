"""The `mrtranslate` command line: thin Typer commands over the Python API."""

from .app import app, main

__all__ = ["app", "main"]
