"""``attrcli run``: the whole study end to end."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from attrcli.cli.app import command, err, progress_bar
from attrcli.cli.options import positive, study_weights, writable_folder


def _weights(items: list[str], preset: str) -> dict[str, str]:
    """``--weights`` as model -> file; a bare FILE only when the preset has one model."""
    from attrcli.study import PRESETS

    return study_weights(items, PRESETS.get(preset).models) if items else {}


@command("run")
def run_command(
    preset: str = typer.Option("digits", "--preset", help="Study preset: digits (embedded, offline) or paper-imagenet."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root (paper-imagenet: the ImageNet validation folder)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    weights: list[str] = typer.Option([], "--weights", help="MODEL=FILE state dict for a model of the study (repeatable; FILE alone for a one-model study)."),
    count: Optional[int] = typer.Option(None, "--count", callback=positive, help="Grids per variant (default: the preset's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", callback=positive, help="Grid images or perturbations per forward pass."),
    launcher: str = typer.Option("inline", "--launcher", help="inline (this process), local or slurm (submitit)."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition (with --launcher slurm)."),
    data_dir: Path = typer.Option(Path("data/grids"), "--data-dir", help="Where grid files go.", callback=writable_folder),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Root of the artifact cache.", callback=writable_folder),
    reports_dir: Path = typer.Option(Path("reports"), "--reports-dir", help="Where the report folder goes.", callback=writable_folder),
    fmt: str = typer.Option("png", "--format", help="Figure format: png, pdf or svg."),
    force: bool = typer.Option(False, "--force", help="Recompute every stage."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Run the whole study: grids, attributions, scores, AggAtt, correlations, figures, summary.

    With no option it runs the embedded digits study offline and prints the report folder.
    """
    from attrcli.cli.scale import task_failures
    from attrcli.study import run_study

    started = time.perf_counter()
    with task_failures(), progress_bar(quiet) as progress:
        result = run_study(
            preset=preset, root=root, device=device, weights=_weights(weights, preset), count=count,
            batch_size=batch_size, data_dir=data_dir, cache_root=cache_dir, reports_dir=reports_dir,
            fmt=fmt, force=force, launcher=launcher,
            launcher_options={"partition": partition} if partition else None,
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


