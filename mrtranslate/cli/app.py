"""Typer application, argument normalisation and the one place where errors become exit codes.

Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted (Ctrl-C / SIGINT).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import typer

from .. import __version__
from ..errors import MRTranslateError, command_line_words

# Recent typer runs on its own copy of click (typer._click) and no longer installs the click package; older
# typer runs on click. Take click's exception classes from typer's public BadParameter so that both work.
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
ClickUsageError: type[Exception] = _CLICK["UsageError"]
ClickException: type[Exception] = _CLICK["ClickException"]

app = typer.Typer(
    name="mrtranslate",
    help=(
        "Translate 3D brain MRI between contrasts (T1, T1ce, T2, FLAIR) with ALDM.\n\n"
        "Main use: mrtranslate INPUT [INPUT ...] --to t2 flair  (the 'translate' command is the default)."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mrtranslate {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Translate 3D brain MRI between contrasts (T1, T1ce, T2, FLAIR) with ALDM."""


def _subcommand_names() -> set[str]:
    group = typer.main.get_command(app)
    return set(getattr(group, "commands", {}))


def _looks_like_modality(token: str) -> bool:
    from ..modalities import canonical

    try:
        canonical(token)
    except MRTranslateError:
        return False
    return True


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Make the CLI accept ``mrtranslate IN --to t2 flair``.

    * ``translate`` is the default command: inserted when the first word is not a subcommand.
    * ``--to t2 flair`` (several values after one flag, as users type it) becomes
      ``--to t2 --to flair``; words after ``--to`` count as targets while they are modality names.
    """
    args = list(argv)
    if not args:
        return args
    first = args[0]
    if first not in _subcommand_names() and first not in ("-h", "--help", "--version"):
        args.insert(0, "translate")
    out: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--to" or tok.startswith("--to="):
            values = [tok.split("=", 1)[1]] if "=" in tok else []
            i += 1
            if not values and i < len(args):
                values.append(args[i])
                i += 1
            while i < len(args) and not args[i].startswith("-") and _looks_like_modality(args[i]):
                values.append(args[i])
                i += 1
            for v in values:
                out += ["--to", v]
            continue
        out.append(tok)
        i += 1
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mrtranslate`` script. Returns (and exits with) the exit code."""
    from . import commands  # noqa: F401  (registers the subcommands)

    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if "--verbose" in raw and not debug:
        logging.getLogger("mrtranslate").setLevel(logging.INFO)
    command = typer.main.get_command(app)
    code = EXIT_OK
    try:
        with command_line_words():  # error messages name settings as options (--out-dir), not keywords
            result = command.main(args=normalise_argv(raw), prog_name="mrtranslate", standalone_mode=False)
        code = result if isinstance(result, int) else EXIT_OK
    except typer.Exit as exc:
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):  # recent typer turns Ctrl-C into Exit(130) itself
        code = EXIT_INTERRUPTED
    except ClickUsageError as exc:  # one line, as every error: what is wrong, and where the options are
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "mrtranslate"
        message = _one_line(exc.format_message()).rstrip(".")
        typer.echo(f"error: {message[:1].lower()}{message[1:]}; see {where} --help", err=True)
        code = EXIT_USAGE
    except ClickException as exc:
        if debug:
            raise
        typer.echo(f"error: {_one_line(exc.format_message())}", err=True)
        code = exc.exit_code
    except MRTranslateError as exc:
        if debug:
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        code = exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the last guard: no traceback without --debug
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)", err=True)
        code = EXIT_ERROR
    if code == EXIT_INTERRUPTED:
        typer.echo("interrupted", err=True)
    if argv is None:
        sys.exit(code)
    return code
