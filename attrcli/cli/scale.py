"""``attrcli merge``, ``status``, ``plan`` and ``launch``: attribution at scale (SPEC §6)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from attrcli.cli.app import command, emit, err, paths_from_args, progress_bar, split_list
from attrcli.errors import UserError

_GRIDS = typer.Option(..., "--grids", help="Grid file written by make-grids.")
_SETTING = typer.Option("gridpg", "--setting", help="gridpg, difull or dipart (comma list allowed).")
_MODEL = typer.Option("digits-vgg11", "--model", help="Registered model or module:Name.")
_LAYER = typer.Option("input,middle,final", "--layer", help="Comma list of layers.")
_METHOD = typer.Option("grad", "--method", help="Comma list of method specs, or 'all'.")
_HEADS = typer.Option(None, "--heads", help="Cells to evaluate: default, all, or indices.")
_CACHE = typer.Option(Path("cache"), "--cache-dir", help="Root of the artifact cache.")


def launch_options(
    shards: int, partition: Optional[str], gpus_per_task: int, time: int, array_parallelism: int,
    no_wait: bool,
) -> dict:
    """The ``options`` of :func:`attrcli.engine.launch.launch_attribute` from CLI values."""
    return dict(
        shards=shards, partition=partition, gpus_per_task=gpus_per_task, time=time,
        array_parallelism=array_parallelism, no_wait=no_wait,
    )


def run_launch(
    *, launcher: str, options: dict, grids: Path, setting: str, model: str, layer: str, method: str,
    heads: Optional[str], device: str, batch_size: int, weights: Optional[str], cache_dir: Path,
    seed: int, force: bool, quiet: bool, as_json: bool,
) -> None:
    """Launch, print the status lines on stderr and the paths (or JSON) on stdout."""
    from attrcli.engine.launch import launch_attribute

    with progress_bar(quiet) as progress:
        results = launch_attribute(
            job=dict(grids=grids, setting=split_list(setting), model=model, layers=layer, methods=method),
            launcher=launcher, options=options,
            common=dict(device=device, batch_size=batch_size, force=force, cache_root=cache_dir,
                        weights=weights, progress=progress, heads=heads, seed=seed),
        )
    for result in results:
        err.print(f"{result.status:>10}  {result.key.label()}", highlight=False)
    if as_json:
        typer.echo(json.dumps([{"path": str(r.path), "key": r.key.label(), "status": r.status} for r in results], indent=2))
    else:
        emit(r.path for r in results)


@command("launch")
def launch_command(
    grids: Path = _GRIDS, setting: str = _SETTING, model: str = _MODEL, layer: str = _LAYER,
    method: str = _METHOD, heads: Optional[str] = _HEADS,
    launcher: str = typer.Option("local", "--launcher", help="local (submitit subprocesses) or slurm."),
    shards: int = typer.Option(1, "--shards", help="Split each setting's grid images into N shard jobs."),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition."),
    gpus_per_task: int = typer.Option(0, "--gpus-per-task", help="GPUs per SLURM task."),
    time: int = typer.Option(60, "--time", help="Time limit per task, minutes."),
    array_parallelism: int = typer.Option(32, "--array-parallelism", help="Tasks of the array running at once (SLURM)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Return after submitting; merge later with `attrcli merge --all`."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (in each task)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Grid images per forward pass."),
    weights: Optional[str] = typer.Option(None, "--weights", help="State-dict file (weights_only=True)."),
    cache_dir: Path = _CACHE,
    seed: int = typer.Option(0, "--seed", help="Seed for methods that sample."),
    force: bool = typer.Option(False, "--force", help="Recompute even if up to date."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of paths."),
) -> None:
    """Run `attribute` as a submitit job array of settings × shards, wait, and merge the shards."""
    run_launch(
        launcher=launcher, options=launch_options(shards, partition, gpus_per_task, time, array_parallelism, no_wait),
        grids=grids, setting=setting, model=model, layer=layer, method=method, heads=heads, device=device,
        batch_size=batch_size, weights=weights, cache_dir=cache_dir, seed=seed, force=force, quiet=quiet,
        as_json=as_json,
    )


@command("merge")
def merge_command(
    paths: Optional[list[str]] = typer.Argument(None, help="Artifact paths (unsharded, or any shard); '-' reads them from stdin."),
    all_keys: bool = typer.Option(False, "--all", help="Merge every key with shards under --cache-dir."),
    cache_dir: Path = _CACHE,
    keep: bool = typer.Option(False, "--keep", help="Keep the shard files after merging."),
    wait: bool = typer.Option(False, "--wait", help="Wait for a lock held by another process."),
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
    grids: Path = _GRIDS, setting: str = _SETTING, model: str = _MODEL, layer: str = _LAYER,
    method: str = _METHOD, heads: Optional[str] = _HEADS, cache_dir: Path = _CACHE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
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
    grids: Path = _GRIDS, setting: str = _SETTING, model: str = _MODEL, layer: str = _LAYER,
    method: str = _METHOD, heads: Optional[str] = _HEADS,
    shards: int = typer.Option(1, "--shards", help="Shards per setting."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(32, "--batch-size", help="Grid images per forward pass."),
    weights: Optional[str] = typer.Option(None, "--weights", help="State-dict file."),
    cache_dir: Path = _CACHE,
    seed: int = typer.Option(0, "--seed", help="Seed for methods that sample."),
    force: bool = typer.Option(False, "--force", help="Include keys that are done."),
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
