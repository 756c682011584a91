"""Entry point: imports every command module so its commands register on the app."""

from __future__ import annotations

from attrcli.cli import app as _app
from attrcli.cli import analysis, attribute, compare, grids, models, plot, scale, study  # noqa: F401
from attrcli.cli import export  # noqa: F401
from attrcli.cli import sanity  # noqa: F401

app = _app.app


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
