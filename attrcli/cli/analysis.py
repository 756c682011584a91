"""attrcli analysis commands: ``score``, ``aggatt``, ``correlate`` (``compare`` is in
:mod:`attrcli.cli.compare`), and what the four share.

Thin wrappers over the stages :mod:`attrcli.stages.score`, :mod:`~attrcli.stages.aggatt` and
:mod:`~attrcli.stages.correlate`, imported when a command runs. Keys come from artifact paths
(``-`` reads them from stdin) or from a selection (``--grids`` with ``--setting/--model/--layer/--method``,
``all`` meaning whatever is on disk). Stdout carries the artifact paths, one a line, so that
``attrcli score - | attrcli aggatt -`` pipes; tables and status go to stderr. ``--json`` prints
one JSON document on stdout instead. ``score``, ``correlate`` and ``compare`` report bootstrap
intervals (grid images resampled, all heads of a grid together), configured by ``--confidence``,
``--resamples``, ``--ci-method`` and ``--seed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import numpy as np
import typer
from rich.table import Table

from attrcli.cli.app import command, emit, err, progress_bar
from attrcli.cli.options import (
    Device,
    Force,
    Grids,
    Json,
    Layer,
    Method,
    Model,
    Paths,
    Quiet,
    Setting,
    Wait,
    selected,
)
from attrcli.names import AGGATT_MAX_SIZE as MAX_SIZE
from attrcli.names import INTERVAL_METHODS as METHODS

if TYPE_CHECKING:
    from attrcli.metrics.intervals import BootstrapConfig
    from attrcli.metrics.summary import ScoreSummary
    from attrcli.stages.caching import StageResult

T = TypeVar("T")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache folder (default: 'cache' with --grids, else the inputs' own)."
    ),
]
Confidence = Annotated[
    float, typer.Option("--confidence", help="Confidence level of the bootstrap intervals.")
]
Resamples = Annotated[
    int, typer.Option("--resamples", help="Bootstrap resamples of the grid images (>= 100).")
]
CiMethod = Annotated[
    str, typer.Option("--ci-method", help=f"Bootstrap interval method: {', '.join(METHODS)}.")
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")]
STATISTICS = ("score", "pointing")
Statistic = Annotated[
    str,
    typer.Option(
        "--statistic",
        help="What to relate per attribution: score (localization score) or pointing "
        "(pointing-game hit, 0 or 1).",
    ),
]


def check_statistic(value: str) -> str:
    """A ``--statistic`` value, or a one-line usage error."""
    from attrcli.errors import UserError

    if value not in STATISTICS:
        raise UserError(f"unknown --statistic {value!r}; valid: {', '.join(STATISTICS)}")
    return value
Name = Annotated[
    str | None,
    typer.Option(
        "--name", help="Output name under <cache>/<stage>/ (default: derived from the keys)."
    ),
]


def bootstrap_config(confidence: float, resamples: int, method: str, seed: int) -> BootstrapConfig:
    """The interval options as a config (a bad value is a usage error)."""
    from attrcli.metrics.intervals import BootstrapConfig

    return BootstrapConfig(
        confidence=confidence, resamples=resamples, method=method.lower(), seed=seed
    )


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
        from attrcli.metrics.selection import select_keys

        keys = select_keys(cache_root=root, stages=stages_on_disk, **selection)
        return [k.path(root) for k in keys]

    return selected(paths, grids, (setting, model, layer, method), find=on_disk, nothing="do"), root


def run_stage(stage: Callable[..., T], device: str, quiet: bool, **arguments) -> T:
    """``stage(**arguments)`` on the resolved ``device``, with progress bars unless ``quiet``."""
    from attrcli.devices import resolve_device

    torch_device = resolve_device(device)
    with progress_bar(quiet) as progress:
        return stage(device=torch_device, progress=progress, **arguments)


def report(results: list[StageResult], quiet: bool) -> None:
    """One status line per artifact on stderr, unless ``quiet``."""
    if not quiet:
        for result in results:
            err.print(f"[dim]{result.status:>17}[/dim]  {result.key.label()}", highlight=False)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table; ``nan`` when absent."""
    return "nan" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def ci_text(bounds: tuple[float, float], digits: int = 3, percent: bool = False) -> str:
    """``[low, high]``, or nothing when the interval is absent."""
    if any(b is None or np.isnan(b) for b in bounds):
        return ""
    if percent:
        return f" [{100 * bounds[0]:.0f}, {100 * bounds[1]:.0f}]"
    return f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def ci_level(confidence: float | None) -> str:
    """``95 % CI``: the name of the intervals in table captions."""
    return f"{100 * confidence:g} % CI" if confidence else "CI"


