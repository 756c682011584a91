"""``attrcli run``: a whole study end to end, from a study file or a shipped preset."""

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
    Force,
    Partition,
    Quiet,
    positive,
    study_weights,
    writable_folder,
)
from attrcli.errors import UserError
from attrcli.names import FIGURE_FORMATS, listed


def _precision(value: str | None) -> str | None:
    from attrcli.engine.precision import validate_precision

    return None if value is None else validate_precision(value)


@command("run")
def run_command(
    study_file: Annotated[Path | None, typer.Argument(metavar="[STUDY.toml]", help="A study file (attrcli run --show-preset digits > mystudy.toml to start one). Default: the digits preset.", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="A shipped study instead of a file: digits (embedded, offline) or paper-imagenet.")] = None,
    show_preset: Annotated[str | None, typer.Option("--show-preset", help="Print a shipped study as a commented study file and exit.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what the run would compute (keys, cost, jobs) and exit; nothing is computed or written.")] = False,
    root: Annotated[Path | None, typer.Option("--root", help="Dataset root (paper-imagenet: the ImageNet validation folder); overrides grids.root.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N; overrides compute.device.")] = None,
    precision: Annotated[str | None, typer.Option("--precision", help="fp32, tf32 (CUDA) or bf16; overrides compute.precision.")] = None,
    weights: Annotated[list[str], typer.Option("--weights", help="MODEL=FILE state dict for a model of the study (repeatable; FILE alone for a one-model study).")] = [],  # noqa: B006 - typer's repeatable default
    count: Annotated[int | None, typer.Option("--count", callback=positive, help="Grids per variant (overrides grids.count_*).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", callback=positive, help=f"{BATCH_HELP} Overrides compute.batch_size.")] = None,
    launcher: Annotated[str | None, typer.Option("--launcher", help="inline (this process), local or slurm (submitit job arrays); overrides [launcher] kind.")] = None,
    partition: Partition = None,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where grid files go.", callback=writable_folder)] = Path("data/grids"),
    cache_dir: CacheRoot = Path("cache"),
    reports_dir: Annotated[Path, typer.Option("--reports-dir", help="Where the report folder goes.", callback=writable_folder)] = Path("reports"),
    fmt: Annotated[str | None, typer.Option("--format", help=f"Figure format: {listed(FIGURE_FORMATS)}; overrides analysis.format.")] = None,
    force: Force = False,
    quiet: Quiet = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary (with --dry-run: the plan) instead of the report.")] = False,
) -> None:
    """Run a whole study: grids, attributions, scores, AggAtt, correlations, comparisons, figures, summary.

    With no argument it runs the embedded digits study offline and prints the report folder. A
    study file is checked completely before anything is written; the CLI's options override
    the file where they overlap, and the report records the file and the overrides.
    """
    from attrcli.stages.studyfile import preset_text

    if show_preset is not None:
        typer.echo(_show(preset_text(show_preset)), nl=False)
        return
    if study_file is not None and preset is not None:
        raise UserError("give a study file or --preset, not both")
    study = str(study_file) if study_file is not None else (preset or "digits")
    overrides = {"root": root, "device": device, "precision": _precision(precision), "count": count,
                 "batch_size": batch_size, "launcher": launcher, "partition": partition, "format": fmt}
    if weights:
        from attrcli.stages.run import open_study

        overrides["weights"] = study_weights(weights, open_study(study).model_names)
    if dry_run:
        from attrcli.stages.run import dry_run as plan_run
        from attrcli.stages.run import dry_run_json, dry_run_text

        plan = plan_run(study=study, data_dir=data_dir, cache_root=cache_dir, force=force, **overrides)
        if as_json:
            typer.echo(dry_run_json(plan))
        else:
            err.print(dry_run_text(plan), highlight=False, markup=False)
        return

    from attrcli.cli.scale import task_failures
    from attrcli.stages.run import run_study

    started = time.perf_counter()
    with task_failures(), progress_bar(quiet) as progress:
        result = run_study(
            study=study, data_dir=data_dir, cache_root=cache_dir, reports_dir=reports_dir, force=force,
            progress=progress, log=lambda message: err.print(f"[bold]{message}[/bold]"), **overrides,
        )
    seconds = time.perf_counter() - started
    if as_json:
        typer.echo(json.dumps({"report": str(result.report_dir), "summary": str(result.summary), "html": str(result.html),
                               "figures": [str(f) for f in result.figures], "computed": result.computed,
                               "computed_keys": result.computed_keys,
                               "figures_redrawn": [str(f) for f in getattr(result.figures, "redrawn", ())],
                               "figures_reused": [str(f) for f in getattr(result.figures, "reused", ())],
                               "seconds": round(seconds, 1)}, indent=2))
        return
    redrawn = len(getattr(result.figures, "redrawn", result.figures))
    err.print(f"{result.computed} artifacts computed, {len(result.figures)} figures ({redrawn} redrawn, "
              f"{len(result.figures) - redrawn} reused), {seconds:.0f} s")
    err.print(result.summary.read_text(), highlight=False, markup=False)
    typer.echo(str(result.report_dir))


def _show(text: str) -> str:
    """A preset as a commented study file (every field with its comment)."""
    from attrcli.stages.studyfile import read_study, render

    return render(read_study(text, source="preset.toml"))
