"""``attrcli merge``, ``status``, ``plan`` and ``launch``: attribution at scale (SPEC §6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from attrcli.cli.app import command, emit, err, paths_from_args, progress_bar, split_list
from attrcli.cli.options import CacheRoot, Device, Force, GridFile, Json, Quiet
from attrcli.errors import UserError

if TYPE_CHECKING:
    from attrcli.engine.jobs import AttributeResult

Setting = Annotated[str, typer.Option("--setting", help="gridpg, difull or dipart (comma list allowed).")]
Model = Annotated[str, typer.Option("--model", help="Registered model or module:Name.")]
Layer = Annotated[str, typer.Option("--layer", help="Comma list of layers.")]
Method = Annotated[str, typer.Option("--method", help="Comma list of method specs, or 'all'.")]
Heads = Annotated[Optional[str], typer.Option("--heads", help="Cells to evaluate: default, all, or indices.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Grid images per forward pass.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed for methods that sample.")]


def print_results(results: list[AttributeResult], as_json: bool) -> None:
    """A status line per key on stderr; the artifact paths (or a JSON summary) on stdout."""
    for result in results:
        err.print(f"{result.status:>10}  {result.key.label()}", highlight=False)
    if as_json:
        typer.echo(json.dumps([{"path": str(r.path), "key": r.key.label(), "status": r.status} for r in results], indent=2))
    else:
        emit(r.path for r in results)


@command("launch")
def launch_command(
    grids: GridFile, setting: Setting = "gridpg", model: Model = "digits-vgg11",
    layer: Layer = "input,middle,final", method: Method = "grad", heads: Heads = None,
    launcher: Annotated[str, typer.Option("--launcher", help="local (submitit subprocesses) or slurm.")] = "local",
    shards: Annotated[int, typer.Option("--shards", help="Split each setting's grid images into N shard jobs.")] = 1,
    partition: Annotated[Optional[str], typer.Option("--partition", help="SLURM partition.")] = None,
    gpus_per_task: Annotated[int, typer.Option("--gpus-per-task", help="GPUs per SLURM task.")] = 0,
    time: Annotated[int, typer.Option("--time", help="Time limit per task, minutes.")] = 60,
    array_parallelism: Annotated[int, typer.Option("--array-parallelism", help="Tasks of the array running at once (SLURM).")] = 32,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return after submitting; merge later with `attrcli merge --all`.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (in each task).")] = "auto",
    batch_size: BatchSize = 32,
    weights: Annotated[Optional[str], typer.Option("--weights", help="State-dict file (weights_only=True).")] = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Force = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Run `attribute` as a submitit job array of settings × shards, wait, and merge the shards."""
    from attrcli.engine.launch import launch_attribute

    with progress_bar(quiet) as progress:
        results = launch_attribute(
            job=dict(grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method),
            launcher=launcher,
            options=dict(shards=shards, partition=partition, gpus_per_task=gpus_per_task, time=time,
                         array_parallelism=array_parallelism, no_wait=no_wait),
            common=dict(device=device, batch_size=batch_size, force=force, cache_root=cache_dir,
                        weights=weights, progress=progress, heads=heads, seed=seed),
        )
    print_results(results, as_json)


@command("merge")
def merge_command(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Artifact paths (unsharded, or any shard); '-' reads them from stdin.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Merge every key with shards under --cache-dir.")] = False,
    cache_dir: CacheRoot = Path("cache"),
    keep: Annotated[bool, typer.Option("--keep", help="Keep the shard files after merging.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for a lock held by another process.")] = False,
) -> None:
    """Join the shards of attribution keys after checking coverage and provenance.

    Prints the merged artifact paths. Shards are removed after a successful merge unless --keep.
    """
    from attrcli.engine.shards import merge, merge_all

    targets = paths_from_args(paths)
    if not targets and not all_keys:
        raise UserError("give artifact paths to merge (or '-' for stdin), or --all")
    merged = [merge(t, keep=keep, wait=wait) for t in dict.fromkeys(targets)]
    if all_keys:
        merged += merge_all(cache_dir, keep=keep, wait=wait)
    emit(merged)


@command("status")
def status_command(
    grids: GridFile, setting: Setting = "gridpg", model: Model = "digits-vgg11",
    layer: Layer = "input,middle,final", method: Method = "grad", heads: Heads = None,
    cache_dir: CacheRoot = Path("cache"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Which attribution keys are done, partial (shards or checkpoints), stale, corrupt or missing.

    Weights are not loaded, so a key made with other weights shows as done.
    """
    from attrcli.engine.launch import status

    rows = status(grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
                  heads=heads, cache_root=cache_dir)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key", "state", "detail", "path")
    colours = {"done": "green", "partial": "yellow", "stale": "magenta", "corrupt": "red", "missing": "red"}
    for row in rows:
        table.add_row(row.label, f"[{colours[row.state]}]{row.state}[/]", row.detail, str(row.path))
    Console().print(table)


@command("plan")
def plan_command(
    grids: GridFile, setting: Setting = "gridpg", model: Model = "digits-vgg11",
    layer: Layer = "input,middle,final", method: Method = "grad", heads: Heads = None,
    shards: Annotated[int, typer.Option("--shards", help="Shards per setting.")] = 1,
    device: Device = "auto",
    batch_size: BatchSize = 32,
    weights: Annotated[Optional[str], typer.Option("--weights", help="State-dict file.")] = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Include keys that are done.")] = False,
) -> None:
    """Print one `attrcli attribute` command per setting and shard, then one `attrcli merge` per key.

    Run the attribute lines in parallel (`xargs -P 8 -I{} sh -c {}`, or one per sbatch array
    task), then the merge lines. Keys that are done are left out.
    """
    from attrcli.engine.launch import plan_commands

    for line in plan_commands(
        grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
        shards=shards, heads=heads, cache_root=cache_dir, batch_size=batch_size, device=device,
        weights=weights, seed=seed, force=force,
    ):
        typer.echo(line)
