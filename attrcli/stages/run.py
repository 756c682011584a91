"""``run``: a whole study end to end, every stage cached (SPEC §4; study files).

A study is a file (:mod:`attrcli.stages.studyfile`; the presets ``digits`` and
``paper-imagenet`` are shipped ones), checked against the registries before anything is written
(:mod:`attrcli.stages.studycheck`). ``run`` then builds or imports its grid files, attributes
every method the study names at its layers in its settings for every model, derives the
smoothing sweep and SmoothGrad, scores, computes AggAtt, the correlations and the paired
comparisons the study asks for, draws its figures and writes ``reports/<study>/summary.md``.
Each stage skips what is up to date, so a second run computes nothing. :func:`dry_run` lists
what a run would compute, key by key, without computing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attrcli.errors import UserError
from attrcli.progress import Log, Progress
from attrcli.stages.studycheck import PAPER_KS, StudyPlan, apply_overrides, check_study, make_grids_args, scaled_kernels
from attrcli.stages.studyfile import Study, load_study, preset_names, preset_text, read_study

if TYPE_CHECKING:
    from attrcli.stages.plan import AttributeRequest, AttributeResult
    from attrcli.store import ArtifactKey

__all__ = ["PAPER_KS", "ReportView", "StudyResult", "dry_run", "open_study", "run_study", "scaled_kernels"]


@dataclass(frozen=True)
class ReportView:
    """What the report and the figures read of a study."""

    name: str
    models: tuple[str, ...]
    settings: tuple[str, ...]
    layers: tuple[str, ...]
    n: int
    cell_size: int
    smoothing_settings: tuple[str, ...]
    description: str = ""
    figures: tuple[str, ...] = ()


@dataclass
class StudyResult:
    """Where the study's outputs are."""

    report_dir: Path
    summary: Path
    figures: list[Path] = field(default_factory=list)
    attributions: list[Path] = field(default_factory=list)
    computed: int = 0  # artifacts computed (not found up to date)
    computed_keys: list[str] = field(default_factory=list)  # labels of the attribution keys computed
    html: Path | None = None  # the self-contained report page


def open_study(study: Study | str | Path) -> Study:
    """A study: given, a shipped preset's name, or a study file's path."""
    if isinstance(study, Study):
        return study
    if isinstance(study, str) and study in preset_names():
        return read_study(preset_text(study), source=f"{study}.toml")
    path = Path(study)
    if path.suffix.lower() != ".toml" and not path.exists():
        raise UserError(f"unknown study preset {str(study)!r}; valid: {', '.join(preset_names())} (or a STUDY.toml file)")
    return load_study(path)


def _planned(study: Study | str | Path, overrides: dict[str, Any], data_dir: Path, cache_root: Path,
             force: bool) -> StudyPlan:
    from attrcli.store.files import check_folder

    for option, folder in (("--data-dir", data_dir), ("--cache-dir", cache_root)):
        check_folder(folder, what=option)
    chosen = apply_overrides(open_study(study), **overrides)
    return check_study(chosen, data_dir=Path(data_dir), cache_root=Path(cache_root), force=force)


def view_of(planned: StudyPlan) -> ReportView:
    study = planned.study
    layers = list(dict.fromkeys(layer for r in planned.requests if r.methods and not _derived_only(r) for layer in r.layers))
    return ReportView(
        name=study.name, models=tuple(planned.model_keys[m] for m in study.model_names), settings=tuple(study.settings), layers=tuple(layers),
        n=study.grids.n, cell_size=planned.cell_size, smoothing_settings=study.smoothing_settings,
        description=study.description, figures=tuple(study.analysis.figures),
    )


def _derived_only(request: AttributeRequest) -> bool:
    return all(str(m).startswith(("s-", "smoothgrad-")) for m in request.methods)


