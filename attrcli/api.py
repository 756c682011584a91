"""The public Python API behind ``import attrcli``: the stages as keyword-only functions that
return data (never print, never exit), and readers of the results as tables.

Every stage is cached as on the command line: a second call with the same inputs finds its
artifacts up to date. ``device="auto"`` picks CUDA when available (:func:`attrcli.devices.resolve_device`).
The readers return pandas DataFrames when pandas is installed and numpy structured arrays
otherwise, with the columns of docs/artifacts.md ("Export tables"). Heavy libraries (torch,
matplotlib) are imported inside the functions that need them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attrcli.stages.caching import StageResult
    from attrcli.stages.compare import ComparisonResult
    from attrcli.stages.correlate import CorrelationResult
    from attrcli.stages.plan import AttributeResult
    from attrcli.stages.run import StudyResult

PathsLike = Iterable[Any]  # paths, or results of a stage (anything with a ``.path``)


def _paths(items: PathsLike | Path | str | None) -> list[Path]:
    if items is None:
        return []
    if isinstance(items, (str, Path)) or hasattr(items, "path"):
        items = [items]
    return [Path(getattr(item, "path", item)) for item in items]


def _device(device: Any):
    from attrcli.devices import resolve_device

    return resolve_device(device)


def _bootstrap(confidence: float, resamples: int, ci_method: str, seed: int):
    from attrcli.metrics.intervals import BootstrapConfig

    return BootstrapConfig(confidence=confidence, resamples=resamples, method=ci_method, seed=seed)


def make_grids(*, device: Any = "cpu", **options: Any) -> list[Path]:
    """Build grid files (``attrcli make-grids``): :func:`attrcli.stages.make_grids.make_grids`
    with the same keywords (``dataset``, ``variant``, ``n``, ``count``, ``models``, ``out_dir``,
    ``cache_dir``...); returns the grid files' paths."""
    from attrcli.stages.make_grids import make_grids as stage

    return stage(device=_device(device), **options)


def attribute(*, grids: Path | str, device: Any = "cpu", **fields: Any) -> list[AttributeResult]:
    """Attribution maps (``attrcli attribute``), one artifact per setting, layer and method:
    the fields of :class:`attrcli.stages.plan.AttributeRequest` (``setting``, ``model``,
    ``layers``, ``methods``, ``cache_root``, ``batch_size``, ``precision``...). Returns one
    result (``key``, ``path``, ``status``) per artifact."""
    from attrcli.stages.attribute import attribute as stage

    return stage(grids=grids, device=_device(device), **fields)


def score(*, attributions: PathsLike, cache_root: Path | str | None = None, force: bool = False,
          device: Any = "cpu", confidence: float = 0.95, resamples: int = 2000,
          ci_method: str = "percentile", seed: int = 0, wait: bool = False) -> list[StageResult]:
    """Localization scores (supplement H.3) of attribution artifacts (paths or :func:`attribute`
    results), with bootstrap intervals over grid images; one result per score artifact."""
    from attrcli.stages.score import score as stage

    return stage(attribution_paths=_paths(attributions), cache_root=Path(cache_root) if cache_root else None,
                 force=force, device=_device(device), wait=wait,
                 bootstrap=_bootstrap(confidence, resamples, ci_method, seed))


def aggatt(*, paths: PathsLike, cache_root: Path | str | None = None, cell: int = 0,
           force: bool = False, device: Any = "cpu", wait: bool = False) -> list[StageResult]:
    """AggAtt bin maps (supplement H.4) of attribution or score artifacts at target ``cell``."""
    from attrcli.stages.aggatt import aggatt as stage

    return stage(paths=_paths(paths), cache_root=Path(cache_root) if cache_root else None, cell=cell,
                 force=force, device=_device(device), wait=wait)


def correlate(*, scores: PathsLike, reference: str | None = None, name: str | None = None,
              cache_root: Path | str | None = None, force: bool = False, device: Any = "cpu",
              confidence: float = 0.95, resamples: int = 2000, ci_method: str = "percentile",
              seed: int = 0) -> CorrelationResult:
    """Spearman correlation of per-attribution scores between keys (supplement C), with
    bootstrap intervals; ``reference`` as ``attrcli correlate --reference``."""
    from attrcli.stages.correlate import correlate as stage

    return stage(score_paths=_paths(scores), reference=reference, name=name,
                 cache_root=Path(cache_root) if cache_root else None, force=force, device=_device(device),
                 bootstrap=_bootstrap(confidence, resamples, ci_method, seed))


