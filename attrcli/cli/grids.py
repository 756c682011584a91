"""``attrcli make-grids``: build grid files from a dataset's confidently classified images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.app import command, emit, err, progress_bar, split_list
from attrcli.cli.options import study_weights, writable_folder
from attrcli.names import DATASETS
from attrcli.names import GRID_VARIANTS as VARIANTS


def _summary(path: Path, status: str) -> dict:
    from attrcli.store import read_artifact

    attrs = read_artifact(path, names=[]).attrs
    keys = ("dataset", "variant", "n", "cell_size", "count", "reused", "confident", "pool_size",
            "models", "min_conf", "seed")
    return {"path": str(path), "status": status, **{k: attrs.get(k) for k in keys}}


def _default_models(dataset: str) -> list[str]:
    from attrcli.data.datasets import DATASETS

    return list(DATASETS.get(dataset).models)


@command("make-grids")
def make_grids_command(
    dataset: Annotated[str, typer.Option(
        help=f"Dataset whose held-out images fill the cells: {', '.join(DATASETS)}, "
        "or module:Name for your own DatasetSpec.")] = "digits",
    root: Annotated[Path | None, typer.Option(
        help="Where the dataset lives (cifar10: the folder holding cifar-10-batches-py; imagenet: "
        "the validation folder as <wnid>/*.JPEG; folder: one sub-folder per class). Not for digits.")] = None,
    variant: Annotated[str, typer.Option(
        help="Which grids: distinct (n² distinct classes, for GridPG), corners (two images of one "
        f"class at top-left and bottom-right, for DiFull/DiPart), or both. Valid: {', '.join(VARIANTS)}, "
        "both.")] = "both",
    n: Annotated[int, typer.Option("--n", help="Grid size: n×n cells.")] = 2,
    count: Annotated[int | None, typer.Option(
        help="Grids per file (default: the dataset's, 100 per variant for digits; otherwise as many "
        "as the confident images fill without reusing one).")] = None,
    cell_size: Annotated[int | None, typer.Option(
        help="Pixels per cell; must match the models' input size (default: the models' size).")] = None,
    min_conf: Annotated[float, typer.Option(
        help="Keep only images every model classifies correctly with at least this softmax "
        "confidence.")] = 0.99,
    models: Annotated[str | None, typer.Option(
        help="Comma-separated model names whose confidence filters the images (default: the "
        "dataset's; digits-vgg11,digits-resnet18 for digits).")] = None,
    per_model: Annotated[bool, typer.Option(
        "--per-model", help="Filter for each model separately and write one file per model "
        "(default: one joint filter, so all models see the same grids).")] = False,
    weights: Annotated[list[str], typer.Option(
        "--weights", help="MODEL=FILE weights (.pth or .safetensors) of a filtering model instead of "
        "its default ones (repeatable; FILE alone with one model).")] = [],  # noqa: B006 - typer's repeatable default
    seed: Annotated[int, typer.Option(help="Random seed: the same arguments give the same file.")] = 0,
    out_dir: Annotated[Path, typer.Option(help="Folder for the grid files.", callback=writable_folder)] = Path("data/grids"),
    cache_dir: Annotated[Path, typer.Option(
        help="Cache folder (trained digits models live in <cache-dir>/models).", callback=writable_folder)] = Path("cache"),
    device: Annotated[str, typer.Option(help="Where models run: auto, cpu, cuda or cuda:N.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per model pass.")] = 256,
    download: Annotated[bool, typer.Option(
        "--download", help="Fetch the dataset into --root first (cifar10 only).")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Rewrite files even when their config and inputs are unchanged.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for another process writing the same file instead of failing.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print a JSON summary of each file instead of the paths.")] = False,
) -> None:
    """Build grid images from held-out images the models classify confidently.

    One file per variant (and per model with --per-model): <out-dir>/<name>.h5, paths on stdout.

    Files whose config and inputs are unchanged are kept (--force rewrites them).
    """
    from attrcli.devices import resolve_device
    from attrcli.stages.make_grids import make_grids

    statuses: dict[Path, str] = {}

    def report(path: Path, status: str) -> None:
        statuses[path] = status
        err.print(f"{status}: {path}", highlight=False)

    with progress_bar() as progress:
        paths = make_grids(
            dataset=dataset, root=root, variant=variant, n=n, count=count, cell_size=cell_size,
            min_conf=min_conf, models=split_list(models) if models is not None else None,
            per_model=per_model, seed=seed, out_dir=out_dir, cache_dir=cache_dir,
            device=resolve_device(device), download=download, force=force, wait=wait,
            batch_size=batch_size, progress=progress, report=report,
            weights=study_weights(weights, split_list(models) if models is not None else _default_models(dataset))
            if weights else None,
        )
    if as_json:
        typer.echo(json.dumps([_summary(p, statuses.get(p, "")) for p in paths], indent=2))
    else:
        emit(paths)


@command("import-grids")
def import_grids_command(
    source: Annotated[Path, typer.Argument(
        help="Your grids: a .npz with grids (B×3×H×W float32, normalised) and labels (B×n² int), "
        "optionally class_names, mean, std; or a .csv with the header grid,cell,image,class (one "
        "row per cell, cells row-major, image paths relative to the CSV).")],
    variant: Annotated[str, typer.Option(
        help="distinct (n² distinct classes per grid, for GridPG) or corners (one class at the "
        "top-left and bottom-right cells, for DiFull/DiPart).")],
    model: Annotated[str | None, typer.Option(
        help="Model the grids are for: its cell size, class count and normalisation are checked "
        "(and used for a .csv).")] = None,
    num_classes: Annotated[int | None, typer.Option(
        help="Classes of the model's output (default: the length of class_names, or --model's).")] = None,
    cell_size: Annotated[int | None, typer.Option(
        help="Pixels per cell a .csv's images are resized to (default: --model's).")] = None,
    mean: Annotated[str | None, typer.Option(
        help="Per-channel normalisation mean, e.g. 0.485,0.456,0.406 (default: the .npz's or --model's).")] = None,
    std: Annotated[str | None, typer.Option(
        help="Per-channel normalisation std, e.g. 0.229,0.224,0.225 (default: the .npz's or --model's).")] = None,
    name: Annotated[str | None, typer.Option(
        help="Grid file name, which also names its cache folders (default: the source's stem).")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the grid file.")] = Path("data/grids"),
    batch_size: Annotated[int, typer.Option(help="Images read and resized at a time (.csv).")] = 256,
    force: Annotated[bool, typer.Option(
        "--force", help="Rewrite the file even when it is up to date, or was not made by import-grids.")] = False,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Wait for another process writing the same file instead of failing.")] = False,
) -> None:
    """Check your own grid images and write them as a grid file every later stage reads.

    Prints the file's path (<out-dir>/<name>.h5) on stdout. Bad input exits 2 with nothing written.
    """
    from attrcli.stages.import_grids import import_grids, parse_triple

    path, status = import_grids(
        source, variant=variant, model=model, num_classes=num_classes, cell_size=cell_size,
        mean=parse_triple(mean, "--mean"), std=parse_triple(std, "--std"), name=name, out_dir=out_dir,
        batch_size=batch_size, force=force, wait=wait,
    )
    err.print(f"{status}: {path}", highlight=False)
    emit([path])