def run_study(
    *,
    study: Study | str | Path = "digits",
    data_dir: Path = Path("data/grids"),
    cache_root: Path = Path("cache"),
    reports_dir: Path = Path("reports"),
    force: bool = False,
    progress: Progress | None = None,
    log: Log | None = None,
    **overrides: Any,
) -> StudyResult:
    """Run ``study`` (a :class:`Study`, a preset name or a STUDY.toml path); see the module
    docstring. ``overrides`` are the CLI's options that replace the file's where given (not
    None): ``device``, ``precision``, ``batch_size``, ``launcher``, ``partition``, ``root``,
    ``format``, ``count``, ``weights`` (model -> file); they are recorded in the report."""
    from attrcli.store.files import check_folder, output_target

    check_folder(reports_dir, what="--reports-dir")
    planned = _planned(study, {**overrides, "force": force}, Path(data_dir), Path(cache_root), force)
    study = planned.study
    say = log or (lambda message: None)
    report_dir = Path(reports_dir) / planned.label
    result = StudyResult(report_dir=report_dir, summary=report_dir / "summary.md")
    output_target(result.summary, what="summary")

    say("grids")
    grid_files = _grids(planned, Path(data_dir), Path(cache_root), force, progress)
    requests = [r.replace(grids=grid_files[Path(r.grids)]) for r in planned.requests]
    say(f"attribute: {len(requests)} jobs")
    for results in _attribute_all(requests, planned, progress):
        for r in results:
            result.attributions.append(r.path)
            if r.status != "up to date":
                result.computed += 1
                result.computed_keys.append(_label(r.key))

    from attrcli.metrics.intervals import BootstrapConfig
    from attrcli.stages.score import score

    a = study.analysis
    bootstrap = BootstrapConfig(confidence=a.confidence, resamples=a.resamples, method=a.interval, seed=a.interval_seed)
    say("score")
    scores = [r.path for r in score(attribution_paths=result.attributions, cache_root=cache_root, force=force,
                                    device=planned.device, progress=progress, bootstrap=bootstrap)]
    aggatts: list[Path] = []
    if {"aggatt", "examples"} & set(a.figures):
        from attrcli.stages.aggatt import aggatt

        say("aggatt")
        aggatts = [r.path for r in aggatt(paths=result.attributions, cache_root=cache_root, force=force,
                                          device=planned.device, progress=progress)]
    say("correlate")
    correlations = _correlations(planned, scores, Path(cache_root), force, bootstrap)
    comparisons = _comparisons(planned, scores, Path(cache_root), force, bootstrap)

    sanity = _sanity(planned, grid_files, bootstrap, progress)

    say("figures")
    from attrcli.stages.figures import draw_figures
    from attrcli.stages.report import write_summary

    view = view_of(planned)
    variants = {g.variant: grid_files[g.path] for g in planned.grids}
    result.figures = draw_figures(study=view, report_dir=report_dir, fmt=a.format, scores=scores, aggatts=aggatts,
                                  correlations=correlations, grid_files=variants, force=force)
    record = provenance(study)
    write_summary(study=view, path=result.summary, scores=scores, correlations=correlations, figures=result.figures,
                  attributions=result.attributions, comparisons=comparisons, provenance=record, sanity=sanity)
    say("report")
    result.html = _html(study, record, report_dir, scores, list(result.figures), correlations, comparisons, aggatts)
    return result


def _html(study: Study, record: dict[str, Any], report_dir: Path, scores: list[Path], figures: list[Path],
          correlations: list[Path], comparisons: list[Path], aggatts: list[Path]) -> Path:
    """``reports/<study>/index.html`` (:mod:`attrcli.stages.html`) beside the summary, rendered
    only when the study record or a file it shows changed (their size, inode, mtime and ctime,
    kept in ``.index.inputs`` beside it): a warm run reads none of the artifacts again."""
    from attrcli.metrics.summary import summarize
    from attrcli.stages.html import provenance_of, write_html
    from attrcli.store import content_hash
    from attrcli.store.files import write_bytes
    from attrcli.store.hashcache import file_identity as identity

    out, marker = report_dir / "index.html", report_dir / ".index.inputs"
    shown_files = [*scores, *figures, *correlations, *comparisons, *aggatts]
    fingerprint = content_hash(json.dumps(record, sort_keys=True, default=str),
                               [[str(p), identity(p)] for p in shown_files], identity(out))
    if out.is_file() and marker.is_file() and marker.read_text() == fingerprint:
        return out
    shown = {"study file": record["source"], "study file sha256": record["sha256"],
             "CLI overrides": record["overrides"] or "none", "attrcli": record["attrcli"],
             **provenance_of(scores), "study file text": record["text"]}
    write_html(report_dir=report_dir, title=f"attrcli study: {study.name}", provenance=shown,
                      summary_rows=summarize(scores), figures=figures, correlations=correlations,
                      comparisons=comparisons, aggatts=aggatts, description=study.description)
    fingerprint = content_hash(json.dumps(record, sort_keys=True, default=str),
                               [[str(p), identity(p)] for p in shown_files], identity(out))
    if not marker.is_file() or marker.read_text() != fingerprint:
        write_bytes(marker, fingerprint.encode(), what="report")
    return out


def _sanity(planned: StudyPlan, grid_files: dict[Path, Path], bootstrap, progress: Progress | None) -> list:
    """The study's model-randomisation checks (:mod:`attrcli.stages.sanity`), each cached."""
    if not planned.sanity:
        return []
    from attrcli.stages.sanity import run_sanity

    out = []
    for request in planned.sanity:
        for mode in planned.study.sanity.modes:
            out += run_sanity(request.replace(grids=grid_files[Path(request.grids)]), mode=mode,
                              region=planned.study.sanity.region, bootstrap=bootstrap, progress=progress)
    return out


