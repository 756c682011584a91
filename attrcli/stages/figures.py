"""The figure stage: every figure of SPEC §4 for a study, each redrawn only when what it is
drawn from changes.

Each figure records, in ``figures.json`` in the report folder (docs/artifacts.md), the content
hash of every file it reads (the artifacts it shows and the attributions behind the examples),
its options (format, resolution, the drawing code's version, matplotlib's version) and the hash
of the file it wrote. A figure is reused when all of them match; otherwise it is redrawn, and
``force`` redraws every one. A file's hash is kept with its identity (size, inode, mtime and
ctime in nanoseconds) and reused while that matches, so a warm call reads no artifact. A call
that finds every figure up to date writes nothing, not even the manifest.

Stale figures are drawn in parallel worker processes (each on the Agg canvas, one torch
thread), as many as attrcli may use cores (:func:`attrcli.threads.threads_for`). Figures are
written without dates or versions in the file, so a redraw of unchanged inputs is byte-identical.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from attrcli.engine.precision import split_key_method
from attrcli.errors import UserError
from attrcli.store import ArtifactKey, file_hash
from attrcli.store.files import write_bytes
from attrcli.store.keys import CorrelationKey

MANIFEST = "figures.json"
SCHEMA = 1
#: The paper's smoothed families (supplement D) and their SmoothGrad variants.
_SMOOTHED = ("s-intgrad", "s-ixg")
_SWEPT = ("s-intgrad", "intgrad", "s-ixg", "ixg")


@dataclass(frozen=True)
class FigurePlan:
    """One figure to have in the report folder: what it shows and how it is drawn."""

    name: str  # file name in the report folder
    figure: str  # boxes, aggatt, examples, correlation, smoothing
    paths: tuple[str, ...]  # the artifacts given to its plot function
    reads: tuple[str, ...]  # every file drawing it reads (its identity)
    options: dict = field(default_factory=dict)  # keyword options of the plot function


@dataclass(frozen=True)
class FigureResult:
    """The figures of a report: every path (in drawing order), and which were reused from an
    earlier call and which were (re)drawn now. Iterates, indexes and counts as ``paths``."""

    paths: tuple[Path, ...]
    reused: tuple[Path, ...]
    redrawn: tuple[Path, ...]

    def __iter__(self) -> Iterator[Path]:
        return iter(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        return self.paths[index]

    def to_dict(self) -> dict:
        """``{"figures": [...], "reused": [...], "redrawn": [...]}`` as strings (``--json``)."""
        return {name: [str(p) for p in getattr(self, attr)]
                for name, attr in (("figures", "paths"), ("reused", "reused"), ("redrawn", "redrawn"))}


def _spec(method: str) -> str:
    return split_key_method(method)[0]


def _base_method(method: str) -> bool:
    """A method of the study's own list (with any parameters), not a derived smoothing key."""
    return not _spec(method).startswith(("s-", "smoothgrad-"))


