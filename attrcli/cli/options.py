"""Option types that several command modules share, and the check of the artifact selection.

Each is an ``Annotated`` type spelled once; a command names it with its own default.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.app import paths_from_args, split_list
from attrcli.errors import UserError
from attrcli.metrics.selection import ALL, split_methods

# What score, aggatt, correlate and the plot figures read: paths, or keys on disk for --grids.
Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Artifact paths; '-' reads paths from stdin, one a line.", show_default=False
    ),
]
Grids = Annotated[
    str | None,
    typer.Option("--grids", help="Grid file (or its name): select keys on disk instead of paths."),
]
Setting = Annotated[str, typer.Option("--setting", help="Settings, comma-separated, or 'all'.")]
Model = Annotated[str, typer.Option("--model", help="Models, comma-separated, or 'all'.")]
Layer = Annotated[
    str, typer.Option("--layer", help="Layers as in the paths (input,middle,final), or 'all'.")
]
Method = Annotated[
    str,
    typer.Option(
        "--method", help="Method specs, or bare names (which include their variants), or 'all'."
    ),
]

# Attribution jobs: attribute, launch, status, plan, merge (and Force for the analysis commands).
GridFile = Annotated[Path, typer.Option("--grids", help="Grid file written by make-grids.")]
CacheRoot = Annotated[Path, typer.Option("--cache-dir", help="Root of the artifact cache.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even if up to date.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of paths.")]


def selected(
    paths: list[str] | None,
    grids: str | None,
    selection: tuple[str, str, str, str],
    *,
    find: Callable[..., list[Path]],
    nothing: str,
) -> list[Path]:
    """The artifact paths given (``-`` reads them from stdin), or those ``find`` selects on disk.

    ``selection`` is ``(setting, model, layer, method)`` as typed; ``find`` gets ``grids`` and
    them parsed as ``settings``, ``models``, ``layers`` and ``methods``. ``nothing`` is what the
    command does, for the error when neither paths nor --grids are given.
    """
    if paths and grids:
        raise UserError("give artifact paths or --grids with a selection, not both")
    if paths:
        if any(value != ALL for value in selection):
            raise UserError(
                "--setting/--model/--layer/--method select keys with --grids, not paths"
            )
        return paths_from_args(paths)
    if not grids:
        raise UserError(
            f"nothing to {nothing}: give artifact paths, '-' for stdin, or --grids FILE"
        )
    setting, model, layer, method = selection
    return find(
        grids=grids,
        settings=split_list(setting),
        models=split_list(model),
        layers=split_list(layer),
        methods=split_methods(method),
    )
