"""Study files: a whole study as one TOML file (``attrcli run STUDY.toml``).

This module reads a file into a :class:`Study` and checks its *form*: every key known, every
value of the right type and range, each problem one :class:`~attrcli.errors.UserError` line that
names the file and the place (``mystudy.toml: grids.n: must be an integer >= 2, got "3x3"``).
Whether the models, methods, layers and settings it names exist and fit together is checked
against the registries by :mod:`attrcli.stages.studycheck`. The shipped presets are study files
in ``attrcli/stages/presets/``; :func:`render` prints a study as a commented file
(``attrcli run --show-preset digits``). Array indices in places count from 0.

Needs no torch: a study is read and its form checked before anything heavy is imported.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

from attrcli.errors import UserError
from attrcli.names import FIGURE_FORMATS, INTERVAL_METHODS, LAYERS, PAPER_METHODS, PAPER_SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the backport on Python 3.10
    import tomli as tomllib

__all__ = [
    "FIGURES", "LAUNCHERS", "Analysis", "Comparison", "Compute", "Grids", "Launcher", "MethodsAt",
    "ModelEntry", "Sanity", "Smoothing", "Study", "load_study", "preset_names", "preset_text", "read_study",
    "render",
]

#: The figures a report can hold (SPEC §4), in the order the report draws them.
FIGURES = ("boxes", "aggatt", "examples", "correlation", "smoothing")
#: Where the attribution jobs run.
LAUNCHERS = ("inline", "local", "slurm")
PRECISIONS = ("fp32", "tf32", "bf16")  # attrcli.engine.precision.PRECISIONS, without torch


def doc(text: str, default: Any = dataclasses.MISSING, *, check: Any = None, factory: Any = None,
        example: Any = None) -> Any:
    """A field with its one-line comment (shown by :func:`render`), an optional check (a
    function of the value returning an error text such as ``"must be >= 2"``, or None) and, for
    fields unset by default, an example value :func:`render` shows commented out."""
    meta = {"doc": text, "check": check, "example": example}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _at_least(least: int | float) -> Any:
    return lambda v: None if v >= least else f"must be {'an integer' if isinstance(least, int) else 'a number'} >= {least}"


def _one_of(valid: tuple[str, ...]) -> Any:
    return lambda v: None if v in valid else f"unknown value {v!r} (valid: {', '.join(valid)})"


def _each_one_of(valid: tuple[str, ...]) -> Any:
    def check(values: list[str]) -> str | None:
        for i, v in enumerate(values):
            if v not in valid:
                return f"[{i}]: unknown value {v!r} (valid: {', '.join(valid)})"
        return None
    return check


def _nonempty(values: list) -> str | None:
    return None if values else "must not be empty"


def _unique(values: list) -> str | None:
    if not values:
        return "must not be empty"
    seen = set()
    for i, v in enumerate(values):
        marker = repr(v)
        if marker in seen:
            return f"[{i}]: {v!r} is listed twice"
        seen.add(marker)
    return None


def _heads(value: str | list[int]) -> str | None:
    if isinstance(value, str):
        return None if value in ("corners", "all") else f"must be \"corners\", \"all\" or a list of cell indices, got {value!r}"
    if not value or len(set(value)) != len(value) or min(value) < 0:
        return "must be distinct cell indices >= 0"
    return None


def _fraction(value: float) -> str | None:
    return None if 0.0 < value < 1.0 else f"must be a number between 0 and 1, got {value}"


@dataclass(frozen=True)
class ModelEntry:
    """A model of the study and its weights."""

    name: str = doc("registered model (attrcli models) or module:factory")
    weights: str | None = doc("state dict file (.pt/.pth/.safetensors) or \"random\"; default: the model's own", None, example="weights.pth")


@dataclass(frozen=True)
class MethodsAt:
    """Methods for some settings and layers instead of the study's list (later entries win)."""

    methods: list[str] = doc("the methods there", factory=list, check=_unique)
    settings: list[str] = doc("where it applies (default: every setting)", factory=list)
    layers: list[str] = doc("where it applies (default: every layer)", factory=list)


