"""The Typer app, and what every command shares: error handling, stdin paths, progress.

Each command module registers its commands with :func:`command`, which turns a
:class:`~attrcli.errors.UserError` into a one-line message on stderr and exit status 2, and any
other exception into exit status 1.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attrcli.errors import UserError

app = typer.Typer(
    name="attrcli",
    help="Evaluate attribution methods on GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)

err = Console(stderr=True)


def command(name: str, *, on: typer.Typer | None = None, **kwargs) -> Callable:
    """Register a command on :data:`app` (or the sub-app ``on``) with attrcli's error handling."""

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(*args, **kw):
            try:
                return func(*args, **kw)
            except UserError as exc:
                message = str(exc).replace("\n", " ")
                err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err.print("[red]interrupted[/red]")
                raise typer.Exit(130) from None

        return (on or app).command(name, **kwargs)(run)

    return wrap


def split_list(value: str | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def paths_from_args(args: list[str] | None) -> list[Path]:
    """Artifact paths from arguments; ``-`` reads paths from stdin, one a line."""
    out: list[Path] = []
    for arg in args or []:
        if arg == "-":
            out.extend(Path(line.strip()) for line in sys.stdin if line.strip())
        else:
            out.append(Path(arg))
    return out


def emit(paths) -> None:
    """Print artifact paths on stdout, one a line (what the next stage reads with ``-``)."""
    for path in paths:
        typer.echo(str(path))


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A ``callback(description, done, total)`` that drives a rich progress bar on stderr."""
    if quiet:
        yield lambda description, done, total: None
        return
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )
    tasks: dict[str, int] = {}

    def update(description: str, done: int, total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total)
        bars.update(tasks[description], completed=done, total=total)

    with bars:
        yield update
