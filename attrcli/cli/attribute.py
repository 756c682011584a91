"""``attrcli attribute``: attribution maps for a grid file."""

from __future__ import annotations

from pathlib import Path

from attrcli.cli.app import command, progress_bar, split_list
from attrcli.cli.options import (
    ArrayParallelism,
    AttributeLayers,
    AttributeMethods,
    AttributeModel,
    AttributeSetting,
    BatchSize,
    CacheRoot,
    Device,
    Force,
    GpusPerTask,
    GridFile,
    Heads,
    Json,
    Launcher,
    NoWait,
    Partition,
    Precision,
    Quiet,
    Seed,
    Shard,
    Shards,
    TimeLimit,
    Wait,
    Weights,
    model_weights,
)
from attrcli.errors import UserError


@command("attribute")
def attribute_command(
    grids: GridFile,
    setting: AttributeSetting = "gridpg",
    model: AttributeModel = "digits-vgg11",
    layer: AttributeLayers = "input,middle,final",
    method: AttributeMethods = "grad",
    heads: Heads = None,
    device: Device = "auto",
    precision: Precision = "fp32",
    batch_size: BatchSize = 32,
    weights: Weights = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Force = False,
    wait: Wait = False,
    quiet: Quiet = False,
    as_json: Json = False,
    shard: Shard = None,
    launcher: Launcher = "inline",
    shards: Shards = 1,
    partition: Partition = None,
    gpus_per_task: GpusPerTask = 0,
    time: TimeLimit = 60,
    array_parallelism: ArrayParallelism = 32,
    no_wait: NoWait = False,
) -> None:
    """Compute attribution maps, one artifact per setting/model/layer/method.

    Prints the artifact paths on stdout (pipe them into `attrcli score -`).
    """
    from attrcli.cli.scale import (  # here: keeps `attribute` before them in --help
        launch_command,
        print_results,
    )
    from attrcli.engine.shards import parse_shard
    from attrcli.stages.attribute import AttributeRequest, run_attribute

    weights = model_weights(weights, model)
    if launcher != "inline":
        if shard:
            raise UserError("--shard is for one inline process; with --launcher use --shards N")
        return launch_command(
            grids=grids, setting=setting, model=model, layer=layer, method=method, heads=heads,
            launcher=launcher, shards=shards, partition=partition, gpus_per_task=gpus_per_task, time=time,
            array_parallelism=array_parallelism, no_wait=no_wait, device=device, batch_size=batch_size,
            weights=weights, cache_dir=cache_dir, seed=seed, force=force, quiet=quiet, as_json=as_json,
            precision=precision,
        )
    request = AttributeRequest(
        grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
        heads=heads, device=device, batch_size=batch_size, force=force, wait=wait,
        cache_root=cache_dir, weights=weights, seed=seed, shard=parse_shard(shard), precision=precision,
    )
    with progress_bar(quiet) as progress:
        results = run_attribute(request, progress=progress)
    print_results(results, as_json)