@dataclass(frozen=True)
class Grids:
    """Where the grids come from: built from a dataset as make-grids builds them, or given."""

    dataset: str = doc("dataset the grids are built from: digits, cifar10, imagenet or folder", "digits")
    root: str | None = doc("dataset folder (imagenet: the validation folder; digits needs none)", None, example="/path/to/imagenet/val")
    n: int = doc("cells per side of a grid", 2, check=_at_least(2))
    cell_size: int | None = doc("pixels per cell (default: the models' own)", None, check=_at_least(1), example=224)
    count_distinct: int | None = doc("GridPG grids (default: the dataset's)", None, check=_at_least(1), example=100)
    count_corners: int | None = doc("DiFull/DiPart grids (default: the dataset's)", None, check=_at_least(1), example=100)
    min_conf: float = doc("softmax confidence an image needs to enter a grid", 0.99, check=_fraction)
    per_model: bool = doc("filter images per model instead of jointly (one grid file per model)", False)
    seed: int = doc("seed of the grid construction", 0, check=_at_least(0))
    distinct: str | None = doc("instead: GridPG grids from this grid file (.h5) or source to import (.npz/.csv)", None, example="data/grids/mine-distinct.h5")
    corners: str | None = doc("instead: DiFull/DiPart grids from this grid file (.h5) or source (.npz/.csv)", None, example="mine-corners.npz")


@dataclass(frozen=True)
class Smoothing:
    """The smoothing sweep (S-IntGrad, S-IxG) and SmoothGrad at the input layer (settings = [] for none)."""

    kernels: list[int] | None = doc("Gaussian kernel sizes K (default: the paper's, scaled from 448-pixel grids)", None, example=[3, 5, 9])
    bases: list[str] = doc("methods whose input maps are smoothed: intgrad, ixg", factory=lambda: ["intgrad", "ixg"],
                           check=_each_one_of(("intgrad", "ixg")))
    settings: list[str] = doc("settings the sweep runs in", factory=lambda: ["gridpg", "difull"])
    smoothgrad: list[str] = doc("SmoothGrad variants", factory=lambda: ["smoothgrad-intgrad", "smoothgrad-ixg"],
                                check=_each_one_of(("smoothgrad-intgrad", "smoothgrad-ixg")))
    smoothgrad_settings: list[str] = doc("settings SmoothGrad runs in", factory=lambda: ["gridpg", "difull"])


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of keys over the same attributions (Wilcoxon, Holm-corrected)."""

    keys: list[str] = doc("layer/method keys, at least two (e.g. input/grad, final/gradcam)", factory=list, check=_unique)
    setting: str = doc("setting of the keys", "gridpg")
    model: str | None = doc("model of the keys (default: every model)", None, example="vgg11")


@dataclass(frozen=True)
class Analysis:
    """What the report computes and shows."""

    correlate: list[str] = doc("settings whose keys are correlated per model (Spearman)", factory=lambda: ["gridpg"])
    figures: list[str] = doc(f"figures to draw: {', '.join(FIGURES)}", factory=lambda: list(FIGURES),
                             check=_each_one_of(FIGURES))
    format: str = doc(f"figure format: {', '.join(FIGURE_FORMATS)}", "png", check=_one_of(FIGURE_FORMATS))
    confidence: float = doc("confidence level of the bootstrap intervals", 0.95, check=_fraction)
    resamples: int = doc("bootstrap resamples of the grid images", 2000, check=_at_least(100))
    interval: str = doc(f"bootstrap interval: {', '.join(INTERVAL_METHODS)}", "percentile", check=_one_of(INTERVAL_METHODS))
    interval_seed: int = doc("seed of the bootstrap resampling", 0, check=_at_least(0))
    compare: list[Comparison] = doc("paired comparisons ([[analysis.compare]] tables)", factory=list)


@dataclass(frozen=True)
class Sanity:
    """Model-parameter randomisation checks (attrcli sanity) of some of the study's keys."""

    modes: list[str] = doc("cascading and/or independent (empty: no sanity check)", factory=list,
                           check=_each_one_of(("cascading", "independent")))
    settings: list[str] = doc("settings checked", factory=lambda: ["gridpg"])
    layers: list[str] = doc("layers checked (default: the study's)", factory=list)
    methods: list[str] = doc("methods checked (default: the study's at each layer)", factory=list)
    region: str = doc("pixels compared: grid (the whole map) or cell (each target's own cell)", "grid",
                      check=_one_of(("grid", "cell")))


@dataclass(frozen=True)
class Compute:
    """Where and how the attributions are computed."""

    device: str = doc("auto, cpu, cuda or cuda:N", "auto")
    precision: str = doc("fp32 (exact), tf32 (CUDA) or bf16", "fp32", check=_one_of(PRECISIONS))
    batch_size: int = doc("grid images per forward pass", 32, check=_at_least(1))


@dataclass(frozen=True)
class Launcher:
    """Where the attribution jobs run: in this process, or as submitit job arrays."""

    kind: str = doc("inline, local or slurm", "inline", check=_one_of(LAUNCHERS))
    partition: str | None = doc("SLURM partition (slurm only)", None, example="gpu")
    gpus_per_task: int = doc("GPUs per task", 0, check=_at_least(0))
    time: int = doc("time limit per task, minutes", 60, check=_at_least(1))
    shards: int = doc("shards per key (grid images split across tasks)", 1, check=_at_least(1))
    array_parallelism: int = doc("tasks of an array running at once", 32, check=_at_least(1))


