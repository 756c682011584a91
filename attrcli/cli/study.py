"""``attrcli run``: the whole study end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.app import command, err, progress_bar
from attrcli.cli.options import (
    BATCH_HELP,
    CacheRoot,
    Device,
    Force,
    Launcher,
    Partition,
    Precision,
    Quiet,
    positive,
    study_weights,
    writable_folder,
)
from attrcli.names import FIGURE_FORMATS, listed


def _weights(items: list[str], preset: str) -> dict[str, str]:
    """``--weights`` as model -> file; a bare FILE only when the preset has one model."""
    from attrcli.stages.run import PRESETS

    return study_weights(items, PRESETS.get(preset).models) if items else {}


@command("run")
def run_command(
    preset: Annotated[str, typer.Option("--preset", help="Study preset: digits (embedded, offline) or paper-imagenet.")] = "digits",
    root: Annotated[Path | None, typer.Option("--root", help="Dataset root (paper-imagenet: the ImageNet validation folder).")] = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    weights: Annotated[list[str], typer.Option("--weights", help="MODEL=FILE state dict for a model of the study (repeatable; FILE alone for a one-model study).")] = [],  # noqa: B006 - typer's repeatable default
    count: Annotated[int | None, typer.Option("--count", callback=positive, help="Grids per variant (default: the preset's).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", callback=positive, help=f"{BATCH_HELP} Default: the preset's.")] = None,
    launcher: Launcher = "inline",
    partition: Partition = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where grid files go.", callback=writable_folder)] = Path("data/grids"),
    cache_dir: CacheRoot = Path("cache"),
    reports_dir: Annotated[Path, typer.Option("--reports-dir", help="Where the report folder goes.", callback=writable_folder)] = Path("reports"),
    fmt: Annotated[str, typer.Option("--format", help=f"Figure format: {listed(FIGURE_FORMATS)}.")] = "png",
    force: Force = False,
    quiet: Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary instead of the report.")] = False,
) -> None:
    """Run the whole study: grids, attributions, scores, AggAtt, correlations, figures, summary.

    With no option it runs the embedded digits study offline and prints the report folder.
    """
    from attrcli.cli.scale import task_failures
    from attrcli.stages.run import run_study

    started = time.perf_counter()
    with task_failures(), progress_bar(quiet) as progress:
        result = run_study(
            preset=preset, root=root, device=device, weights=_weights(weights, preset), count=count,
            batch_size=batch_size, data_dir=data_dir, cache_root=cache_dir, reports_dir=reports_dir,
            fmt=fmt, force=force, launcher=launcher, partition=partition, precision=precision,
            progress=progress, log=lambda message: err.print(f"[bold]{message}[/bold]"),
        )
    seconds = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({"report": str(result.report_dir), "summary": str(result.summary),
                               "figures": [str(f) for f in result.figures], "computed": result.computed,
                               "seconds": round(seconds, 1)}, indent=2))
        return
    err.print(f"{result.computed} artifacts computed, {len(result.figures)} figures, {seconds:.0f} s")
    err.print(result.summary.read_text(), highlight=False, markup=False)
    typer.echo(str(result.report_dir))


