"""``run``: the whole study end to end, every stage cached (SPEC §4, issue "plot and run").

Make both grid files, attribute every method at the study's layers in all three settings for
every model, derive the smoothing sweep and SmoothGrad, score, AggAtt, correlate, draw the
figures and write ``reports/<study>/summary.md``. Each stage skips what is up to date, so a
second run only redraws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from attrcli.errors import UserError
from attrcli.names import LAYERS, PAPER_METHODS, PAPER_SETTINGS
from attrcli.progress import Log, Progress
from attrcli.registry import Registry

if TYPE_CHECKING:
    from attrcli.stages.plan import AttributeRequest, AttributeResult
    from attrcli.store import ArtifactKey

__all__ = ["PAPER_KS", "PAPER_METHODS", "PRESETS", "StudyPreset", "StudyResult", "run_study", "scaled_kernels"]

PAPER_KS = (9, 17, 33, 65, 129, 257)  # on 448-pixel grids (supplement D)


def scaled_kernels(image_size: int, ks: tuple[int, ...] = PAPER_KS) -> tuple[int, ...]:
    """The paper's kernel sizes scaled from 448-pixel grids to ``image_size``: odd, ≥ 3, unique."""
    out: list[int] = []
    for k in ks:
        scaled = max(3, int(round(k * image_size / 448)))
        scaled += 1 - scaled % 2
        if scaled not in out:
            out.append(scaled)
    return tuple(out)


@dataclass(frozen=True)
class StudyPreset:
    """What a study runs."""

    name: str
    dataset: str
    models: tuple[str, ...]
    cell_size: int
    n: int = 2
    settings: tuple[str, ...] = PAPER_SETTINGS
    layers: tuple[str, ...] = LAYERS
    methods: tuple[str, ...] = PAPER_METHODS
    smoothing_settings: tuple[str, ...] = ("gridpg", "difull")  # where the sweep runs (Fig. 26)
    smoothgrad: tuple[str, ...] = ("smoothgrad-intgrad", "smoothgrad-ixg")
    smoothgrad_settings: tuple[str, ...] = ("gridpg", "difull")
    count_distinct: int | None = None  # None: the dataset's default
    count_corners: int | None = None
    batch_size: int = 32

    @property
    def kernels(self) -> tuple[int, ...]:
        return scaled_kernels(self.n * self.cell_size)


PRESETS: Registry[StudyPreset] = Registry("study preset")
# 32 grids per variant (128 GridPG and 64 DiFull/DiPart attributions per key) keep the cold run on
# a 2-core CPU within minutes; SmoothGrad (15 noisy IntGrad passes) runs on GridPG only.
PRESETS.register("digits")(StudyPreset(
    name="digits", dataset="digits", models=("digits-vgg11", "digits-resnet18"), cell_size=32,
    count_distinct=32, count_corners=32, batch_size=64, smoothgrad_settings=("gridpg",),
))
PRESETS.register("paper-imagenet")(StudyPreset(
    name="paper-imagenet", dataset="imagenet", models=("vgg11", "resnet18"), cell_size=224,
    count_distinct=500, count_corners=1000, batch_size=16,
))


@dataclass
class StudyResult:
    """Where the study's outputs are."""

    report_dir: Path
    summary: Path
    figures: list[Path] = field(default_factory=list)
    attributions: list[Path] = field(default_factory=list)
    computed: int = 0  # artifacts computed (not found up to date)