def provenance(study: Study) -> dict[str, Any]:
    """What a reader needs to rerun the study: its file's text and hash, the CLI's overrides and
    the attrcli version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        attrcli_version = version("attrcli")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        attrcli_version = "unknown"
    return {"source": study.source, "sha256": study.text_hash, "text": study.text,
            "overrides": dict(study.overrides), "attrcli": attrcli_version}


def _label(key: ArtifactKey) -> str:
    return f"{key.grids}/{key.setting}/{key.model}/{key.layer}/{key.method}"


def _grids(planned: StudyPlan, data_dir: Path, cache_root: Path, force: bool, progress: Progress | None) -> dict[Path, Path]:
    """Build or import the study's grid files; planned path -> the path written."""
    from attrcli.stages.import_grids import import_grids
    from attrcli.stages.make_grids import make_grids

    study = planned.study
    out: dict[Path, Path] = {}
    for source in planned.grids:
        if source.kind == "file":
            out[source.path] = source.path
        elif source.kind == "import":
            out[source.path], _ = import_grids(source.source, variant=source.variant, model=study.models[0].name,
                                               out_dir=data_dir, force=force)
        else:
            (out[source.path],) = make_grids(**make_grids_args(study, source), out_dir=data_dir, cache_dir=cache_root,
                                             device=planned.device, force=force, progress=progress)
    return out


def _attribute_all(requests: list[AttributeRequest], planned: StudyPlan,
                   progress: Progress | None) -> list[list[AttributeResult]]:
    """Every request's results, in order. Inline on a CPU with several usable cores, the requests
    with keys to compute run in parallel processes (:func:`jobs_for` of them, the cores shared
    out as torch threads), the smoothing requests after the ones they derive from; one such
    request, or one core, runs here as ever. A request whose keys are all up to date loads
    nothing more. A launcher submits them one after another."""
    from attrcli.stages.parallel import pending_jobs
    from attrcli.stages.plan import AttributeResult

    study = planned.study
    if study.launcher.kind != "inline" or getattr(planned.device, "type", "cpu") != "cpu":
        return [_attribute(r, study, progress) for r in requests]
    adapters: dict = {}  # each model loaded once, as attribute loads it
    jobs = [pending_jobs(r, adapters=adapters) for r in requests]
    out: list[list[AttributeResult] | None] = [None] * len(requests)
    workers = jobs_for(sum(bool(todo) for _, todo in jobs))
    for wave in (False, True):  # the smoothing requests read what the others wrote
        chosen = [i for i, r in enumerate(requests) if _derived_only(r) == wave]
        if wave and any(out[i] and any(x.status != "up to date" for x in out[i]) for i in range(len(out))):
            for i in chosen:  # their bases changed: ask again
                jobs[i] = pending_jobs(requests[i], adapters=adapters)
        busy = [i for i in chosen if jobs[i][1]]
        if workers >= 2 and len(busy) >= 2:
            from attrcli.stages.parallel import run_requests

            for i, results in zip(busy, run_requests([requests[i] for i in busy], workers=workers, progress=progress)):
                out[i] = results
        for i in chosen:
            if out[i] is None:
                out[i] = (_attribute(requests[i], study, progress) if jobs[i][1]
                          else [AttributeResult(job.key, job.path, "up to date") for job in jobs[i][0]])
    return out


def jobs_for(pending: int) -> int:
    """Processes for ``pending`` attribution requests: the usable cores (``ATTRCLI_JOBS``
    overrides), at most one per request."""
    import os

    from attrcli.threads import usable_cores

    forced = os.environ.get("ATTRCLI_JOBS", "").strip()
    cores = int(forced) if forced.isdigit() and int(forced) >= 1 else usable_cores()
    return max(1, min(cores, pending))


def _attribute(request: AttributeRequest, study: Study, progress: Progress | None) -> list[AttributeResult]:
    """``request`` in this process (``inline``) or as a job array of the study's launcher."""
    launcher = study.launcher
    if launcher.kind == "inline":
        from attrcli.stages.attribute import run_attribute

        return run_attribute(request, progress=progress)
    from attrcli.stages.launch import LaunchOptions, launch_attribute  # scale-out (submitit)

    options = LaunchOptions(launcher=launcher.kind, partition=launcher.partition, gpus_per_task=launcher.gpus_per_task,
                            time=launcher.time, array_parallelism=launcher.array_parallelism)
    return launch_attribute(request.replace(shards=launcher.shards), options, progress=progress)