def _score_tables(rows: list[ScoreSummary]) -> None:
    def group(row: ScoreSummary) -> tuple[str, str, str]:
        return (row.grids, row.setting, row.model)

    for (grids, setting, model), members in groupby(sorted(rows, key=group), key=group):
        members = list(members)
        level = ci_level(next((r.confidence for r in members if r.confidence), None))
        table = Table(
            title=f"{setting} · {model} · grids {grids}  (chance {fmt(members[0].chance)})",
            caption=f"[CI]: {level}, bootstrap over grid images" if level != "CI" else None,
        )
        columns = ("method", "layer", "count", "median [CI]", "q1", "q3", "mean [CI]",
                   "perfect % [CI]", "pointing % [CI]")
        for name in columns:
            table.add_column(name, justify="left" if name in ("method", "layer") else "right")
        for row in sorted(members, key=lambda r: r.method):
            table.add_row(
                row.method,
                row.layer,
                str(row.count),
                fmt(row.median) + ci_text(row.median_ci, 2),
                fmt(row.q1),
                fmt(row.q3),
                fmt(row.mean) + ci_text(row.mean_ci, 2),
                f"{100 * row.perfect:.1f}" + ci_text(row.perfect_ci, percent=True),
                fmt(100 * row.pointing, 1) + ci_text(row.pointing_ci, percent=True),
            )
        err.print(table)


def _short_labels(rows: list[str], columns: list[str]) -> tuple[str, list[str], list[str]]:
    """Drop the ``setting/model/`` prefix of key labels when every key shares it."""
    prefixes = {"/".join(label.split("/")[:2]) for label in rows + columns}  # setting/model
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
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    ci_method: CiMethod = "percentile",
    seed: Seed = 0,
) -> None:
    """Localization scores per attribution (supplement H.3); a summary table per setting/model.

    With bootstrap intervals of each key's median, mean and share of perfect scores, stored in
    the score artifact (a changed interval option recomputes only the intervals).
    """
    from attrcli.metrics.summary import summarize
    from attrcli.stages.score import score

    bootstrap = bootstrap_config(confidence, resamples, ci_method, seed)
    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions",))
    results = run_stage(
        score, device, quiet or json_out,
        attribution_paths=inputs, cache_root=root, force=force, wait=wait, bootstrap=bootstrap,
    )
    summary = summarize([r.path for r in results])
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
    report(results, quiet)
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
    from attrcli.stages.aggatt import aggatt
    from attrcli.store import read_artifact

    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions",))
    results = run_stage(
        aggatt, device, quiet or json_out,
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
    report(results, quiet)
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
    name: Name = None,
    force: Force = False,
    json_out: Json = False,
    quiet: Quiet = False,
    wait: Wait = False,
    device: Device = "auto",
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    ci_method: CiMethod = "percentile",
    seed: Seed = 0,
    statistic: Statistic = "score",
) -> None:
    """Spearman correlation of per-attribution scores between keys (supplement C, Tables 1-2).

    Each coefficient with a bootstrap interval (the same grid images drawn for both keys).
    """
    from attrcli.stages.correlate import correlate

    check_statistic(statistic)
    bootstrap = bootstrap_config(confidence, resamples, ci_method, seed)
    inputs, root = select(
        paths, grids, setting, model, layer, method, cache_dir, ("attributions", "scores")
    )
    result = run_stage(
        correlate, device, quiet or json_out,
        score_paths=inputs, reference=reference, name=name, cache_root=root, force=force, wait=wait,
        bootstrap=bootstrap, statistic=statistic,
    )
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if not quiet:
        err.print(f"[dim]{result.status:>17}[/dim]  {result.name}", highlight=False)
        shared, rows, columns = _short_labels(result.rows, result.columns)
        title = (
            f"Spearman correlation of {'pointing-game hits' if statistic == 'pointing' else 'localization scores'}, "
            f"{shared} ({result.count} attributions)"
        )
        table = Table(
            title=title, caption=f"[{ci_level(bootstrap.confidence)}]: bootstrap over grid images"
        )
        table.add_column("")
        for label in columns:
            table.add_column(label.replace("/", "\n"), justify="right")
        for i, (label, values) in enumerate(zip(rows, result.matrix)):
            cells = [
                fmt(v) + ("\n" + ci_text((lo, hi), 2).strip() if i != j or len(rows) == 1 else "")
                for j, (v, lo, hi) in enumerate(zip(values, result.low[i], result.high[i]))
            ]
            table.add_row(label, *cells)
        err.print(table)
    emit([result.path])
