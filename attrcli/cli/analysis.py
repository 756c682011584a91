"""attrcli analysis commands: ``score``, ``aggatt``, ``correlate``.

Thin wrappers over :mod:`attrcli.metrics.stages`. Keys come from artifact paths (``-`` reads
them from stdin) or from a selection (``--grids`` with ``--setting/--model/--layer/--method``,
``all`` meaning whatever is on disk). Stdout carries the artifact paths, one a line, so that
``attrcli score - | attrcli aggatt -`` pipes; tables and status go to stderr. ``--json`` prints
one JSON document on stdout instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import Annotated, TypeVar

import numpy as np
import torch
import typer
from rich.table import Table

from attrcli.cli.app import command, emit, err, progress_bar
from attrcli.cli.options import Force, Grids, Layer, Method, Model, Paths, Setting, selected
from attrcli.errors import UserError
from attrcli.metrics import stages
from attrcli.metrics.aggatt import MAX_SIZE
from attrcli.metrics.selection import select_keys
from attrcli.store import read_artifact

T = TypeVar("T")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache folder [default: 'cache' with --grids, else the inputs' own]."
    ),
]
Json = Annotated[
    bool, typer.Option("--json", help="Print a JSON summary on stdout instead of paths.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
Wait = Annotated[
    bool, typer.Option("--wait", help="Wait for another process writing the same artifact.")
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for an absent CUDA is a usage error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; valid: cpu, cuda, auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but no CUDA device is available; use --device cpu")
    return torch.device(name)


def select(
    paths: list[str] | None,
    grids: str | None,
    setting: str,
    model: str,
    layer: str,
    method: str,
    cache_dir: Path | None,
    stages_on_disk: tuple[str, ...],
) -> tuple[list[Path], Path | None]:
    """Input artifact paths and the cache folder to write to (None: beside the inputs)."""
    root = (cache_dir or Path("cache")) if grids else cache_dir

    def on_disk(**selection) -> list[Path]:
        keys = select_keys(cache_root=root, stages=stages_on_disk, **selection)
        return [k.path(root) for k in keys]

    return selected(paths, grids, (setting, model, layer, method), find=on_disk, nothing="do"), root


def _run_stage(stage: Callable[..., T], device: str, quiet: bool, **arguments) -> T:
    """``stage(**arguments)`` on the resolved ``device``, with progress bars unless ``quiet``."""
    torch_device = resolve_device(device)
    with progress_bar(quiet) as progress:
        return stage(device=torch_device, progress=progress, **arguments)


def _report(results: list[stages.StageResult], quiet: bool) -> None:
    if not quiet:
        for result in results:
            err.print(f"[dim]{result.status:>17}[/dim]  {result.key.label()}", highlight=False)


def _fmt(value: float | None) -> str:
    return "nan" if value is None or np.isnan(value) else f"{value:.3f}"


def _score_tables(rows: list[stages.ScoreSummary]) -> None:
    def group(row: stages.ScoreSummary) -> tuple[str, str, str]:
        return (row.grids, row.setting, row.model)

    for (grids, setting, model), members in groupby(sorted(rows, key=group), key=group):
        members = list(members)
        table = Table(
            title=f"{setting} · {model} · grids {grids}  (chance {_fmt(members[0].chance)})"
        )
        for name in ("method", "layer", "count", "median", "q1", "q3", "mean", "perfect"):
            table.add_column(name, justify="left" if name in ("method", "layer") else "right")
        for row in sorted(members, key=lambda r: r.method):
            table.add_row(
                row.method,
                row.layer,
                str(row.count),
                _fmt(row.median),
                _fmt(row.q1),
                _fmt(row.q3),
                _fmt(row.mean),
                f"{100 * row.perfect:.1f}%",
            )
        err.print(table)


def _short_labels(rows: list[str], columns: list[str]) -> tuple[str, list[str], list[str]]:
    """Drop the ``setting/model/`` prefix of key labels when every key shares it."""
    prefixes = {label.rsplit("/", 2)[0] for label in rows + columns}
    if len(prefixes) != 1:
        return "mixed keys", rows, columns
    cut = len(prefixes.pop()) + 1
    return rows[0][: cut - 1], [r[cut:] for r in rows], [c[cut:] for c in columns]


@command("score")
def score_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    cache_dir: CacheDir = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
) -> None:
    """Localization scores per attribution (supplement H.3); a summary table per setting/model."""
    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions",))
    results = _run_stage(
        stages.score, device, quiet or json_out,
        attribution_paths=inputs, cache_root=root, force=force, wait=wait,
    )
    summary = stages.summarize([r.path for r in results])
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "artifacts": [r.to_dict() for r in results],
                    "summary": [s.to_dict() for s in summary],
                },
                indent=2,
            )
        )
        return
    _report(results, quiet)
    if not quiet:
        _score_tables(summary)
    emit(r.path for r in results)


@command("aggatt")
def aggatt_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    cache_dir: CacheDir = None,
    cell: Annotated[
        int,
        typer.Option(
            "--cell", help="Target cell to aggregate (row-major; 0 = top-left, as in the paper)."
        ),
    ] = 0,
    max_size: Annotated[
        int,
        typer.Option(
            "--max-size",
            help="Largest stored side of the bin maps (bigger grids are area-averaged).",
        ),
    ] = MAX_SIZE,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
) -> None:
    """AggAtt bin maps per key (supplement H.4); takes attribution or score artifacts."""
    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions",))
    results = _run_stage(
        stages.aggatt, device, quiet or json_out,
        paths=inputs, cache_root=root, cell=cell, max_size=max_size, force=force, wait=wait,
    )
    details = []
    for result in results:
        artifact = read_artifact(result.path, names=["counts", "median_index"])
        details.append(
            {
                **result.to_dict(),
                "normaliser": artifact.attrs["normaliser"],
                "counts": artifact.data["counts"].tolist(),
                "median_index": artifact.data["median_index"].tolist(),
            }
        )
    if json_out:
        typer.echo(json.dumps({"artifacts": details}, indent=2))
        return
    _report(results, quiet)
    if not quiet:
        table = Table(title=f"AggAtt at cell {cell}: attributions per bin 0-2-5-50-95-98-100 %")
        for name in ("key", "counts", "normaliser"):
            table.add_column(name)
        for item in details:
            table.add_row(
                item["key"], " ".join(map(str, item["counts"])), f"{item['normaliser']:.4g}"
            )
        err.print(table)
    emit(r.path for r in results)


@command("correlate")
def correlate_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    cache_dir: CacheDir = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help="Correlate every key against this key only: layer/method (final/gradcam) "
            "or setting/model/layer/method.",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Output name under <cache>/correlations/ [default: derived from the keys].",
        ),
    ] = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
) -> None:
    """Spearman correlation of per-attribution scores between keys (supplement C, Tables 1-2)."""
    inputs, root = select(
        paths, grids, setting, model, layer, method, cache_dir, ("attributions", "scores")
    )
    result = _run_stage(
        stages.correlate, device, quiet or json_out,
        score_paths=inputs, reference=reference, name=name, cache_root=root, force=force, wait=wait,
    )
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if not quiet:
        err.print(f"[dim]{result.status:>17}[/dim]  {result.name}", highlight=False)
        shared, rows, columns = _short_labels(result.rows, result.columns)
        title = (
            f"Spearman correlation of localization scores, {shared} ({result.count} attributions)"
        )
        table = Table(title=title)
        table.add_column("")
        for label in columns:
            table.add_column(label.replace("/", "\n"), justify="right")
        for label, values in zip(rows, result.matrix):
            table.add_row(label, *(_fmt(v) for v in values))
        err.print(table)
    emit([result.path])