def _base_key(key: ArtifactKey, methods: list[str]) -> bool:
    """A key of one of the study's own methods (not a derived one), in any precision."""
    from attrcli.engine.precision import split_key_method

    return split_key_method(key.method)[0] in methods


def _correlations(planned: StudyPlan, scores: list[Path], cache_root: Path, force: bool, bootstrap) -> list[Path]:
    """One Spearman matrix per model and correlated setting over the study's own methods."""
    from attrcli.stages.correlate import correlate
    from attrcli.store import ArtifactKey

    study = planned.study
    out = []
    methods = study.all_methods()
    for setting in [s for s in study.analysis.correlate if s in study.settings]:
        for model in study.model_names:
            model = planned.model_keys[model]
            keys = [p for p in scores if (k := ArtifactKey.from_path(p)).setting == setting and k.model == model
                    and _base_key(k, methods)]
            if len(keys) >= 2:
                out.append(correlate(score_paths=keys, name=f"{planned.label}-{setting}-{model}", cache_root=cache_root,
                                     force=force, bootstrap=bootstrap).path)
    return out


def _comparisons(planned: StudyPlan, scores: list[Path], cache_root: Path, force: bool, bootstrap) -> list[Path]:
    """The study's paired comparisons, one artifact per comparison and model."""
    from attrcli.engine.precision import key_suffix
    from attrcli.stages.compare import compare
    from attrcli.store import ArtifactKey

    study = planned.study
    by_key = {(k.setting, k.model, k.layer, k.method): p for p in scores if (k := ArtifactKey.from_path(p))}
    out = []
    for i, comparison in enumerate(study.analysis.compare):
        for model in ([comparison.model] if comparison.model else study.model_names):
            paths = []
            for key in comparison.keys:
                layer, _, method = key.partition("/")
                found = by_key.get((comparison.setting, planned.model_keys[model], layer,
                                    _canonical(method, planned.cell_size, layer) + key_suffix(planned.precision)))
                if found is None:
                    raise UserError(f"analysis.compare[{i}]: no scores for {key} of {model} in {comparison.setting}")
                paths.append(found)
            out.append(compare(score_paths=paths, name=f"{planned.label}-compare{i}-{comparison.setting}-{planned.model_keys[model]}",
                               cache_root=cache_root, force=force, bootstrap=bootstrap).path)
    return out


def _canonical(method: str, cell_size: int, layer: str) -> str:
    """A method as its artifact key spells it (parameters equal to the layer's preset dropped)."""
    from attrcli.methods import parse_method

    return parse_method(method).canonical_for(cell_size=cell_size, layer=layer).canonical()


# --- the dry run -------------------------------------------------------------------------------

def dry_run(
    *,
    study: Study | str | Path = "digits",
    data_dir: Path = Path("data/grids"),
    cache_root: Path = Path("cache"),
    force: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """What :func:`run_study` would do, as data, computing and writing nothing: the grid files
    (up to date or to build), per model and setting the keys to compute and those up to date with
    a cost estimate in multiply-accumulates, and with a launcher the job arrays it would submit."""
    from attrcli.stages.studyplan import plan_study

    planned = _planned(study, {**overrides, "force": force}, Path(data_dir), Path(cache_root), force)
    return plan_study(planned, cache_root=Path(cache_root), force=force)


def dry_run_text(plan: dict[str, Any]) -> str:
    """The dry run as the terminal shows it."""
    lines = [f"study {plan['study']} ({plan['source']}, sha256 {plan['sha256'][:12]})", "grids:"]
    lines += [f"  {g['variant']}: {g['path']} — {g['status']}" for g in plan["grids"]]
    for job in plan["jobs"]:
        lines.append(f"{job['model']} · {job['setting']}: {len(job['to_compute'])} to compute, "
                     f"{len(job['up_to_date'])} up to date, ≈{job['macs'] / 1e9:.3g} GMAC")
        lines += [f"  + {label}" for label in job["to_compute"]]
    if plan["launcher"]["kind"] != "inline":
        lines.append(f"{plan['launcher']['kind']}: {len(plan['launcher']['arrays'])} job arrays, "
                     f"{sum(a['tasks'] for a in plan['launcher']['arrays'])} tasks")
    total = plan["total"]
    lines.append(f"total: {total['to_compute']} keys to compute, {total['up_to_date']} up to date, "
                 f"≈{total['macs'] / 1e12:.3g} TMAC")
    return "\n".join(lines)


def dry_run_json(plan: dict[str, Any]) -> str:
    return json.dumps(plan, indent=2, default=str)