def plan_figures(*, study, fmt: str, scores: list[Path], aggatts: list[Path],
                 correlations: list[Path]) -> list[FigurePlan]:
    """The figures the given artifacts make: box plots of the base methods, AggAtt per model and
    setting, median examples (GridPG) at the study's shallowest and deepest layer, one
    correlation map per artifact, and the smoothing sweep where smoothed keys were given. A
    figure with nothing to show is left out, and so is a kind of figure missing from
    ``study.figures`` where the study names them (``boxes``, ``aggatt``, ``examples``,
    ``correlation``, ``smoothing``)."""
    from attrcli.plots.common import order_layers

    def plan(name: str, figure: str, paths: list[Path], reads: list[Path] = (), **options) -> FigurePlan:
        shown = tuple(str(p) for p in paths)
        return FigurePlan(f"{name}.{fmt}", figure, shown, shown + tuple(str(p) for p in reads), options)

    out: list[FigurePlan] = []
    scored = [(ArtifactKey.from_path(p), Path(p)) for p in scores]
    base = [p for k, p in scored if _base_method(k.method)]
    if base:
        out.append(plan("boxes", "boxes", base))
    keyed = [(ArtifactKey.from_path(p), Path(p)) for p in aggatts]
    layers = order_layers(study.layers)
    for model in study.models:
        for setting in study.settings:
            chosen = [p for k, p in keyed if (k.model, k.setting) == (model, setting) and _base_method(k.method)]
            if chosen:
                out.append(plan(f"aggatt-{setting}-{model}", "aggatt", chosen))
        for layer in dict.fromkeys((layers[0], layers[-1])) if layers else ():
            chosen = [(k, p) for k, p in keyed if (k.model, k.setting, k.layer) == (model, "gridpg", layer)
                      and _base_method(k.method)]
            if chosen:
                # the maps it shows (one found elsewhere, by the path an AggAtt records, is
                # still covered by the AggAtt's provenance: the attribution's content hash)
                maps = [m for m in (k.sibling("attributions", p) for k, p in chosen) if m.is_file()]
                out.append(plan(f"examples-gridpg-{model}-{layer}", "examples",
                                [p for _, p in chosen], maps))
    for path in correlations:
        out.append(plan(f"correlation-{CorrelationKey.from_path(path).name}", "correlation", [path]))
    reference = f"{layers[-1]}/gradcam" if layers else "final/gradcam"
    def swept(k: ArtifactKey) -> bool:
        spec = _spec(k.method)
        at_input = k.layer == "input" and (spec.split(":")[0] in _SWEPT or spec.startswith("smoothgrad-"))
        return k.setting in study.smoothing_settings and (at_input or f"{k.layer}/{spec}" == reference)

    sweep = [(k, p) for k, p in scored if swept(k)]
    if any(_spec(k.method).split(":")[0] in _SMOOTHED for k, _ in sweep):
        out.append(plan("smoothing", "smoothing", [p for _, p in sweep], reference=reference, layer="input"))
    wanted = tuple(getattr(study, "figures", ()) or ())  # a study file's choice; none: all
    return [p for p in out if p.figure in wanted] if wanted else out


def _identity(path: str) -> list[int] | None:
    """What changes whenever a file's content may have: size, inode, mtime and ctime (ns)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


class _Hashes:
    """Content hashes of files, reused from the manifest while a file's identity is unchanged."""

    def __init__(self, known: dict) -> None:
        self.known = known if isinstance(known, dict) else {}
        self.now: dict[str, dict] = {}

    def of(self, path: str) -> str | None:
        if path in self.now:
            return self.now[path]["sha256"]
        identity = _identity(path)
        if identity is None:
            return None
        old = self.known.get(path)
        if isinstance(old, dict) and old.get("stat") == identity and old.get("sha256"):
            digest = old["sha256"]
        else:
            digest = file_hash(path)
        self.now[path] = {"sha256": digest, "stat": identity}
        return digest

    def forget(self, path: str) -> None:
        self.now.pop(path, None)
        self.known.pop(path, None)


