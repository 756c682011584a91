"""A study file checked against the registries and turned into the jobs ``run`` executes.

:func:`check_study` finds every problem of a :class:`~attrcli.stages.studyfile.Study` before
anything is written: unknown models, settings, layers and methods, parameters that do not fit a
layer, combinations that do not apply (guided backprop on GELU models, DiPart on a ViT), missing
weight files, dataset folders or grid files. Each is one UserError line naming the file and the
place. The result, a :class:`StudyPlan`, is what ``run`` and ``run --dry-run`` share: the grid
files (as they will be named) and one :class:`~attrcli.stages.plan.AttributeRequest` per model,
setting and group of layers with the same methods, then the derived smoothing requests.

Checks that need a grid file run on a stand-in of the file to come (its shape and name, no
pixels), so a study is checked before its grids are built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attrcli.errors import UserError
from attrcli.stages.studyfile import Study

__all__ = ["GridSource", "StudyPlan", "apply_overrides", "check_study", "make_grids_args", "scaled_kernels", "stand_in_grid",
           "study_path"]

PAPER_KS = (9, 17, 33, 65, 129, 257)  # on 448-pixel grids (supplement D)
GRID_VARIANT = {"gridpg": "distinct", "gridpg-rescaled": "distinct", "difull": "corners", "dipart": "corners"}


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
class GridSource:
    """How one grid file of the study is obtained: built (``dataset``), imported or given."""

    variant: str
    path: Path  # where the file is (or will be)
    kind: str  # "build", "import" or "file"
    source: Path | None = None  # the .npz/.csv of an import
    models: tuple[str, ...] = ()  # the models whose confidence filter built it


@dataclass
class StudyPlan:
    """A checked study: its grid files and attribution requests, in the order ``run`` runs them."""

    study: Study
    device: Any  # torch.device
    precision: str
    label: str  # the report's folder name: the study's name, plus @bf16 for a bf16 study
    cell_size: int
    kernels: tuple[int, ...]
    grids: list[GridSource] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)  # AttributeRequest, base before derived
    model_keys: dict[str, str] = field(default_factory=dict)  # study's model name -> its artifact keys' name
    sanity: list[Any] = field(default_factory=list)  # AttributeRequest of the sanity checks

    def grid_for(self, variant: str, model: str) -> GridSource:
        return next(g for g in self.grids if g.variant == variant and (not g.models or model in g.models))


def apply_overrides(study: Study, **options: Any) -> Study:
    """``study`` with the CLI's options that were given (not None) in place of the file's, each
    recorded in ``study.overrides`` (``{"--device": "cpu"}``)."""
    sections = {"device": "compute", "precision": "compute", "batch_size": "compute", "launcher": "launcher",
                "partition": "launcher", "root": "grids", "format": "analysis"}
    recorded = dict(study.overrides)
    for option, value in options.items():
        if value is None or value is False:
            continue
        recorded[f"--{option.replace('_', '-')}"] = value if isinstance(value, (int, float, bool)) else str(value)
        if option in ("force",):
            continue
        if option == "root":
            value = str(Path(value).expanduser().resolve())  # the CLI's paths are the working folder's
        if option == "weights":
            given = {model: file if file == "random" else str(Path(file).expanduser().resolve())
                     for model, file in dict(value).items()}
            models = [m.name for m in study.models]
            unknown = sorted(set(given) - set(models))
            if unknown:
                raise UserError(f"--weights for {unknown[0]}, which is not in study {study.name}; models: {', '.join(models)}")
            study = dataclasses.replace(study, models=[dataclasses.replace(m, weights=given.get(m.name, m.weights))
                                                       for m in study.models])
            continue
        if option == "count":
            study = dataclasses.replace(study, grids=dataclasses.replace(study.grids, count_distinct=value, count_corners=value))
            continue
        section = sections[option]
        name = {"launcher": "kind"}.get(option, option)
        part = getattr(study, section)
        check = next(f for f in dataclasses.fields(part) if f.name == name).metadata.get("check")
        problem = check(value) if check is not None else None
        if problem:
            raise UserError(f"--{option.replace('_', '-')}: {problem}")
        study = dataclasses.replace(study, **{section: dataclasses.replace(part, **{name: value})})
    return dataclasses.replace(study, overrides=recorded)


class _Where:
    """Prefixes a UserError with the file and the place (or the CLI option that overrode it)."""

    def __init__(self, study: Study) -> None:
        self.file = Path(study.source).name or "study"
        self.study = study

    @contextmanager
    def __call__(self, place: str, option: str | None = None) -> Iterator[None]:
        shown = option if option and option in self.study.overrides else f"{self.file}: {place}"
        try:
            yield
        except UserError as exc:
            if str(exc).startswith(self.file + ":"):  # placed already
                raise
            raise UserError(f"{shown}: {exc}") from None

    def fail(self, place: str, message: str) -> None:
        raise UserError(f"{self.file}: {place}: {message}")


def make_grids_args(study: Study, source: GridSource) -> dict[str, Any]:
    """The :func:`~attrcli.stages.make_grids.make_grids` arguments that build ``source`` (the run
    and the dry run call it alike)."""
    g = study.grids
    weights = {m.name: m.weights for m in study.models if m.name in source.models and m.weights is not None}
    return {"dataset": g.dataset, "root": study_path(study, g.root) if g.root is not None else None,
            "variant": source.variant, "n": g.n,
            "count": g.count_distinct if source.variant == "distinct" else g.count_corners,
            "cell_size": g.cell_size, "min_conf": g.min_conf, "models": list(source.models), "seed": g.seed,
            "weights": weights or None}


def study_path(study: Study, value: str) -> Path:
    """A path of the study file: relative to the file's folder (a preset's: to the working folder)."""
    path = Path(value).expanduser()
    if path.is_absolute() or not study.source:
        return path
    return Path(study.source).parent / path


def stand_in_grid(path: Path, *, n: int, cell_size: int, variant: str, count: int):
    """A grid file to come, as the checks see it: its name and shape, no pixels."""
    from attrcli.data.gridfile import GridFile

    size = n * cell_size
    return GridFile(path=path, name=path.stem, images=np.broadcast_to(np.float32(0), (count, 3, size, size)),
                    labels=np.zeros((count, n * n), dtype=np.int64), n=n, cell_size=cell_size, variant=variant,
                    num_classes=None, hash="")


def _adapters(study: Study, where: _Where) -> tuple[dict, list]:
    """Each model's adapter for the checks (weightless where it can be), and the models with
    their weight files resolved against the study file's folder and checked."""
    from attrcli.models import create_model
    from attrcli.models.registry import check_weights
    from attrcli.stages.plan import weightless

    out, models = {}, []
    for i, entry in enumerate(study.models):
        if entry.name in out:
            where.fail(f"models[{i}]", f"{entry.name!r} is listed twice")
        with where(f"models[{i}]"):
            adapter = weightless(entry.name)
            if adapter is None:
                adapter = create_model(entry.name, weights="random")
                adapter.weights_hash = ""
        if entry.weights is not None and entry.weights != "random":
            weights = study_path(study, entry.weights)
            with where(f"models[{i}].weights", "--weights"):
                check_weights(entry.name, weights)
            entry = dataclasses.replace(entry, weights=str(weights))
        models.append(entry)
        out[entry.name] = adapter
    return out, models


