"""Entry point: imports every command module so its commands register on the app."""

from __future__ import annotations

import functools

from attrcli.cli import app as _app
from attrcli.cli import analysis, attribute, compare, grids, models, plot, scale, study  # noqa: F401
from attrcli.cli import export  # noqa: F401
from attrcli.cli import sanity  # noqa: F401

app = _app.app


@functools.cache
def _command():
    """The app's click command, built once a process (Typer builds it anew on every ``app()``)."""
    import typer.main

    return typer.main.get_command(app)


def main() -> None:
    """``attrcli``; a script that calls it again and again pays for the command tree once."""
    _command()()


if __name__ == "__main__":  # pragma: no cover
    main()