def _read_manifest(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("schema") == SCHEMA else {}


def _options(plan: FigurePlan, fmt: str) -> dict:
    import matplotlib

    from attrcli.plots.common import DPI, DRAWING_VERSION

    return {"figure": plan.figure, "format": fmt, "dpi": DPI, "drawing": DRAWING_VERSION,
            "matplotlib": matplotlib.__version__, **plan.options}


def draw_figure(plan: FigurePlan, out: str, fmt: str) -> str:
    """Draw one planned figure to ``out``; returns ``out``. Runs in a worker process too."""
    from attrcli.plots import (
        plot_aggatt,
        plot_boxes,
        plot_correlation,
        plot_examples,
        plot_smoothing,
    )

    paths = [Path(p) for p in plan.paths]
    target = Path(out)
    if plan.figure == "boxes":
        plot_boxes(score_paths=paths, out=target, fmt=fmt)
    elif plan.figure == "aggatt":
        plot_aggatt(aggatt_paths=paths, out=target, fmt=fmt)
    elif plan.figure == "examples":
        plot_examples(aggatt_paths=paths, out=target, fmt=fmt)
    elif plan.figure == "correlation":
        plot_correlation(paths=paths, out=target, fmt=fmt)
    elif plan.figure == "smoothing":
        plot_smoothing(score_paths=paths, out=target, fmt=fmt, **plan.options)
    else:
        raise UserError(f"unknown figure {plan.figure!r}")
    return out


def _worker_start() -> None:
    """A drawing worker: the Agg canvas, and one torch thread (the examples upsample maps)."""
    import matplotlib

    matplotlib.use("Agg")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _draw_all(todo: list[tuple[FigurePlan, str]], fmt: str, jobs: int) -> list[BaseException | None]:
    """Draw every ``(plan, out)``, in ``jobs`` processes when there are several; per figure the
    error it raised, or None."""
    if jobs <= 1 or len(todo) <= 1:
        errors: list[BaseException | None] = []
        for plan, out in todo:
            try:
                draw_figure(plan, out, fmt)
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - reported after the others are drawn
                errors.append(exc)
        return errors
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Forked workers start at once with the plotting modules already imported (a fresh
    # interpreter would spend seconds importing matplotlib, torch and scipy per worker).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=context,
                             initializer=_worker_start) as pool:
        futures = [pool.submit(draw_figure, plan, out, fmt) for plan, out in todo]
        return [f.exception() for f in futures]


def _cost(plan: FigurePlan) -> int:
    """Longest first, so that parallel workers finish together."""
    return {"examples": 3, "aggatt": 2}.get(plan.figure, 1) * len(plan.paths)


def draw_figures(*, study, report_dir: Path, fmt: str, scores: list[Path], aggatts: list[Path],
                 correlations: list[Path], grid_files: dict[str, Path] | None = None,
                 force: bool = False, jobs: int | None = None) -> FigureResult:
    """Every figure of SPEC §4 for the study under ``report_dir``, each redrawn only when a file
    it reads or an option changed (or ``force``); see the module docstring. ``study`` needs
    ``models``, ``settings``, ``layers`` and ``smoothing_settings``. ``grid_files`` is accepted
    for the callers' convenience: the examples read the grid file each attribution records
    (checked against its hash). ``jobs`` bounds the drawing processes (default: the cores
    attrcli may use)."""
    from attrcli.plots.common import check_format

    fmt = check_format(fmt)
    report_dir = Path(report_dir)
    plans = plan_figures(study=study, fmt=fmt, scores=scores, aggatts=aggatts,
                         correlations=correlations)
    manifest_path = report_dir / MANIFEST
    old = _read_manifest(manifest_path)
    hashes = _Hashes(old.get("files", {}))
    recorded = old.get("figures", {}) if isinstance(old.get("figures"), dict) else {}
    entries: dict[str, dict] = {}
    todo: list[tuple[FigurePlan, str]] = []
    failed: BaseException | None = None
    for plan in plans:
        out = str(report_dir / plan.name)
        entry = {"options": _options(plan, fmt), "inputs": {p: hashes.of(p) for p in plan.reads}}
        before = recorded.get(plan.name)
        fresh = (not force and isinstance(before, dict) and all(entry["inputs"].values())
                 and {k: before.get(k) for k in entry} == entry
                 and before.get("output") is not None and hashes.of(out) == before["output"])
        if fresh:
            entries[plan.name] = {**entry, "output": before["output"]}
        else:
            todo.append((plan, out))
            entries[plan.name] = entry
    if todo:
        from attrcli.threads import threads_for

        ordered = sorted(todo, key=lambda item: -_cost(item[0]))
        errors = _draw_all(ordered, fmt, jobs if jobs is not None else threads_for(None))
        for (plan, out), error in zip(ordered, errors):
            hashes.forget(out)
            if error is None:
                entries[plan.name]["output"] = hashes.of(out)
            else:
                entries.pop(plan.name)
                failed = failed or error
    files = {}  # the hash cache: every file the manifest's figures read or wrote
    for name, entry in entries.items():
        for path in [*entry["inputs"], str(report_dir / name)]:
            if path in hashes.now:
                files[path] = hashes.now[path]
    manifest = {"schema": SCHEMA, "figures": entries, "files": files}
    if manifest != old:
        write_bytes(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(),
                    what="figure manifest")
    if failed is not None:
        raise failed
    drawn = {report_dir / plan.name for plan, _ in todo}
    paths = tuple(report_dir / plan.name for plan in plans)
    return FigureResult(paths=paths, reused=tuple(p for p in paths if p not in drawn),
                        redrawn=tuple(p for p in paths if p in drawn))
