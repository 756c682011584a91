"""``attrcli merge``, ``status``, ``plan`` and ``launch``: attribution at scale (SPEC §6)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attrcli.cli.app import (
    command,
    emit,
    err,
    paths_from_args,
    progress_bar,
    split_list,
)
from attrcli.cli.options import (
    MODEL_HELP,
    SETTING_HELP,
    ArrayParallelism,
    AttributeLayers,
    AttributeMethods,
    AttributeModel,
    AttributeSetting,
    BatchSize,
    CacheRead,
    CacheRoot,
    Device,
    Force,
    GpusPerTask,
    GridFile,
    Heads,
    Json,
    NoWait,
    Partition,
    Precision,
    Quiet,
    Seed,
    Shards,
    TimeLimit,
    Wait,
    Weights,
    model_weights,
)
from attrcli.errors import TaskError, UserError

if TYPE_CHECKING:
    from attrcli.stages.plan import AttributeResult

ArrayLauncher = Annotated[str, typer.Option("--launcher", help="local (submitit subprocesses) or slurm.")]


@contextmanager
def task_failures() -> Iterator[None]:
    """A task that failed while running: its one-line error on stderr and exit status 1."""
    try:
        yield
    except TaskError as exc:
        message = str(exc).replace("\n", " ")
        err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


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
    grids: GridFile, setting: AttributeSetting = "gridpg", model: AttributeModel = "digits-vgg11",
    layer: AttributeLayers = "input,middle,final", method: AttributeMethods = "grad", heads: Heads = None,
    launcher: ArrayLauncher = "local",
    shards: Shards = 1,
    partition: Partition = None,
    gpus_per_task: GpusPerTask = 0,
    time: TimeLimit = 60,
    array_parallelism: ArrayParallelism = 32,
    no_wait: NoWait = False,
    device: Device = "auto",
    precision: Precision = "fp32",
    batch_size: BatchSize = 32,
    weights: Weights = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Force = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Run `attribute` as a submitit job array of settings × shards, wait, and merge the shards."""
    from attrcli.stages.launch import LaunchOptions, launch_attribute
    from attrcli.stages.plan import AttributeRequest

    weights = model_weights(weights, model)
    options = LaunchOptions(launcher=launcher, partition=partition, gpus_per_task=gpus_per_task, time=time,
                            array_parallelism=array_parallelism, no_wait=no_wait)
    request = AttributeRequest(
        grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method, heads=heads,
        device=device, batch_size=batch_size, force=force, cache_root=cache_dir, weights=weights, seed=seed,
        shards=shards, precision=precision,
    )
    with task_failures(), progress_bar(quiet) as progress:
        results = launch_attribute(request, options, progress=progress)
    print_results(results, as_json)


@command("merge")
def merge_command(
    paths: Annotated[list[str] | None, typer.Argument(help="Artifact paths (unsharded, or any shard); '-' reads them from stdin.")] = None,
    all_keys: Annotated[bool, typer.Option("--all", help="Merge every key with shards under --cache-dir.")] = False,
    cache_dir: CacheRoot = Path("cache"),
    keep: Annotated[bool, typer.Option("--keep", help="Keep the shard files after merging.")] = False,
    wait: Wait = False,
) -> None:
    """Join the shards of attribution keys after checking coverage and provenance.

    Prints the merged artifact paths. Shards are removed after a successful merge unless --keep.
    """
    from attrcli.stages.merge import merge, merge_all

    targets = paths_from_args(paths)
    if not targets and not all_keys:
        raise UserError("give artifact paths to merge (or '-' for stdin), or --all")
    merged = [merge(t, keep=keep, wait=wait) for t in dict.fromkeys(targets)]
    if all_keys:
        merged += merge_all(cache_dir, keep=keep, wait=wait)
    emit(merged)