def _grid_sources(study: Study, where: _Where, variants: list[str], adapters: dict, cell_size: int,
                  data_dir: Path) -> list[GridSource]:
    from attrcli.data.datasets import DATASETS
    from attrcli.data.gridfile import load_grid_file
    from attrcli.data.grids import grid_name
    from attrcli.store.keys import GridFileKey

    g = study.grids
    out = []
    spec = None
    for variant in variants:
        given = getattr(g, variant)
        if given is None:
            if spec is None:
                with where("grids.dataset"):
                    spec = DATASETS.get(g.dataset)
                root = study_path(study, g.root) if g.root is not None else None
                if root is not None and not root.is_dir():
                    where.fail("grids.root", f"no such folder {str(root)!r}")
                if spec.needs_root and root is None:
                    where.fail("grids.root", f"the {g.dataset} dataset needs its folder (grids.root or --root)")
                if not spec.needs_root and root is not None:
                    where.fail("grids.root", f"{g.dataset} is embedded and takes no root")
            count = g.count_distinct if variant == "distinct" else g.count_corners
            count = count if count is not None else spec.counts.get(variant)
            groups = [[m] for m in adapters] if g.per_model else [list(adapters)]
            for group in groups:
                name = grid_name(spec=spec, root=root, variant=variant, n=g.n, count=count,
                                 min_conf=g.min_conf, seed=g.seed, models=group)
                out.append(GridSource(variant, GridFileKey(name).path(data_dir), "build", models=tuple(group)))
            continue
        path = study_path(study, given)
        place = f"grids.{variant}"
        if not path.is_file():
            where.fail(place, f"no such file {str(path)!r}")
        suffix = path.suffix.lower()
        if suffix in (".npz", ".csv"):
            from attrcli.stages.import_grids import _key

            with where(place):
                out.append(GridSource(variant, _key(None, path).path(data_dir), "import", source=path))
        elif suffix == ".h5":
            with where(place):
                grid_file = load_grid_file(path)
            if grid_file.variant != variant:
                where.fail(place, f"{path.name} holds {grid_file.variant} grids, not {variant} grids")
            if grid_file.n != g.n:
                where.fail(place, f"{path.name} holds {grid_file.n}×{grid_file.n} grids but grids.n = {g.n}")
            if grid_file.cell_size != cell_size:
                where.fail(place, f"{path.name} has {grid_file.cell_size}-pixel cells, the models {cell_size}")
            out.append(GridSource(variant, path, "file"))
        else:
            where.fail(place, f"a grid file (.h5) or a source to import (.npz, .csv), not {suffix or 'no suffix'!r}")
    return out