def compare(*, scores: PathsLike, name: str | None = None, cache_root: Path | str | None = None,
            force: bool = False, device: Any = "cpu", confidence: float = 0.95, resamples: int = 2000,
            ci_method: str = "percentile", seed: int = 0) -> ComparisonResult:
    """Paired differences between keys scoring the same attributions (``attrcli compare``):
    median and mean differences with intervals, Wilcoxon tests, Holm-corrected."""
    from attrcli.stages.compare import compare as stage

    return stage(score_paths=_paths(scores), name=name, cache_root=Path(cache_root) if cache_root else None,
                 force=force, device=_device(device), bootstrap=_bootstrap(confidence, resamples, ci_method, seed))


def run(**options: Any) -> StudyResult:
    """A whole study (``attrcli run``): :func:`attrcli.stages.run.run_study` with the same
    keywords (``study``: a preset name or a STUDY.toml path; ``cache_root``, ``reports_dir``,
    ``force``, and the overrides ``device``, ``precision``, ``count``...)."""
    from attrcli.stages.run import run_study

    return run_study(**options)


def _listed(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def select_scores(paths: PathsLike | None = None, *, grids: Path | str | None = None,
                  cache_root: Path | str = "cache", setting: str | Iterable[str] | None = None,
                  model: str | Iterable[str] | None = None, layer: str | Iterable[str] | None = None,
                  method: str | Iterable[str] | None = None, device: Any = "cpu") -> list[Path]:
    """Score artifacts of ``paths`` (score or attribution artifacts, or stage results), or of
    the keys on disk under ``cache_root`` that a selection names (``grids`` with settings,
    models, layers and methods, as ``attrcli score --grids``; None or ``all``: every one).
    Attributions without an up-to-date score are scored first."""
    from attrcli.errors import UserError
    from attrcli.metrics.selection import select_keys, split_methods
    from attrcli.stages.export import resolve_scores
    from attrcli.store import ArtifactKey

    given = _paths(paths)
    if given and grids is not None:
        raise UserError("give artifact paths or grids with a selection, not both")
    if not given:
        if grids is None:
            raise UserError("nothing to read: give artifact paths or grids=")
        methods = split_methods(method) if isinstance(method, str) else _listed(method)
        keys = select_keys(cache_root=Path(cache_root), grids=grids, settings=_listed(setting),
                           models=_listed(model), layers=_listed(layer), methods=methods,
                           stages=("attributions", "scores"))
        given = [k.path(cache_root) for k in keys]
    root = Path(cache_root) if grids is not None else None
    needs_device = any(ArtifactKey.from_path(p).stage == "attributions" for p in given)
    return resolve_scores(given, cache_root=root, device=_device(device) if needs_device else "cpu")


def _frame(table):
    try:
        import pandas  # noqa: F401
    except ImportError:
        return table.records()
    return table.to_pandas()


def scores(paths: PathsLike | None = None, **selection: Any):
    """One row per attribution (key, method parameters, grid image, slot, cell, head, class,
    score, numerator, pointing hit): a DataFrame, or a numpy structured array without pandas.
    Takes what :func:`select_scores` takes."""
    from attrcli.stages.export import attribution_table

    return _frame(attribution_table(score_paths=select_scores(paths, **selection)))


def summary(paths: PathsLike | None = None, **selection: Any):
    """One row per key: count, median, quartiles, mean, share of perfect scores and their
    intervals, share of pointing hits: the numbers of ``attrcli score``. Takes what
    :func:`select_scores` takes."""
    from attrcli.stages.export import summary_table

    return _frame(summary_table(score_paths=select_scores(paths, **selection)))


def correlations(paths: PathsLike):
    """Correlation artifacts (paths or :func:`correlate` results) as one long table."""
    from attrcli.stages.export import correlation_table

    return _frame(correlation_table(paths=_paths(paths)))


def comparisons(paths: PathsLike):
    """Comparison artifacts (paths or :func:`compare` results) as one long table."""
    from attrcli.stages.export import comparison_table

    return _frame(comparison_table(paths=_paths(paths)))
