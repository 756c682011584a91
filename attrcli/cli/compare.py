"""``attrcli compare``: paired differences between keys scoring the same attributions.

Keys come from artifact paths, a selection (as for ``correlate``) or ``--key`` specs; the
stage is :func:`attrcli.stages.compare.compare`. Stdout carries the comparison's path; the
result (one line for two keys, a table for more) goes to stderr, or ``--json`` to stdout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.table import Table

from attrcli.cli.analysis import (
    CacheDir,
    CiMethod,
    Confidence,
    Name,
    Resamples,
    Seed,
    Statistic,
    bootstrap_config,
    check_statistic,
    ci_level,
    ci_text,
    run_stage,
    select,
)
from attrcli.cli.app import command, emit, err
from attrcli.cli.options import Device, Force, Grids, Json, Layer, Method, Model, Paths, Quiet, Setting, Wait
from attrcli.errors import UserError
from attrcli.names import ALL, CORRECTION
from attrcli.names import PAIRED_TEST as TEST
from attrcli.store import ArtifactKey
from attrcli.store.keys import grids_part

if TYPE_CHECKING:
    from attrcli.stages.compare import ComparisonResult


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
        key = ArtifactKey("attributions", grids_part(grids), *parts)
        path = key.path(root)
        if not path.exists() and key.with_stage("scores").path(root).exists():
            path = key.with_stage("scores").path(root)
        if not path.exists():
            raise UserError(f"--key {spec}: no attribution or score artifact at {path}")
        out.append(path)
    return out


def _signed(value: float | None, digits: int = 3) -> str:
    return "nan" if value is None or np.isnan(value) else f"{value:+.{digits}f}"


def _pair_label(label: str, shared: str | None) -> str:
    """``setting/model/layer/method`` as ``method @ layer`` (with the rest if not shared)."""
    setting, model, layer, method = label.split("/", 3)
    where = "" if shared else f" ({setting} · {model})"
    return f"{method} @ {layer}{where}"


def _p(value: float) -> str:
    return "nan" if np.isnan(value) else (f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}")


def _print_comparison(result: ComparisonResult) -> None:
    settings = {label.split("/")[0] + " · " + label.split("/")[1] for label in result.keys}
    shared = settings.pop() if len(settings) == 1 else None
    level = ci_level(result.bootstrap.confidence)
    context = f" on {shared}" if shared else ""
    units = f"{result.grid_images} grid images, {result.count} attributions per key"
    if len(result.keys) == 2:
        (pair,) = result.pairs
        first, second = (_pair_label(k, shared) for k in result.keys)
        err.print(
            f"{first} vs {second}{context} ({units}): "
            f"Δmedian {_signed(pair.delta_median)}{ci_text(pair.delta_median_ci)}, "
            f"Δmean {_signed(pair.delta_mean)}{ci_text(pair.delta_mean_ci)} ({level}); "
            f"higher on {100 * pair.higher:.0f} %, lower on {100 * pair.lower:.0f} % of "
            f"attributions; Wilcoxon W = {pair.statistic:g}, p = {_p(pair.p_value)}",
            highlight=False, soft_wrap=True,
        )
        err.print(f"[dim]test: {TEST}[/dim]", highlight=False)
        return
    alpha = result.bootstrap.alpha
    what = "Δmean pointing-game hit rate" if result.statistic == "pointing" else "Δmedian localization"
    table = Table(title=f"{what}, row minus column{context} ({units})")
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
            pointing = result.statistic == "pointing"  # the median of 0/1 hits says little: the mean
            low, high = pair.delta_mean_ci if pointing else pair.delta_median_ci
            delta = pair.delta_mean if pointing else pair.delta_median
            bounds = (low, high) if sign > 0 else (-high, -low)
            star = " *" if pair.p_adjusted < alpha else ""
            cells.append(f"{_signed(sign * delta, 2)}{star}\n{ci_text(bounds, 2).strip()}")
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
    statistic: Statistic = "score",
) -> None:
    """Paired differences between keys scoring the same attributions, with intervals and tests.

    Two keys: Δmedian and Δmean with bootstrap intervals and a Wilcoxon signed-rank test. More
    keys (e.g. every method at one layer): every pair, p-values Holm-corrected.
    """
    from attrcli.stages.compare import compare

    check_statistic(statistic)
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
    result = run_stage(
        compare, device, quiet or json_out,
        score_paths=inputs, name=name, cache_root=root, force=force, wait=wait,
        bootstrap=bootstrap, statistic=statistic,
    )
    if json_out:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    if not quiet:
        err.print(f"[dim]{result.status:>17}[/dim]  {result.name}", highlight=False)
        _print_comparison(result)
    emit([result.path])