def _check_names(where: _Where, place: str, values: list[str], valid: list[str] | tuple[str, ...]) -> None:
    for i, value in enumerate(values):
        if value not in valid:
            where.fail(f"{place}[{i}]", f"unknown setting {value!r} (valid: {', '.join(valid)})")


def _methods(where: _Where, place: str, methods: list[str]) -> list:
    from attrcli.methods import parse_method

    specs = []
    for i, text in enumerate(methods):
        if text == "all":
            specs.append("all")
            continue
        with where(f"{place}[{i}]"):
            specs.append(parse_method(text))
    return specs


def check_study(study: Study, *, data_dir: Path = Path("data/grids"), cache_root: Path = Path("cache"),
                force: bool = False) -> StudyPlan:
    """Every check of ``study`` against the registries, then its plan; see the module docstring."""
    from attrcli.devices import resolve_device
    from attrcli.engine.precision import check_device, key_suffix
    from attrcli.settings import SETTINGS, create_setting
    from attrcli.stages.plan import AttributeRequest, plan

    where = _Where(study)
    with where("compute.device", "--device"):
        device = resolve_device(study.compute.device)
    with where("compute.precision", "--precision"):
        precision = check_device(study.compute.precision, device)
    settings = SETTINGS.names()
    _check_names(where, "settings", study.settings, settings)
    for place, values in (("smoothing.settings", study.smoothing.settings),
                          ("smoothing.smoothgrad_settings", study.smoothing.smoothgrad_settings),
                          ("analysis.correlate", study.analysis.correlate)):
        _check_names(where, place, values, settings)
    for i, k in enumerate(study.smoothing.kernels or ()):
        if k < 3 or k % 2 == 0:
            where.fail(f"smoothing.kernels[{i}]", f"must be an odd integer >= 3, got {k}")
    adapters, models = _adapters(study, where)
    study = dataclasses.replace(study, models=models)
    cell_sizes = {a.cell_size for a in adapters.values()}
    cell_size = study.grids.cell_size or min(cell_sizes)
    if not study.grids.per_model and len(cell_sizes) > 1:
        where.fail("models", "the models need different cell sizes and cannot share grids; set grids.per_model = true")
    for name, adapter in adapters.items():
        if study.grids.cell_size is not None and adapter.cell_size != study.grids.cell_size:
            where.fail("grids.cell_size", f"{name} needs {adapter.cell_size}-pixel cells, not {study.grids.cell_size}")

    n = study.grids.n
    for i, setting in enumerate(study.settings):
        for name, adapter in adapters.items():
            with where(f"settings[{i}]"):
                create_setting(setting, adapter, n).check_geometry()
    layers_of = {}
    for name, adapter in adapters.items():
        resolved = []
        for i, layer in enumerate(study.layers):
            with where(f"layers[{i}]"):
                resolved += adapter.resolve_layers(layer)
        layers_of[name] = list(dict.fromkeys(resolved))
    known_layers = set(study.layers) | {layer for names in layers_of.values() for layer in names}
    _methods(where, "methods", study.methods)
    for j, entry in enumerate(study.methods_at):
        _methods(where, f"methods_at[{j}].methods", entry.methods)
        _check_names(where, f"methods_at[{j}].settings", entry.settings, study.settings)
        for i, layer in enumerate(entry.layers):
            if layer not in known_layers:
                where.fail(f"methods_at[{j}].layers[{i}]", f"{layer!r} is not a layer of the study (layers: {', '.join(sorted(known_layers))})")

    variants = list(dict.fromkeys(GRID_VARIANT.get(s, "distinct") for s in study.settings))
    grids = _grid_sources(study, where, [v for v in ("distinct", "corners") if v in variants], adapters, cell_size,
                          Path(data_dir))
    kernels = tuple(study.smoothing.kernels) if study.smoothing.kernels else scaled_kernels(n * cell_size)
    result = StudyPlan(study, device, precision, study.name + key_suffix(precision), cell_size, kernels, grids,
                       model_keys={name: adapter.name for name, adapter in adapters.items()})
    heads = None if study.heads == "corners" else study.heads
    counts = {"distinct": study.grids.count_distinct or 4, "corners": study.grids.count_corners or 4}
    for name, adapter in adapters.items():
        entry = next(m for m in study.models if m.name == name)
        common = {"model": name, "device": device, "batch_size": study.compute.batch_size, "force": force,
                  "cache_root": Path(cache_root), "weights": entry.weights, "precision": precision,
                  "seed": study.seed, "heads": heads}
        for s, setting in enumerate(study.settings):
            source = result.grid_for(GRID_VARIANT.get(setting, "distinct"), name)
            stand_in = stand_in_grid(source.path, n=n, cell_size=adapter.cell_size, variant=source.variant,
                                 count=counts[source.variant])
            groups: dict[tuple[str, ...], list[str]] = {}
            for layer in layers_of[name]:
                groups.setdefault(tuple(study.methods_for(setting, layer)), []).append(layer)
            for methods, layers in groups.items():
                request = AttributeRequest(grids=source.path, setting=setting, layers=layers, methods=list(methods), **common)
                _check_request(where, study, request, adapter, stand_in, setting, layers)
                result.requests.append(request)
            derived = _derived(study, setting, kernels, layers_of[name])
            if derived:
                request = AttributeRequest(grids=source.path, setting=setting, layers=["input"], methods=derived, **common)
                with where("smoothing"):
                    plan(request, adapter=adapter, grid_file=stand_in)
                result.requests.append(request)
    _check_comparisons(study, where, result)
    _check_sanity(study, where, result, adapters, layers_of, known_layers, counts)
    return result


