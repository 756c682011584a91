"""attrcli analysis commands: ``score``, ``aggatt``, ``correlate``, ``compare``.

Thin wrappers over :mod:`attrcli.metrics.stages`. Keys come from artifact paths (``-`` reads
them from stdin) or from a selection (``--grids`` with ``--setting/--model/--layer/--method``,
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
from attrcli.metrics.intervals import CORRECTION, METHODS, TEST, BootstrapConfig
from attrcli.metrics.selection import ALL, grids_name, select_keys
from attrcli.store import ArtifactKey, read_artifact

T = TypeVar("T")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir", help="Cache folder (default: 'cache' with --grids, else the inputs' own)."
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
Name = Annotated[
    str | None,
    typer.Option(
        "--name", help="Output name under <cache>/<stage>/ (default: derived from the keys)."
    ),
]


def bootstrap_config(confidence: float, resamples: int, method: str, seed: int) -> BootstrapConfig:
    """The interval options as a config (a bad value is a usage error)."""
    return BootstrapConfig(
        confidence=confidence, resamples=resamples, method=method.lower(), seed=seed
    )


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


def _fmt(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None or np.isnan(value) else f"{value:+.{digits}f}"


def _ci(bounds: tuple[float, float], digits: int = 3, percent: bool = False) -> str:
    """``[low, high]``, or nothing when the interval is absent."""
    if any(b is None or np.isnan(b) for b in bounds):
        return ""
    if percent:
        return f" [{100 * bounds[0]:.0f}, {100 * bounds[1]:.0f}]"
    return f" [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _level(confidence: float | None) -> str:
    return f"{100 * confidence:g} % CI" if confidence else "CI"


def _score_tables(rows: list[stages.ScoreSummary]) -> None:
    def group(row: stages.ScoreSummary) -> tuple[str, str, str]:
        return (row.grids, row.setting, row.model)

    for (grids, setting, model), members in groupby(sorted(rows, key=group), key=group):
        members = list(members)
        level = _level(next((r.confidence for r in members if r.confidence), None))
        table = Table(
            title=f"{setting} · {model} · grids {grids}  (chance {_fmt(members[0].chance)})",
            caption=f"[CI]: {level}, bootstrap over grid images" if level != "CI" else None,
        )
        columns = ("method", "layer", "count", "median [CI]", "q1", "q3", "mean [CI]",
                   "perfect % [CI]")
        for name in columns:
            table.add_column(name, justify="left" if name in ("method", "layer") else "right")
        for row in sorted(members, key=lambda r: r.method):
            table.add_row(
                row.method,
                row.layer,
                str(row.count),
                _fmt(row.median) + _ci(row.median_ci, 2),
                _fmt(row.q1),
                _fmt(row.q3),
                _fmt(row.mean) + _ci(row.mean_ci, 2),
                f"{100 * row.perfect:.1f}" + _ci(row.perfect_ci, percent=True),
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
    confidence: Confidence = 0.95,
    resamples: Resamples = 2000,
    ci_method: CiMethod = "percentile",
    seed: Seed = 0,
) -> None:
    """Localization scores per attribution (supplement H.3); a summary table per setting/model.

    With bootstrap intervals of each key's median, mean and share of perfect scores, stored in
    the score artifact (a changed interval option recomputes only the intervals).
    """
    bootstrap = bootstrap_config(confidence, resamples, ci_method, seed)
    inputs, root = select(paths, grids, setting, model, layer, method, cache_dir, ("attributions",))
    results = _run_stage(
        stages.score, device, quiet or json_out,
        attribution_paths=inputs, cache_root=root, force=force, wait=wait, bootstrap=bootstrap,
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
) -> None:
    """Spearman correlation of per-attribution scores between keys (supplement C, Tables 1-2).

    Each coefficient with a bootstrap interval (the same grid images drawn for both keys).
    """
    bootstrap = bootstrap_config(confidence, resamples, ci_method, seed)
    inputs, root = select(
        paths, grids, setting, model, layer, method, cache_dir, ("attributions", "scores")
    )
    result = _run_stage(
        stages.correlate, device, quiet or json_out,
        score_paths=inputs, reference=reference, name=name, cache_root=root, force=force, wait=wait,
        bootstrap=bootstrap,
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
        table = Table(
            title=title, caption=f"[{_level(bootstrap.confidence)}]: bootstrap over grid images"
        )
        table.add_column("")
        for label in columns:
            table.add_column(label.replace("/", "\n"), justify="right")
        for i, (label, values) in enumerate(zip(rows, result.matrix)):
            cells = [
                _fmt(v) + ("\n" + _ci((lo, hi), 2).strip() if i != j or len(rows) == 1 else "")
                for j, (v, lo, hi) in enumerate(zip(values, result.low[i], result.high[i]))
            ]
            table.add_row(label, *cells)
        err.print(table)
    emit([result.path])


def _key_paths(specs: list[str], grids: str | None, setting: str, model: str,
               cache_dir: Path | None) -> list[Path]:
    """Artifact paths of ``--key`` specs (``layer/method`` or ``setting/model/layer/method``)."""
    if not grids:
        raise UserError("--key names keys of a grid file: give --grids too")
    root = cache_dir or Path("cache")
    out = []
    for spec in specs:
        parts = spec.split("/")
        if len(parts) == 2:
            if ALL in (setting, model) or "," in setting + model:
                raise UserError(
                    f"--key {spec}: give one --setting and one --model, "
                    "or write the key as setting/model/layer/method"
                )
            parts = [setting, model, *parts]
        if len(parts) != 4 or not all(parts):
            raise UserError(
                f"invalid --key {spec!r}: use layer/method (input/intgrad) "
                "or setting/model/layer/method"
            )
        key = ArtifactKey("attributions", grids_name(grids), *parts)
        path = key.path(root)
        if not path.exists() and key.with_stage("scores").path(root).exists():
            path = key.with_stage("scores").path(root)
        if not path.exists():
            raise UserError(f"--key {spec}: no attribution or score artifact at {path}")
        out.append(path)
    return out


def _pair_label(label: str, shared: str | None) -> str:
    """``setting/model/layer/method`` as ``method @ layer`` (with the rest if not shared)."""
    setting, model, layer, method = label.split("/", 3)
    where = "" if shared else f" ({setting} · {model})"
    return f"{method} @ {layer}{where}"


def _p(value: float) -> str:
    return "nan" if np.isnan(value) else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def _print_comparison(result: stages.ComparisonResult) -> None:
    settings = {label.split("/")[0] + " · " + label.split("/")[1] for label in result.keys}
    shared = settings.pop() if len(settings) == 1 else None
    level = _level(result.bootstrap.confidence)
    context = f" on {shared}" if shared else ""
    units = f"{result.grid_images} grid images, {result.count} attributions per key"
    if len(result.keys) == 2:
        (pair,) = result.pairs
        first, second = (_pair_label(k, shared) for k in result.keys)
        err.print(
            f"{first} vs {second}{context} ({units}): "
            f"Δmedian {_signed(pair.delta_median)}{_ci(pair.delta_median_ci)}, "
            f"Δmean {_signed(pair.delta_mean)}{_ci(pair.delta_mean_ci)} ({level}); "
            f"higher on {100 * pair.higher:.0f} %, lower on {100 * pair.lower:.0f} % of "
            f"attributions; Wilcoxon W = {pair.statistic:g}, p = {_p(pair.p_value)}",
            highlight=False, soft_wrap=True,
        )
        err.print(f"[dim]test: {TEST}[/dim]", highlight=False)
        return
    alpha = result.bootstrap.alpha
    table = Table(title=f"Δmedian localization, row minus column{context} ({units})")
    labels = [_pair_label(k, shared) for k in result.keys]
    table.add_column("")
    for label in labels:
        table.add_column(label.replace(" @ ", "\n@ "), justify="right")
    by_pair = {(p.first, p.second): p for p in result.pairs}
    for i, label in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            pair = by_pair.get((min(i, j), max(i, j)))
            if pair is None:
                cells.append("")
                continue
            sign = 1 if i < j else -1
            low, high = pair.delta_median_ci
            bounds = (low, high) if sign > 0 else (-high, -low)
            star = " *" if pair.p_adjusted < alpha else ""
            cells.append(f"{_signed(sign * pair.delta_median, 2)}{star}\n{_ci(bounds, 2).strip()}")
        table.add_row(label, *cells)
    err.print(table)
    err.print(
        f"[{level}]: bootstrap over grid images. * p < {alpha:g} after {CORRECTION.title()} "
        f"correction over {len(result.pairs)} comparisons; test: {TEST}.",
        highlight=False, soft_wrap=True,
    )


@command("compare")
def compare_command(
    paths: Paths = None,
    grids: Grids = None,
    setting: Setting = "all",
    model: Model = "all",
    layer: Layer = "all",
    method: Method = "all",
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            help="A key to compare, layer/method (with one --setting and --model) or "
            "setting/model/layer/method; repeat it. With --grids.",
        ),
    ] = None,
    cache_dir: CacheDir = None,
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
) -> None:
    """Paired differences between keys scoring the same attributions, with intervals and tests.

    Two keys: Δmedian and Δmean with bootstrap intervals and a Wilcoxon signed-rank test. More
    keys (e.g. every method at one layer): every pair, p-values Holm-corrected.
    """
    bootstrap = bootstrap_config(confidence, resamples, ci_method, seed)
    if key:
        if paths:
            raise UserError("give artifact paths or --key, not both")
        if layer != ALL or method != ALL:
            raise UserError("--key names whole keys; drop --layer and --method")
        inputs = _key_paths(key, grids, setting, model, cache_dir)
        root = cache_dir or Path("cache")
    else:
        inputs, root = select(
            paths, grids, setting, model, layer, method, cache_dir, ("attributions", "scores")
        )
    result = _run_stage(
        stages.compare, device, quiet or json_out,
        score_paths=inputs, name=name, cache_root=root, force=force, wait=wait,
        bootstrap=bootstrap,
    )
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if not quiet:
        err.print(f"[dim]{result.status:>17}[/dim]  {result.name}", highlight=False)
        _print_comparison(result)
    emit([result.path])
