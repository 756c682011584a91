"""``attrcli plot <figure>``: the figures of SPEC §4, drawn from artifacts alone (no model).

Inputs are artifact paths (``-`` reads them from stdin, so ``attrcli score ... | attrcli plot
boxes -`` works) or a selection on disk: ``--grids`` with ``--setting/--model/--layer/--method``
under ``--cache-dir``. Each command writes one figure (``reports/figures/<name>.<format>`` unless
``--out``) and prints its path on stdout.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.app import app, command
from attrcli.cli.options import Grids, Layer, Method, Model, Paths, Setting, readable_folder, selected
from attrcli.errors import UserError
from attrcli.names import ALL
from attrcli.names import FIGURE_FORMATS as FORMATS

def _plots():
    """The figure library, imported when a figure is drawn (matplotlib is slow to import)."""
    import attrcli.plots

    return attrcli.plots


plot_app = typer.Typer(
    name="plot",
    help="Figures from artifacts (supplement Figs. 9, 10, 12, 19, 26); no model needed.",
    no_args_is_help=True,
)
app.add_typer(plot_app, name="plot")

CacheDir = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Cache folder read with --grids (default: cache).", callback=readable_folder),
]
Format = Annotated[
    str | None,
    typer.Option("--format", help=f"{', '.join(FORMATS)} (default: --out's suffix, else png)."),
]
Out = Annotated[
    Path | None,
    typer.Option("--out", help="Figure file (default: reports/figures/<figure>.<format>)."),
]


def figure_output(name: str, out: Path | None, fmt: str | None) -> tuple[Path, str]:
    """The figure's path and format (:func:`attrcli.plots.output_path`), checked before any work:
    ``--out`` must end in a figure format (or have no suffix) and must not be a folder or a
    device (a symbolic link is written through)."""
    from attrcli.store.files import output_target

    if out is not None and out.suffix and out.suffix.lower().lstrip(".") not in FORMATS:
        raise UserError(
            f"--out {out}: {out.suffix} is not a figure format; use one of "
            f"{', '.join('.' + f for f in FORMATS)}"
        )
    path, fmt = _plots().output_path(name, out, fmt)
    if out is not None and out.suffix and out.suffix.lower() != f".{fmt}":
        raise UserError(f"--out {out} does not match --format {fmt}; use a .{fmt} file name")
    output_target(path, what="--out")
    return path, fmt


def figure(name: str) -> Callable:
    """Register a ``plot`` sub-command with the error handling of :func:`attrcli.cli.app.command`."""
    return command(name, on=plot_app)


def inputs(
    paths: list[str] | None,
    grids: str | None,
    cache_dir: Path | None,
    stage: str,
    *,
    setting: str = ALL,
    model: str = ALL,
    layer: str = ALL,
    method: str = ALL,
) -> list[Path]:
    """Artifact paths from arguments or stdin, or the ``stage`` artifacts a selection names."""
    on_disk = partial(_plots().find_artifacts, cache_root=cache_dir or Path("cache"), stage=stage)
    return selected(paths, grids, (setting, model, layer, method), find=on_disk, nothing="plot")


@figure("boxes")
def boxes_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = ALL,
    model: Model = ALL,
    layer: Layer = ALL,
    method: Method = ALL,
    cache_dir: CacheDir = None,
    fmt: Format = None,
    out: Out = None,
    pointing: Annotated[bool, typer.Option("--pointing", help="Mark each key's pointing-game hit rate (with its interval) beside its box.")] = False,
) -> None:
    """Box plots of localization scores per method and layer, a panel per setting and model (Fig. 9)."""
    out_path, fmt = figure_output("boxes", out, fmt)
    found = inputs(paths, grids, cache_dir, "scores", setting=setting, model=model,
                   layer=layer, method=method)
    typer.echo(str(_plots().plot_boxes(score_paths=found, out=out_path, fmt=fmt, pointing=pointing)))


@figure("aggatt")
def aggatt_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = ALL,
    model: Model = ALL,
    layer: Layer = ALL,
    method: Method = ALL,
    cache_dir: CacheDir = None,
    fmt: Format = None,
    out: Out = None,
) -> None:
    """AggAtt bin maps: a row per method and layer, a column per percentile bin (Fig. 12)."""
    out_path, fmt = figure_output("aggatt", out, fmt)
    found = inputs(paths, grids, cache_dir, "aggatt", setting=setting, model=model,
                   layer=layer, method=method)
    typer.echo(str(_plots().plot_aggatt(aggatt_paths=found, out=out_path, fmt=fmt)))


@figure("examples")
def examples_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = ALL,
    model: Model = ALL,
    layer: Layer = ALL,
    method: Method = ALL,
    cache_dir: CacheDir = None,
    grid_file: Annotated[
        Path | None,
        typer.Option("--grid-file", help="Grid file (default: the one the attribution records)."),
    ] = None,
    fmt: Format = None,
    out: Out = None,
) -> None:
    """The median example of each AggAtt bin: grid image and attribution map (Fig. 10)."""
    out_path, fmt = figure_output("examples", out, fmt)
    found = inputs(paths, grids, cache_dir, "aggatt", setting=setting, model=model,
                   layer=layer, method=method)
    path = _plots().plot_examples(aggatt_paths=found, grid_file=grid_file, out=out_path, fmt=fmt)
    typer.echo(str(path))


@figure("correlation")
def correlation_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="Correlation artifacts (from attrcli correlate) or score artifacts; "
            "'-' reads paths from stdin.",
            show_default=False,
        ),
    ] = None,
    grids: Grids = None,
    setting: Setting = ALL,
    model: Model = ALL,
    layer: Layer = ALL,
    method: Method = ALL,
    cache_dir: CacheDir = None,
    fmt: Format = None,
    out: Out = None,
) -> None:
    """Heat map of Spearman correlations between methods and layers (Fig. 19)."""
    out_path, fmt = figure_output("correlation", out, fmt)
    found = inputs(paths, grids, cache_dir, "scores", setting=setting, model=model,
                   layer=layer, method=method)
    typer.echo(str(_plots().plot_correlation(paths=found, out=out_path, fmt=fmt)))


@figure("smoothing")
def smoothing_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = ALL,
    model: Model = ALL,
    cache_dir: CacheDir = None,
    layer: Annotated[
        str, typer.Option("--layer", help="Layer of the smoothed maps (the paper: input).")
    ] = "input",
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="Key to correlate with: layer/method or setting/model/layer/method.",
        ),
    ] = "final/gradcam",
    fmt: Format = None,
    out: Out = None,
) -> None:
    """S-IntGrad / S-IxG localization and correlation with Grad-CAM against K (Tabs. 1-2, Fig. 26)."""
    out_path, fmt = figure_output("smoothing", out, fmt)
    found = inputs(paths, grids, cache_dir, "scores", setting=setting, model=model)
    path = _plots().plot_smoothing(score_paths=found, reference=reference, layer=layer, out=out_path,
                          fmt=fmt)
    typer.echo(str(path))