def _check_sanity(study: Study, where: _Where, result: StudyPlan, adapters: dict, layers_of: dict,
                  known_layers: set, counts: dict) -> None:
    """The sanity checks' requests: per model and checked setting, its layers grouped by methods."""
    from attrcli.stages.plan import AttributeRequest

    san = study.sanity
    if not san.modes:
        return
    _check_names(where, "sanity.settings", san.settings, study.settings)
    for i, layer in enumerate(san.layers):
        if layer not in known_layers:
            where.fail(f"sanity.layers[{i}]", f"{layer!r} is not a layer of the study (layers: {', '.join(sorted(known_layers))})")
    _methods(where, "sanity.methods", san.methods)
    template = {r.model: r for r in result.requests}
    for name, adapter in adapters.items():
        for setting in san.settings:
            source = result.grid_for(GRID_VARIANT.get(setting, "distinct"), name)
            stand_in = stand_in_grid(source.path, n=study.grids.n, cell_size=adapter.cell_size, variant=source.variant,
                                 count=counts[source.variant])
            layers = [layer for layer in layers_of[name] if not san.layers or layer in san.layers]
            groups: dict[tuple[str, ...], list[str]] = {}
            for layer in layers:
                groups.setdefault(tuple(san.methods or study.methods_for(setting, layer)), []).append(layer)
            for methods, chosen in groups.items():
                request = template[name].replace(grids=source.path, setting=setting, layers=chosen, methods=list(methods))
                try:
                    _check_request(where, study, request, adapter, stand_in, setting, chosen)
                except UserError as exc:
                    raise UserError(f"{where.file}: sanity: {str(exc).partition(': ')[2]}") from None
                result.sanity.append(request)