def run_study(
    *,
    preset: str = "digits",
    root: Path | None = None,
    device: str = "auto",
    weights: dict[str, str] | None = None,
    count: int | None = None,
    batch_size: int | None = None,
    data_dir: Path = Path("data/grids"),
    cache_root: Path = Path("cache"),
    reports_dir: Path = Path("reports"),
    fmt: str = "png",
    force: bool = False,
    launcher: str = "inline",
    partition: str | None = None,
    precision: str = "fp32",
    progress: Progress | None = None,
    log: Log | None = None,
) -> StudyResult:
    """Run the preset's whole study; see the module docstring. ``launcher`` ``local`` or
    ``slurm`` (with ``partition``) runs the attributions as submitit job arrays. ``precision``
    (:mod:`attrcli.engine.precision`) computes every attribution in it, under keys of its own
    (``gradcam@bf16``); scores, AggAtt, correlations and the report follow those keys."""
    from attrcli.devices import resolve_device
    from attrcli.engine.precision import check_device, key_suffix
    from attrcli.models.registry import check_weights
    from attrcli.plots.common import check_format
    from attrcli.stages.aggatt import aggatt
    from attrcli.stages.correlate import correlate
    from attrcli.stages.make_grids import make_grids
    from attrcli.stages.plan import AttributeRequest
    from attrcli.stages.score import score
    from attrcli.store import ArtifactKey
    from attrcli.store.files import check_folder, output_target

    # Everything is checked before the first file is written (grid files come first).
    study = PRESETS.get(preset)
    check_format(fmt)
    say = log or (lambda message: None)
    dev = resolve_device(device)
    precision = check_device(precision, dev)
    weights = weights or {}
    unknown = sorted(set(weights) - set(study.models))
    if unknown:
        raise UserError(f"--weights for {unknown[0]}, which is not in study {study.name}; models: {', '.join(study.models)}")
    if launcher not in ("inline", "local", "slurm"):
        raise UserError(f"unknown launcher {launcher!r}; valid: inline, local, slurm")
    for name, value in (("--count", count), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    for option, folder in (("--data-dir", data_dir), ("--cache-dir", cache_root), ("--reports-dir", reports_dir)):
        check_folder(folder, what=option)
    for model, file in weights.items():
        check_weights(model, file)
    batch = batch_size if batch_size is not None else study.batch_size
    label = study.name + key_suffix(precision)  # a bf16 study reports apart: reports/digits@bf16
    report_dir = Path(reports_dir) / label
    result = StudyResult(report_dir=report_dir, summary=report_dir / "summary.md")
    output_target(result.summary, what="summary")

    say("grids")
    grid_files = {}
    for variant, default in (("distinct", study.count_distinct), ("corners", study.count_corners)):
        (grid_files[variant],) = make_grids(
            dataset=study.dataset, root=root, variant=variant, n=study.n, count=count if count is not None else default,
            models=list(study.models), out_dir=data_dir, cache_dir=cache_root, device=dev,
            force=force, progress=progress,
        )

    requests = []
    for model in study.models:
        common = {"model": model, "device": dev, "batch_size": batch, "force": force, "cache_root": cache_root,
                  "weights": weights.get(model), "precision": precision}
        for setting in study.settings:
            grids = grid_files["corners" if setting != "gridpg" else "distinct"]
            requests.append(AttributeRequest(grids=grids, setting=setting, layers=list(study.layers),
                                             methods=list(study.methods), **common))
            if setting in study.smoothing_settings:
                derived = [f"s-{base}:k={k}" for base in ("intgrad", "ixg") for k in study.kernels]
                if setting in study.smoothgrad_settings:
                    derived += list(study.smoothgrad)
                requests.append(AttributeRequest(grids=grids, setting=setting, layers=["input"], methods=derived,
                                                 **common))
    say(f"attribute: {len(requests)} jobs")
    attributions = []
    for request in requests:
        results = _attribute(request, launcher, partition, progress)
        attributions += [r.path for r in results]
        result.computed += sum(r.status != "up to date" for r in results)
    result.attributions = attributions

    say("score")
    scores = [r.path for r in score(attribution_paths=attributions, cache_root=cache_root, force=force, device=dev, progress=progress)]
    say("aggatt")
    aggatts = [r.path for r in aggatt(paths=attributions, cache_root=cache_root, force=force, device=dev, progress=progress)]
    say("correlate")
    correlations = []
    for model in study.models:
        keys = [p for p in scores if _is_paper_key(ArtifactKey.from_path(p), model, study.methods)]
        correlations.append(correlate(score_paths=keys, name=f"{label}-gridpg-{model}", cache_root=cache_root, force=force).path)

    say("figures")
    from attrcli.stages.report import draw_figures, write_summary

    result.figures = draw_figures(
        study=study, report_dir=report_dir, fmt=fmt, scores=scores, aggatts=aggatts,
        correlations=correlations, grid_files=grid_files,
    )
    write_summary(study=study, path=result.summary, scores=scores, correlations=correlations, figures=result.figures,
                  attributions=attributions)
    return result


def _is_paper_key(key: ArtifactKey, model: str, methods: tuple[str, ...]) -> bool:
    """A GridPG key of ``model`` whose method is one of the study's (the correlations' keys), in
    any precision (a study computes in one)."""
    from attrcli.engine.precision import split_key_method

    return key.setting == "gridpg" and key.model == model and split_key_method(key.method)[0] in methods


def _attribute(
    request: AttributeRequest, launcher: str, partition: str | None, progress: Progress | None,
) -> list[AttributeResult]:
    """``request`` in this process (``inline``) or as a job array of ``launcher``."""
    if launcher == "inline":
        from attrcli.stages.attribute import run_attribute

        return run_attribute(request, progress=progress)
    from attrcli.stages.launch import (  # scale-out (submitit)
        LaunchOptions,
        launch_attribute,
    )

    return launch_attribute(request, LaunchOptions(launcher=launcher, partition=partition), progress=progress)