@dataclass(frozen=True)
class Study:
    """A whole study: what ``attrcli run`` computes and reports."""

    name: str = doc("the study's name (the report goes to reports/<name>/)")
    models: list[ModelEntry] = doc("models: names, or {name = ..., weights = ...} tables", factory=list)
    description: str = doc("one paragraph for the report", "")
    settings: list[str] = doc("settings: gridpg, difull, dipart, gridpg-rescaled", factory=lambda: list(PAPER_SETTINGS), check=_unique)
    layers: list[str] = doc("layers: input, middle, final, all, or block paths", factory=lambda: list(LAYERS), check=_unique)
    methods: list[str] = doc("methods with parameters (name:key=value,...), plugins as module:Class",
                             factory=lambda: list(PAPER_METHODS), check=_unique)
    heads: str | list[int] = doc("DiFull/DiPart heads: \"corners\", \"all\" or cell indices", "corners", check=_heads)
    seed: int = doc("seed of the sampling methods (RISE, SmoothGrad, LIME)", 0, check=_at_least(0))
    methods_at: list[MethodsAt] = doc("other methods at some settings or layers ([[methods_at]] tables)", factory=list)
    grids: Grids = doc("[grids]", factory=Grids)
    smoothing: Smoothing = doc("[smoothing]", factory=Smoothing)
    analysis: Analysis = doc("[analysis]", factory=Analysis)
    sanity: Sanity = doc("[sanity]", factory=Sanity)
    compute: Compute = doc("[compute]", factory=Compute)
    launcher: Launcher = doc("[launcher]", factory=Launcher)
    # Not part of the file: where it was read from, its text and the CLI's overrides.
    source: str = field(default="", compare=False, metadata={"internal": True})
    text: str = field(default="", compare=False, metadata={"internal": True})
    overrides: dict = field(default_factory=dict, compare=False, metadata={"internal": True})

    # The names the report and the figures read (as the earlier presets had them).
    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @property
    def n(self) -> int:
        return self.grids.n

    @property
    def smoothing_settings(self) -> tuple[str, ...]:
        return tuple(s for s in self.smoothing.settings if s in self.settings)

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def methods_for(self, setting: str, layer: str) -> list[str]:
        """The methods at ``setting`` and ``layer``: the last matching ``methods_at`` entry's,
        else the study's."""
        chosen = self.methods
        for entry in self.methods_at:
            if (not entry.settings or setting in entry.settings) and (not entry.layers or layer in entry.layers):
                chosen = entry.methods
        return list(chosen)

    def all_methods(self) -> list[str]:
        """Every method the study names anywhere, in order of first mention."""
        out = list(self.methods)
        for entry in self.methods_at:
            out += entry.methods
        return list(dict.fromkeys(out))


# --- reading -----------------------------------------------------------------------------------

def _type_name(kind: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if kind in names:
        return names[kind]
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return f"a list of {_type_name(item).split(' ', 1)[1]}s" if item in names else "a list of tables"
    if dataclasses.is_dataclass(kind):
        return "a table"
    return "a value"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _is_optional(kind: Any) -> tuple[bool, Any]:
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) < len(typing.get_args(kind)):
            return True, args[0] if len(args) == 1 else Union[tuple(args)]
    return False, kind


def _convert(kind: Any, value: Any, place: str, file: str) -> Any:
    """``value`` as ``kind``, or a UserError naming ``place``."""
    optional, kind = _is_optional(kind)
    if typing.get_origin(kind) in (Union, types.UnionType):  # str | list[int]: the first that fits
        for option in typing.get_args(kind):
            try:
                return _convert(option, value, place, file)
            except UserError:
                continue
        wanted = " or ".join(_type_name(a) for a in typing.get_args(kind))
        raise UserError(f"{file}: {place}: must be {wanted}, got {_shown(value)}")
    wrong = UserError(f"{file}: {place}: must be {_type_name(kind)}, got {_shown(value)}")
    if kind is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise wrong
        return value
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise wrong
        return [_convert(item, v, f"{place}[{i}]", file) for i, v in enumerate(value)]
    if kind is ModelEntry and isinstance(value, str):
        return ModelEntry(name=value)
    if kind is ModelEntry and not isinstance(value, dict):
        raise UserError(f"{file}: {place}: must be a model name or a {{name, weights}} table, got {_shown(value)}")
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise wrong
        return _table(kind, value, place, file)
    raise wrong  # pragma: no cover - every field type is handled above