def _derived(study: Study, setting: str, kernels: tuple[int, ...], layers: list[str]) -> list[str]:
    """The smoothing sweep's and SmoothGrad's methods at ``setting`` (at the input layer)."""
    if "input" not in layers:
        return []
    out = []
    if setting in study.smoothing.settings:
        out += [f"s-{base}:k={k}" for base in study.smoothing.bases for k in kernels]
    if setting in study.smoothing.smoothgrad_settings and setting in study.smoothing.settings:
        out += list(study.smoothing.smoothgrad)
    return out


def _check_request(where: _Where, study: Study, request, adapter, stand_in, setting: str, layers: list[str]) -> None:
    """Plan ``request`` on the stand-in grid file; a failing method is named by its place."""
    from attrcli.stages.plan import plan

    try:
        plan(request, adapter=adapter, grid_file=stand_in)
    except UserError as exc:
        methods = list(request.methods)
        for i, text in enumerate(methods):
            if text == "all":
                continue
            try:
                plan(request.replace(methods=[text]), adapter=adapter, grid_file=stand_in)
            except UserError:
                place = _method_place(study, setting, layers, text, i)
                raise UserError(f"{where.file}: {place}: {exc}") from None
        raise UserError(f"{where.file}: settings: {exc}") from None


def _method_place(study: Study, setting: str, layers: list[str], text: str, index: int) -> str:
    for j, entry in reversed(list(enumerate(study.methods_at))):
        if (not entry.settings or setting in entry.settings) and (not entry.layers or set(layers) & set(entry.layers)):
            if text in entry.methods:
                return f"methods_at[{j}].methods[{entry.methods.index(text)}]"
    return f"methods[{study.methods.index(text) if text in study.methods else index}]"


def _check_comparisons(study: Study, where: _Where, result: StudyPlan) -> None:
    """Each comparison's keys are keys the study computes."""
    from attrcli.methods import parse_method

    names = [m.name for m in study.models]
    for i, comparison in enumerate(study.analysis.compare):
        place = f"analysis.compare[{i}]"
        if comparison.setting not in study.settings:
            where.fail(f"{place}.setting", f"{comparison.setting!r} is not a setting of the study ({', '.join(study.settings)})")
        if comparison.model is not None and comparison.model not in names:
            where.fail(f"{place}.model", f"{comparison.model!r} is not a model of the study ({', '.join(names)})")
        for model in ([comparison.model] if comparison.model else names):
            offered = set()
            for request in result.requests:
                if request.model == model and request.setting == comparison.setting:
                    for layer in request.layers:
                        offered |= {f"{layer}/{m}" for m in request.methods}
            for j, key in enumerate(comparison.keys):
                layer, sep, method = key.partition("/")
                if not sep:
                    where.fail(f"{place}.keys[{j}]", f"write a key as layer/method, e.g. input/grad, got {key!r}")
                with where(f"{place}.keys[{j}]"):
                    parse_method(method)
                if key not in offered:
                    where.fail(f"{place}.keys[{j}]", f"{key} is not a key the study computes for {model} in "
                               f"{comparison.setting} (e.g. {', '.join(sorted(offered)[:4])})")
