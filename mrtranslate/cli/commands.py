"""Imports every command module so that each registers itself on the Typer app."""

# Each module below defines functions decorated with ``@app.command``.
from . import convert  # noqa: F401
from . import translate  # noqa: F401
from . import compare  # noqa: F401
from . import download  # noqa: F401
from . import phantom  # noqa: F401
from . import train  # noqa: F401
from . import export  # noqa: F401
from . import evaluate  # noqa: F401
from . import complete  # noqa: F401
from . import example  # noqa: F401
