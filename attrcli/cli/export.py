"""``attrcli export`` (tidy tables for pandas, R and papers) and ``attrcli report`` (the
self-contained HTML page of any selection).

Thin wrappers over :mod:`attrcli.stages.export`, :mod:`attrcli.stages.latex` and
:mod:`attrcli.stages.html`, imported when a command runs. Keys come from artifact paths (``-``
reads them from stdin) or from a selection (``--grids`` with ``--setting/--model/--layer/--method``),
as for ``attrcli score``; attributions without an up-to-date score are scored first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.analysis import CacheDir, run_stage, select
from attrcli.cli.app import command, err, paths_from_args
from attrcli.cli.options import Device, Grids, Layer, Method, Model, Paths, Quiet, Setting, Wait
from attrcli.errors import UserError

FORMATS = ("csv", "parquet", "jsonl", "latex")
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".tex": "latex"}

Format = Annotated[
    str | None,
    typer.Option("--format", help=f"{', '.join(FORMATS)} (default: --out's suffix, else csv)."),
]
ExportOut = Annotated[
    Path | None,
    typer.Option("--out", help="File to write (default: stdout; parquet needs a file)."),
]


def _format(fmt: str | None, out: Path | None) -> str:
    if fmt is None:
        return SUFFIXES.get(out.suffix.lower(), "csv") if out is not None else "csv"
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


def _scores(paths, grids, setting, model, layer, method, cache_dir, device, quiet, wait) -> list[Path]:
    from attrcli.stages.export import resolve_scores

    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions", "scores"))
    return run_stage(resolve_scores, device, quiet, paths=inputs, cache_root=root, wait=wait)


@command("export")
def export_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    cache_dir: CacheDir = None,
    fmt: Format = None,
    out: ExportOut = None,
    summary: Annotated[bool, typer.Option("--summary", help="One row per key (median, quartiles, mean, "
                                          "perfect share, intervals) instead of one per attribution.")] = False,
    correlations: Annotated[bool, typer.Option("--correlations", help="The given correlation artifacts "
                                               "as a long table (one row per coefficient).")] = False,
    comparisons: Annotated[bool, typer.Option("--comparisons", help="The given comparison artifacts as "
                                              "a long table (one row per pair).")] = False,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
) -> None:
    """Scores as a tidy table for pandas, R or a paper (CSV, Parquet, JSON lines, LaTeX).

    One row per attribution, or per key with --summary; --format latex is a booktabs table of
    the per-key medians with intervals. Column names and types: docs/artifacts.md.
    """
    from attrcli.stages import export as stage
    from attrcli.store.files import output_target, write_bytes

    fmt = _format(fmt, out)
    if correlations and comparisons:
        raise UserError("give --correlations or --comparisons, not both")
    if (correlations or comparisons) and (grids or any(v != "all" for v in (setting, model, layer, method))):
        raise UserError("--correlations and --comparisons read the artifact paths given, not --grids")
    if (correlations or comparisons) and (summary or fmt == "latex"):
        raise UserError("--format latex and --summary are for score tables, not with --correlations/--comparisons")
    if fmt == "parquet" and out is None:
        raise UserError("--format parquet writes a binary file: give --out FILE.parquet")
    if out is not None:
        output_target(out, what="--out")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(f"--format parquet needs pyarrow: {stage.EXTRA_HINT}") from None
    if correlations or comparisons:
        given = paths_from_args(paths)
        reader = stage.correlation_table if correlations else stage.comparison_table
        data = stage.render(reader(paths=given), fmt)
    else:
        scored = _scores(paths, grids, setting, model, layer, method, cache_dir, device, quiet, wait)
        if fmt == "latex":
            from attrcli.stages.latex import latex_for

            data = latex_for(scored).encode()
        else:
            table = (stage.summary_table if summary else stage.attribution_table)(score_paths=scored)
            data = stage.render(table, fmt)
    if out is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    write_bytes(out, data, what="--out")
    if not quiet:
        err.print(f"[dim]wrote[/dim] {out}", highlight=False)
    typer.echo(str(out))


@command("report")
def report_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    cache_dir: CacheDir = None,
    out: Annotated[Path | None, typer.Option("--out", help="Report folder (default: reports/<grids>, "
                                             "or reports/selection for paths).")] = None,
    title: Annotated[str | None, typer.Option("--title", help="The page's title.")] = None,
    correlation: Annotated[list[Path] | None, typer.Option("--correlation", help="Correlation artifact "
                                                           "to show as a heat map (repeatable).")] = None,
    comparison: Annotated[list[Path] | None, typer.Option("--comparison", help="Comparison artifact to "
                                                          "show (repeatable).")] = None,
    figure: Annotated[list[Path] | None, typer.Option("--figure", help="Figure file to embed (PNG, SVG; "
                                                      "PDF is linked) (repeatable).")] = None,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
) -> None:
    """A self-contained HTML page of the selection: <out>/index.html, viewable offline.

    Provenance, the summary table (sortable, with intervals), figures, correlations,
    comparisons, and per key its AggAtt row and median examples (from the AggAtt artifacts on
    disk: make them with attrcli aggatt).
    """
    from attrcli.store.files import check_folder, output_target

    for given, what in ((correlation, "--correlation"), (comparison, "--comparison"), (figure, "--figure")):
        for path in given or []:
            if not Path(path).is_file():
                raise UserError(f"{what} {path}: no such file")
    folder = out or Path("reports") / (Path(grids).stem if grids else "selection")
    check_folder(folder, what="--out")
    output_target(folder / "index.html", what="report")
    scored = _scores(paths, grids, setting, model, layer, method, cache_dir, device, quiet, wait)
    from attrcli.stages.html import selection_report

    page = selection_report(score_paths=scored, report_dir=folder, title=title or f"attrcli report: {folder.name}",
                            correlations=list(correlation or []), comparisons=list(comparison or []),
                            figures=list(figure or []), selection={"grids": grids, "setting": setting, "model": model,
                                                                    "layer": layer, "method": method})
    if not quiet:
        err.print(f"[dim]wrote[/dim] {page}", highlight=False)
    typer.echo(str(page))