@command("status")
def status_command(
    grids: Annotated[Path | None, typer.Option("--grids", help="Grid file written by make-grids; without it, a summary of every key under --cache-dir.")] = None,
    setting: Annotated[str | None, typer.Option("--setting", help=f"{SETTING_HELP} [with --grids, default: gridpg]")] = None,
    model: Annotated[str | None, typer.Option("--model", help=f"{MODEL_HELP} [with --grids, default: digits-vgg11]")] = None,
    layer: AttributeLayers = "input,middle,final", method: AttributeMethods = "grad", heads: Heads = None,
    batch_size: BatchSize = 32,
    seed: Seed = 0,
    shards: Shards = 1,
    precision: Precision = "fp32",
    cache_dir: CacheRead = Path("cache"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Which attribution keys are done, partial (shards or checkpoints), stale, corrupt or missing.

    Weights are not loaded, so a key made with other weights shows as done. RISE and SmoothGrad
    keys depend on --seed, --batch-size (and --shards): give those the run used, and its
    --precision (bf16 keys are apart from fp32's). Without --grids,
    one row per grid file, setting and model under --cache-dir, counting what each stage holds.
    """
    if grids is None:
        return _cache_summary(cache_dir, split_list(setting), split_list(model), as_json)
    from attrcli.stages.launch import status
    from attrcli.stages.plan import AttributeRequest

    rows = status(AttributeRequest(
        grids=grids, setting=split_list(setting or "gridpg"), model=model or "digits-vgg11", layers=layer,
        methods=method, heads=heads, cache_root=cache_dir, seed=seed, batch_size=batch_size, shards=shards,
        precision=precision, device="auto",  # the keys of a precision; status computes nothing anywhere
    ))
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


def _cache_summary(cache_dir: Path, settings: list[str], models: list[str], as_json: bool) -> None:
    """``status`` without ``--grids``: what the cache holds per grid file, setting and model."""
    from attrcli.store.inventory import summarize_cache

    groups = [g for g in summarize_cache(cache_dir)
              if (not settings or g.setting in settings) and (not models or g.model in models)]
    if as_json:
        typer.echo(json.dumps([g.as_dict() for g in groups], indent=2))
        return
    if not groups:
        err.print(f"no artifacts under {cache_dir}", highlight=False)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"attrcli cache {escape(str(cache_dir))}")
    for column in ("grids", "setting", "model"):
        table.add_column(column, no_wrap=True)
    for column in ("attributions", "partial", "stale", "corrupt", "scores", "aggatt"):
        table.add_column(column, justify="right")
    for g in groups:
        table.add_row(escape(g.grids), g.setting, escape(g.model), str(g.done["attributions"]), str(g.partial),
                      f"[magenta]{g.stale}[/]" if g.stale else "0", f"[red]{g.corrupt}[/]" if g.corrupt else "0",
                      str(g.done["scores"]), str(g.done["aggatt"]))
    Console().print(table)


@command("plan")
def plan_command(
    grids: GridFile, setting: AttributeSetting = "gridpg", model: AttributeModel = "digits-vgg11",
    layer: AttributeLayers = "input,middle,final", method: AttributeMethods = "grad", heads: Heads = None,
    shards: Shards = 1,
    device: Device = "auto",
    precision: Precision = "fp32",
    batch_size: BatchSize = 32,
    weights: Weights = None,
    cache_dir: CacheRoot = Path("cache"),
    seed: Seed = 0,
    force: Annotated[bool, typer.Option("--force", help="Include keys that are done.")] = False,
) -> None:
    """Print one `attrcli attribute` command per setting and shard, then one `attrcli merge` per key.

    Run the attribute lines in parallel (`xargs -P 8 -I{} sh -c {}`, or one per sbatch array
    task), then the merge lines. Keys that are done are left out.
    """
    from attrcli.stages.launch import plan_commands
    from attrcli.stages.plan import AttributeRequest

    weights = model_weights(weights, model)
    for line in plan_commands(AttributeRequest(
        grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method,
        shards=shards, heads=heads, cache_root=cache_dir, batch_size=batch_size, device=device,
        weights=weights, seed=seed, force=force, precision=precision,
    )):
        typer.echo(line)
