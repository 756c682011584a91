"""``attrcli attribute``: attribution maps for a grid file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from attrcli.cli.app import command, emit, err, progress_bar, split_list
from attrcli.errors import UserError


@command("attribute")
def attribute_command(
    grids: Path = typer.Option(..., "--grids", help="Grid file written by make-grids."),
    setting: str = typer.Option("gridpg", "--setting", help="gridpg, difull or dipart (comma list allowed; all need the same grid variant)."),
    model: str = typer.Option("digits-vgg11", "--model", help="Registered model (see `attrcli models`) or module:Name."),
    layer: str = typer.Option("input,middle,final", "--layer", help="Comma list of input, middle, final, all, or module paths."),
    method: str = typer.Option("grad", "--method", help="Comma list of methods, each optionally with parameters: occlusion:k=16,s=8. 'all' for every method."),
    heads: Optional[str] = typer.Option(None, "--heads", help="Cells to evaluate: 'default' (all for gridpg, the two corners otherwise), 'all', or indices like 0,3."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, "--batch-size", help="Grid images per forward pass (intgrad: grid images x steps; perturbation methods: perturbed copies); bounds memory."),
    weights: Optional[str] = typer.Option(None, "--weights", help="State-dict file for the model (loaded with weights_only=True)."),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Root of the artifact cache."),
    seed: int = typer.Option(0, "--seed", help="Seed for methods that sample (RISE, SmoothGrad)."),
    force: bool = typer.Option(False, "--force", help="Recompute even if up to date."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another process that holds an artifact's lock instead of exiting."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of paths."),
    shard: Optional[str] = typer.Option(None, "--shard", help="Compute only shard i/N of the grid images (0-based); join with `attrcli merge`."),
    launcher: str = typer.Option("inline", "--launcher", help="inline (this process), local or slurm (submitit job array of settings x shards, then merge)."),
    shards: int = typer.Option(1, "--shards", help="With --launcher: shards per setting."),
    partition: Optional[str] = typer.Option(None, "--partition", help="With --launcher slurm: partition."),
    gpus_per_task: int = typer.Option(0, "--gpus-per-task", help="With --launcher slurm: GPUs per task."),
    time: int = typer.Option(60, "--time", help="With --launcher: time limit per task, minutes."),
    array_parallelism: int = typer.Option(32, "--array-parallelism", help="With --launcher slurm: tasks running at once."),
    no_wait: bool = typer.Option(False, "--no-wait", help="With --launcher: return after submitting."),
) -> None:
    """Compute attribution maps, one artifact per setting/model/layer/method.

    Prints the artifact paths on stdout (pipe them into `attrcli score -`).
    """
    from attrcli.engine.attribute import attribute
    from attrcli.engine.shards import parse_shard

    if launcher != "inline":
        from attrcli.cli.scale import launch_options, run_launch

        if shard:
            raise UserError("--shard is for one inline process; with --launcher use --shards N")
        return run_launch(
            launcher=launcher, options=launch_options(shards, partition, gpus_per_task, time, array_parallelism, no_wait),
            grids=grids, setting=setting, model=model, layer=layer, method=method, heads=heads, device=device,
            batch_size=batch_size, weights=weights, cache_dir=cache_dir, seed=seed, force=force, quiet=quiet, as_json=as_json,
        )
    with progress_bar(quiet) as progress:
        results = attribute(
            grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
            heads=heads, device=device, batch_size=batch_size, force=force, wait=wait,
            cache_root=cache_dir, weights=weights, seed=seed, progress=progress, shard=parse_shard(shard),
        )
    for result in results:
        err.print(f"{result.status:>10}  {result.key.label()}", highlight=False)
    if as_json:
        typer.echo(json.dumps([{"path": str(r.path), "key": r.key.label(), "status": r.status} for r in results], indent=2))
    else:
        emit(r.path for r in results)
