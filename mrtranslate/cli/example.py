"""`mrtranslate example [MODALITY]`: the path of the example scan shipped with the package."""

from __future__ import annotations

import typer

from .app import app


@app.command("example")
def example_command(
    modality: str = typer.Argument("t1", help="t1, t1ce, t2 or flair (or an alias)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    """Print the path of the example scan shipped with mrtranslate: one synthetic phantom subject (no patient
    data) at the default model's 2 mm grid, all four contrasts. Use it as an input:

        mrtranslate "$(mrtranslate example t1)" --to t2 flair --out-dir mrtranslate-example
    """
    from .. import examples

    typer.echo(str(examples.path(modality)))
