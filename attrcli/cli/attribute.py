"""``attrcli attribute``: attribution maps for a grid file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from attrcli.cli.app import command, progress_bar, split_list
from attrcli.cli.options import (
    BatchSize,
    CacheRoot,
    Device,
    Force,
    GridFile,
    Json,
    Quiet,
    Seed,
    Weights,
    at_least,
    model_weights,
    positive,
)
from attrcli.errors import UserError


@command("attribute")
def attribute_command(
    grids: GridFile,
    setting: Annotated[str, typer.Option("--setting", help="gridpg, difull or dipart (comma list allowed; all need the same grid variant).")] = "gridpg",
    model: Annotated[str, typer.Option("--model", help="Registered model (see `attrcli models`) or module:Name.")] = "digits-vgg11",
    layer: Annotated[str, typer.Option("--layer", help="Comma list of input, middle, final, all, or module paths.")] = "input,middle,final",
    method: Annotated[str, typer.Option("--method", help="Comma list of methods, each optionally with parameters: occlusion:k=16,s=8. 'all' for every method.")] = "grad",
    heads: Annotated[Optional[str], typer.Option("--heads", help="Cells to evaluate: 'default' (all for gridpg, the two corners otherwise), 'all', or indices like 0,3.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = 32,
    weights: Weights = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Force = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for another process that holds an artifact's lock instead of exiting.")] = False,
    quiet: Quiet = False,
    as_json: Json = False,
    shard: Annotated[Optional[str], typer.Option("--shard", help="Compute only shard i/N of the grid images (0-based); join with `attrcli merge`.")] = None,
    launcher: Annotated[str, typer.Option("--launcher", help="inline (this process), local or slurm (submitit job array of settings x shards, then merge).")] = "inline",
    shards: Annotated[int, typer.Option("--shards", callback=positive, help="With --launcher: shards per setting.")] = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", help="With --launcher slurm: partition.")] = None,
    gpus_per_task: Annotated[int, typer.Option("--gpus-per-task", callback=at_least(0), help="With --launcher slurm: GPUs per task.")] = 0,
    time: Annotated[int, typer.Option("--time", callback=positive, help="With --launcher: time limit per task, minutes.")] = 60,
    array_parallelism: Annotated[int, typer.Option("--array-parallelism", callback=positive, help="With --launcher slurm: tasks running at once.")] = 32,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="With --launcher: return after submitting.")] = False,
) -> None:
    """Compute attribution maps, one artifact per setting/model/layer/method.

    Prints the artifact paths on stdout (pipe them into `attrcli score -`).
    """
    from attrcli.cli.scale import launch_command, print_results  # here: keeps `attribute` before them in --help
    from attrcli.engine.attribute import attribute
    from attrcli.engine.shards import parse_shard

    weights = model_weights(weights, model)
    if launcher != "inline":
        if shard:
            raise UserError("--shard is for one inline process; with --launcher use --shards N")
        return launch_command(
            grids=grids, setting=setting, model=model, layer=layer, method=method, heads=heads,
            launcher=launcher, shards=shards, partition=partition, gpus_per_task=gpus_per_task, time=time,
            array_parallelism=array_parallelism, no_wait=no_wait, device=device, batch_size=batch_size,
            weights=weights, cache_dir=cache_dir, seed=seed, force=force, quiet=quiet, as_json=as_json,
        )
    with progress_bar(quiet) as progress:
        results = attribute(
            grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
            heads=heads, device=device, batch_size=batch_size, force=force, wait=wait,
            cache_root=cache_dir, weights=weights, seed=seed, progress=progress, shard=parse_shard(shard),
        )
    print_results(results, as_json)