def _section(place: str) -> str:
    """How an unknown key's table is named: ``[launcher]``, ``[[analysis.compare]][0]``."""
    if not place:
        return ""
    if place.endswith("]"):
        head, _, index = place.rpartition("[")
        return f"[[{head}]][{index}"
    return f"[{place}]"


def _table(cls: type, table: dict, place: str, file: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else f" (valid: {', '.join(fields)})"
            where = f"{_section(place)} {key}" if place else key
            raise UserError(f"{file}: {where}: unknown key{hint}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        here = f"{place}.{name}" if place else name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise UserError(f"{file}: {here}: missing (it is required)")
            continue
        value = _convert(hints[name], table[name], here, file)
        check = f.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                sep = "" if problem.startswith("[") else ": "
                shown = "" if problem.startswith(("[", "unknown", "must not")) or "got" in problem else f", got {_shown(table[name])}"
                raise UserError(f"{file}: {here}{sep}{problem}{shown}")
        values[name] = value
    return cls(**values)


def read_study(text: str, *, source: str = "study.toml") -> Study:
    """The study in TOML ``text`` (``source`` names it in messages), its form checked."""
    file = Path(source).name
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{file}: not a valid TOML file: {exc}") from None
    study = _table(Study, table, "", file)
    if not study.models:
        raise UserError(f"{file}: models: missing (give at least one model)")
    for i, entry in enumerate(study.methods_at):
        if not entry.methods:
            raise UserError(f"{file}: methods_at[{i}].methods: missing (give the methods there)")
    for i, comparison in enumerate(study.analysis.compare):
        if len(comparison.keys) < 2:
            raise UserError(f"{file}: analysis.compare[{i}].keys: give at least two layer/method keys")
    if not study.name.strip() or any(c in study.name for c in "/\\") or study.name.startswith("."):
        raise UserError(f"{file}: name: must be a folder name (no slashes), got {_shown(study.name)}")
    return dataclasses.replace(study, source=str(source), text=text)


def load_study(path: Path | str) -> Study:
    """The study file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the study file ({exc.__class__.__name__})") from None
    return read_study(text, source=str(path))


def preset_names() -> tuple[str, ...]:
    """The shipped study presets."""
    folder = resources.files("attrcli.stages") / "presets"
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml")))


def preset_text(name: str) -> str:
    """The text of shipped preset ``name``."""
    if name not in preset_names():
        raise UserError(f"unknown study preset {name!r}; valid: {', '.join(preset_names())}")
    return (resources.files("attrcli.stages") / "presets" / f"{name}.toml").read_text(encoding="utf-8")


# --- writing -----------------------------------------------------------------------------------

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, ModelEntry):
        return _toml(value.name) if value.weights is None else f"{{ name = {_toml(value.name)}, weights = {_toml(value.weights)} }}"
    return str(value)


def _lines(obj: Any, *, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal") or f.name in skip:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) or (isinstance(value, list) and value and dataclasses.is_dataclass(value[0])
                                                and not isinstance(value[0], ModelEntry)):
            continue
        if isinstance(value, list) and not value and f.name in ("compare", "methods_at"):
            continue  # rendered as commented examples of their tables
        out.append(f"# {f.metadata['doc']}")
        if value is None:
            out.append(f"# {f.name} = {_toml(f.metadata['example'])}")
        else:
            out.append(f"{f.name} = {_toml(value)}")
    return out


def render(study: Study) -> str:
    """``study`` as a commented study file (every field with its one-line comment); reading it
    back gives an equal study."""
    lines = [f"# attrcli study file: `attrcli run {study.name}.toml`. Every key is optional except name and models.", ""]
    lines += _lines(study)
    for entry in study.methods_at:
        lines += ["", "[[methods_at]]", *_lines(entry)]
    if not study.methods_at:
        lines += ["", "# [[methods_at]]  # other methods at some settings or layers (later entries win), e.g.",
                  '# methods = ["gradcam", "scorecam"]', '# layers = ["final"]']
    for title, section in (("grids", study.grids), ("smoothing", study.smoothing), ("analysis", study.analysis)):
        lines += ["", f"[{title}]", f"# {type(section).__doc__.splitlines()[0]}", *_lines(section)]
    for comparison in study.analysis.compare:
        lines += ["", "[[analysis.compare]]", *_lines(comparison)]
    if not study.analysis.compare:
        lines += ["", "# [[analysis.compare]]  # a paired comparison, e.g.", '# keys = ["input/intgrad", "final/gradcam"]',
                  '# setting = "gridpg"']
    for title, section in (("sanity", study.sanity), ("compute", study.compute), ("launcher", study.launcher)):
        lines += ["", f"[{title}]", f"# {type(section).__doc__.splitlines()[0]}", *_lines(section)]
    return "\n".join(lines) + "\n"
