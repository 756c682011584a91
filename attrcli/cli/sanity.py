"""``attrcli sanity``: model-parameter randomisation checks (Adebayo et al., NeurIPS 2018)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attrcli.cli.analysis import Confidence, Resamples, fmt
from attrcli.cli.app import command, emit, err, progress_bar, split_list
from attrcli.cli.options import (
    AttributeLayers,
    AttributeMethods,
    AttributeModel,
    AttributeSetting,
    BatchSize,
    CacheRoot,
    Device,
    Force,
    GridFile,
    Heads,
    Json,
    Precision,
    Quiet,
    Wait,
    Weights,
    model_weights,
)
from attrcli.errors import UserError
from attrcli.names import FIGURE_FORMATS

MODES = ("cascading", "independent")
REGIONS = ("grid", "cell")
MEASURE_NAMES = ("spearman", "spearman_abs", "ssim", "score_change")

Mode = Annotated[
    str,
    typer.Option(
        "--mode",
        help="cascading: randomise the head, then each stage of 'all' top down, cumulatively; "
        "independent: one of them at a time.",
    ),
]
Region = Annotated[
    str,
    typer.Option(
        "--region",
        help="Pixels compared: grid (the whole map) or cell (each target's own cell, where the "
        "setting fixes the map's support, e.g. DiFull).",
    ),
]
Seed = Annotated[
    int,
    typer.Option("--seed", help="Seed of the re-initialisation, of sampling methods and of the bootstrap."),
]
Figure = Annotated[
    Path | None,
    typer.Option("--figure", help="Also draw similarity against randomisation depth to this file."),
]
Measure = Annotated[
    str,
    typer.Option("--measure", help=f"Measure the figure shows: {', '.join(MEASURE_NAMES)}."),
]


@command("sanity")
def sanity_command(
    grids: GridFile,
    setting: AttributeSetting = "gridpg",
    model: AttributeModel = "digits-vgg11",
    layer: AttributeLayers = "input,middle,final",
    method: AttributeMethods = "grad",
    heads: Heads = None,
    mode: Mode = "cascading",
    region: Region = "grid",
    device: Device = "auto",
    precision: Precision = "fp32",
    batch_size: BatchSize = 32,
    weights: Weights = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    figure: Figure = None,
    measure: Measure = "spearman",
    force: Force = False,
    wait: Wait = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Randomise the model step by step and compare each key's maps with the trained model's.

    Spearman rank correlation (signed and absolute), SSIM and the change of the localization
    score, per randomisation step, trained model first; a method whose maps stay similar fails
    the check. Prints the sanity artifacts' paths (or --json).
    """
    from attrcli.metrics.intervals import BootstrapConfig
    from attrcli.stages.attribute import AttributeRequest
    from attrcli.stages.sanity import run_sanity

    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}; valid: {', '.join(MODES)}")
    if region not in REGIONS:
        raise UserError(f"unknown --region {region!r}; valid: {', '.join(REGIONS)}")
    if measure not in MEASURE_NAMES:
        raise UserError(f"unknown --measure {measure!r}; valid: {', '.join(MEASURE_NAMES)}")
    if figure is not None and figure.suffix.lower().lstrip(".") not in FIGURE_FORMATS:
        raise UserError(f"--figure {figure}: use a file name ending in .{', .'.join(FIGURE_FORMATS)}")
    bootstrap = BootstrapConfig(confidence=confidence, resamples=resamples, seed=seed)
    request = AttributeRequest(
        grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
        heads=heads, device=device, batch_size=batch_size, force=force, wait=wait, cache_root=cache_dir,
        weights=model_weights(weights, model), seed=seed, precision=precision,
    )
    with progress_bar(quiet or as_json) as progress:
        results = run_sanity(request, mode=mode, region=region, bootstrap=bootstrap, progress=progress)
    if figure is not None:
        from attrcli.plots.sanity import plot_sanity

        plot_sanity(sanity_paths=[r.path for r in results], out=figure, measure=measure,
                    fmt=figure.suffix.lower().lstrip("."))
    if as_json:
        typer.echo(json.dumps({"mode": mode, "region": region, "seed": seed,
                               "keys": [r.to_dict() for r in results]}, indent=2))
        return
    if not quiet:
        for result in results:
            err.print(f"[dim]{result.status:>17}[/dim]  {result.key}", highlight=False)
            table = Table(title=f"{result.key}: {mode} randomisation ({region})")
            table.add_column("step")
            for name in MEASURE_NAMES:
                table.add_column(name, justify="right")
            for i, step in enumerate(result.steps):
                table.add_row(step, *(fmt(result.means[name][i]) for name in MEASURE_NAMES))
            err.print(table)
    emit(r.path for r in results)
