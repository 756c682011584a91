"""The Typer app, and what every command shares: error handling, stdin paths, progress.

Each command module registers its commands with :func:`command`, which turns a
:class:`~attrcli.errors.UserError` into a one-line message on stderr and exit status 2, and a
:class:`~attrcli.errors.TaskError` or an ``OSError`` (disk full, permission denied) into a
one-line message and exit status 1. Click's own usage errors (an unknown option, a number that
is not one) are one line and exit status 2 as well (:class:`AttrcliGroup`). Warnings of
attrcli are printed one a line; other libraries' warnings are dropped when the command fails
and shown as one line each when it succeeds. ``attrcli --verbose CMD`` shows warnings as
Python does and the traceback of a failure. ``attrcli --help`` lists the commands in
pipeline order (:data:`ORDER`).
"""

from __future__ import annotations

import errno
import functools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from typer.core import TyperGroup

from attrcli import (
    progress as callbacks,  # the Progress alias (rich's Progress is the bar)
)
from attrcli.errors import AttrcliWarning, TaskError, UserError

#: The order of ``attrcli --help``: the pipeline, then models and the scale-out commands.
#: Commands not named here follow in the order they were registered.
ORDER = (
    "make-grids", "import-grids", "attribute", "score", "aggatt", "correlate", "compare", "sanity", "plot",
    "run", "export", "report", "models", "launch", "plan", "merge", "status",
)

err = Console(stderr=True)


def one_line(message: str, *, status: str = "error", style: str = "red") -> None:
    """Print ``status: message`` on stderr as exactly one line (no markup, no wrapping)."""
    text = " ".join(str(message).split())
    err.print(f"[{style}]{status}:[/{style}] {escape(text)}", highlight=False, soft_wrap=True)


class AttrcliGroup(TyperGroup):
    """The app's group: commands in :data:`ORDER`, and click's usage errors on one line."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(ORDER)), names.index(name)))

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        with _usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        with _usage_errors():
            return super().invoke(ctx)


def _click_errors(name: str) -> tuple[type[Exception], ...]:
    """Click's exception class ``name``, and Typer's copy of it (recent Typer vendors click)."""
    found = {getattr(click.exceptions, name)}
    vendored = getattr(getattr(typer, "_click", None), "exceptions", None)
    if vendored is not None and hasattr(vendored, name):
        found.add(getattr(vendored, name))
    return tuple(found)


_CLICK_ERROR = _click_errors("ClickException")
_NO_ARGS = _click_errors("NoArgsIsHelpError")


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A click usage error (bad option, bad value, unknown command), or a UserError of an option's
    callback, as one line and exit status 2."""
    try:
        yield
    except _NO_ARGS:
        raise  # click prints the help
    except UserError as exc:
        one_line(str(exc))
        raise typer.Exit(2) from None
    except _CLICK_ERROR as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        one_line(exc.format_message() + hint)
        raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="attrcli",
    cls=AttrcliGroup,
    help="Evaluate attribution methods on GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)


_state = {"verbose": False}


@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option(
        "--verbose", help="Show library warnings as they come and the traceback of a failure.")] = False,
) -> None:
    """Evaluate attribution methods on GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022)."""
    _state["verbose"] = verbose


def verbose() -> bool:
    """Whether this command line asked for ``attrcli --verbose``."""
    return _state["verbose"]


@contextmanager
def _warnings_in_one_line() -> Iterator[None]:
    """attrcli's warnings one a line as they come; other libraries' warnings held back, and
    printed one a line only if the command succeeds (a failure's own message says enough)."""
    held: list[str] = []

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = (str(message).strip().splitlines() or [category.__name__])[0]
        if issubclass(category, AttrcliWarning):
            one_line(text, status="warning", style="yellow")
        else:
            held.append(text)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield
    for text in dict.fromkeys(held):
        one_line(text, status="warning", style="yellow")


def command(name: str, *, on: typer.Typer | None = None, **kwargs) -> Callable:
    """Register a command on :data:`app` (or the sub-app ``on``) with attrcli's error handling."""

    def wrap(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(*args, **kw):
            loud = verbose()
            try:
                if loud:
                    return func(*args, **kw)
                with _warnings_in_one_line():
                    return func(*args, **kw)
            except UserError as exc:
                one_line(str(exc))
                raise typer.Exit(2) from None
            except TaskError as exc:
                one_line(str(exc))
                raise typer.Exit(1) from None
            except OSError as exc:  # the system refused: disk full, permissions, a vanished file
                if loud or exc.errno == errno.EPIPE:  # a closed pipe: click ends quietly
                    raise
                where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
                one_line(f"{exc.strerror or exc}{where} (rerun with attrcli --verbose for details)")
                raise typer.Exit(1) from None
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
def progress_bar(quiet: bool = False) -> Iterator[callbacks.Progress]:
    """A ``callback(description, done, total)`` that drives a rich progress bar on stderr."""
    if quiet:
        yield lambda description, done, total: None
        return
    bars: Progress | None = None  # started on the first update: a refused command prints no bar
    tasks: dict[str, int] = {}

    def update(description: str, done: int, total: int) -> None:
        nonlocal bars
        if bars is None:
            bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=False,
            )
            bars.start()
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=total)
        bars.update(tasks[description], completed=done, total=total)

    try:
        yield update
    finally:
        if bars is not None:
            bars.stop()
