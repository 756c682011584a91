"""What every figure shares: display order, colours, input artifacts, and saving.

The display order is the study's vocabulary (:mod:`attrcli.names`): the paper's methods in its
order (supplement Fig. 9), then other methods; layers shallow to deep; the paper's settings.

Figures are built on a bare :class:`matplotlib.figure.Figure` with an Agg canvas (no pyplot, no
screen, no global state), so library code can build many figures without leaking windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from attrcli.errors import UserError
from attrcli.metrics.correlation import ScoredAttributions
from attrcli.metrics.selection import natural_key, select_keys
from attrcli.names import FIGURE_FORMATS, LAYERS, PAPER_METHODS, PAPER_SETTINGS
from attrcli.store import ArtifactKey, read_artifact
from attrcli.store.files import atomic_output
from attrcli.store.keys import glob_escape, grids_part

FORMATS = FIGURE_FORMATS
#: AggAtt percentile bins (supplement H.4), as column labels.
BIN_LABELS = ("0–2 %", "2–5 %", "5–50 %", "50–95 %", "95–98 %", "98–100 %")
#: One colormap for attribution maps in every figure.
MAP_CMAP = "viridis"
OUTLINE = "#ff3b30"
_STAGE_COMMAND = {"attributions": "attribute", "scores": "score", "aggatt": "aggatt"}
_STAGE_NOUN = {"attributions": "attribution", "scores": "score", "aggatt": "AggAtt"}
_PIPELINE = ("attributions", "scores", "aggatt")


#: Resolution of every figure written.
DPI = 150
#: The version of the figures' drawing code: a figure cached by the figure stage
#: (:mod:`attrcli.stages.figures`) is redrawn when it changes. Raise it with any change to what
#: a figure shows or how it looks.
DRAWING_VERSION = 2
#: zlib level of PNG files: 4 writes the large AggAtt figures in about 60 % of the time of the
#: default 6, for files about 5 % larger.
PNG_LEVEL = 4
#: What the writers would stamp into a file beyond its drawing (software version, date): left
#: out, so that the same figure drawn twice is the same bytes.
_NO_STAMPS = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


def new_figure(width: float, height: float) -> Figure:
    """A figure with constrained (tight) layout on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def fixed_figure(width: float, height: float) -> Figure:
    """A figure without a layout engine on an Agg canvas: its axes are placed by the caller
    (figures with many panels, where constrained layout would cost more than the pixels)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out: Path | str, fmt: str = "png", dpi: int = DPI) -> Path:
    """Write ``fig`` to ``out`` as ``fmt`` atomically (temporary file, then rename), without
    dates or versions in the file: unchanged inputs give byte-identical files."""
    from matplotlib import rc_context

    fmt = check_format(fmt)
    out = Path(out)
    if out.suffix.lower() in {f".{f}" for f in FORMATS} and out.suffix.lower() != f".{fmt}":
        raise UserError(f"--out {out} does not match --format {fmt}; use a .{fmt} file name")
    with atomic_output(out, what="--out") as tmp:  # refuses a folder or device, writes through a link
        with rc_context({"svg.hashsalt": "attrcli"}):  # SVG ids from a fixed salt, not a random one
            extra = {"pil_kwargs": {"compress_level": PNG_LEVEL}} if fmt == "png" else {}
            fig.savefig(tmp, format=fmt, dpi=dpi, facecolor="white", metadata=_NO_STAMPS[fmt], **extra)
    return out


def check_format(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise UserError(f"unknown figure format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


def output_path(name: str, out: Path | str | None, fmt: str | None) -> tuple[Path, str]:
    """The figure's path and format: ``--format``, else ``--out``'s suffix, else png.

    The default path is ``reports/figures/<name>.<fmt>``.
    """
    if fmt is None:
        suffix = Path(out).suffix.lower().lstrip(".") if out is not None else ""
        fmt = suffix if suffix in FORMATS else "png"
    fmt = check_format(fmt)
    path = Path(out) if out is not None else Path("reports") / "figures" / f"{name}.{fmt}"
    return path, fmt


def method_base(spec: str) -> str:
    """``occlusion:k=8,s=4`` -> ``occlusion``."""
    return spec.partition(":")[0]


def method_params(spec: str) -> dict[str, str]:
    """``occlusion:k=8,s=4`` -> ``{"k": "8", "s": "4"}``."""
    _, sep, tail = spec.rpartition(":")
    if not sep or "=" not in tail:
        return {}
    return dict(item.partition("=")[::2] for item in tail.split(",") if "=" in item)


def method_sort_key(spec: str) -> tuple:
    """The paper's methods first in :data:`PAPER_METHODS`, then the others by name."""
    base = method_base(spec)
    rank = PAPER_METHODS.index(base) if base in PAPER_METHODS else len(PAPER_METHODS)
    return (rank, natural_key(spec))


def order_methods(specs: Iterable[str]) -> list[str]:
    return sorted(set(specs), key=method_sort_key)


def order_layers(layers: Iterable[str]) -> list[str]:
    """``input``, ``middle``, ``final``, then other layers in the order first found."""
    found = list(dict.fromkeys(layers))
    return [name for name in LAYERS if name in found] + [
        name for name in found if name not in LAYERS
    ]


def order_settings(settings: Iterable[str]) -> list[str]:
    found = set(settings)
    return [s for s in PAPER_SETTINGS if s in found] + sorted(found - set(PAPER_SETTINGS))


def _palette() -> list:
    """60 distinct colours: tab10's strong ones first, then their light pairs, then tab20b/c."""
    pairs = colormaps["tab20"].colors
    extra = [c for name in ("tab20b", "tab20c") for c in colormaps[name].colors]
    return list(pairs[::2]) + list(pairs[1::2]) + extra[::2] + extra[1::2]


def method_colours(specs: Iterable[str]) -> dict[str, tuple]:
    """A colour per method: fixed for the paper's methods, the next free ones for the rest."""
    palette = _palette()
    colours: dict[str, tuple] = {}
    ordered = order_methods(specs)
    for spec in ordered:
        if spec in PAPER_METHODS:
            index = PAPER_METHODS.index(spec)
            colours[spec] = palette[index % len(palette)]
    free = itertools.count(len(PAPER_METHODS))  # after the paper's methods' fixed colours
    for spec in ordered:
        if spec not in colours:
            colours[spec] = palette[next(free) % len(palette)]
    return colours


def method_colour(spec: str) -> tuple:
    """The fixed colour of one of the paper's methods (grey for others)."""
    if spec in PAPER_METHODS:
        return _palette()[PAPER_METHODS.index(spec)]
    return (0.4, 0.4, 0.4)


def as_stage(paths: Iterable[Path | str], stage: str) -> list[Path]:
    """Artifact paths of ``stage`` for the given paths of this or an earlier stage.

    An attribution path stands for its score (or AggAtt) artifact in the same cache folder, so
    the paths printed by any stage can be piped into ``attrcli plot``.
    """
    out: list[Path] = []
    for path in dict.fromkeys(Path(p) for p in paths):
        key = ArtifactKey.from_path(path)
        if key.stage == stage:
            out.append(path)
            continue
        if key.stage not in _PIPELINE or _PIPELINE.index(key.stage) > _PIPELINE.index(stage):
            raise UserError(
                f"{path} is a {key.stage} artifact; this figure needs "
                f"{_STAGE_NOUN[stage]} artifacts"
            )
        sibling = key.sibling(stage, path)
        if not sibling.exists():
            raise UserError(
                f"{path}: no {_STAGE_NOUN[stage]} artifact for it at {sibling}; "
                f"run attrcli {_STAGE_COMMAND[stage]} first"
            )
        out.append(sibling)
    return list(dict.fromkeys(out))


def find_artifacts(
    *,
    cache_root: Path | str,
    grids: str | Path,
    stage: str,
    settings: list[str] | None = None,
    models: list[str] | None = None,
    layers: list[str] | None = None,
    methods: list[str] | None = None,
) -> list[Path]:
    """Paths of the ``stage`` artifacts on disk matching a selection (empty or ``all``: every one)."""
    root = Path(cache_root)
    name = grids_part(grids)
    folder = root / stage / name
    if not ArtifactKey.glob(root, stage, grids=glob_escape(name), shards=True):
        raise UserError(
            f"no {_STAGE_NOUN.get(stage, stage)} artifacts for grids {name!r}: searched {folder}; "
            f"run attrcli {_STAGE_COMMAND.get(stage, stage)} first (or pass --cache-dir)"
        )
    keys = select_keys(
        cache_root=root,
        grids=grids,
        settings=settings,
        models=models,
        layers=layers,
        methods=methods,
        stages=(stage,),
    )
    if not keys:
        raise UserError(
            f"no {_STAGE_NOUN.get(stage, stage)} artifacts under {folder} match the selection"
        )
    return [k.path(root) for k in keys]


@dataclass
class ScoreSet:
    """One key's localization scores, flattened, with what they cover."""

    key: ArtifactKey
    scores: np.ndarray
    n: int
    identity: ScoredAttributions
    path: Path
    attrs: dict


def load_scores(paths: Iterable[Path | str]) -> list[ScoreSet]:
    """Read score artifacts (or the scores of attribution artifacts)."""
    sets = []
    for path in as_stage(paths, "scores"):
        artifact = read_artifact(path, names=["scores", "grid_index", "cells", "heads"])
        key = ArtifactKey.from_path(path)
        try:
            n = int(artifact.attrs["n"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path} lacks the attribute n (grid size)") from None
        identity = ScoredAttributions(
            label=key.label(),
            grids_hash=str(artifact.attrs.get("grids_hash", f"?{key.grids}")),
            grid_index=np.asarray(artifact.data["grid_index"], dtype=np.int64),
            cells=np.asarray(artifact.data["cells"], dtype=np.int64),
            heads=np.asarray(artifact.data["heads"], dtype=np.int64),
        )
        scores = np.asarray(artifact.data["scores"], dtype=np.float64).ravel()
        sets.append(ScoreSet(key, scores, n, identity, path, artifact.attrs))
    if not sets:
        raise UserError("no score artifacts given: pass paths, '-' for stdin, or --grids")
    return sets


def chance_label(ns: Iterable[int]) -> str:
    values = sorted(set(ns))
    if len(values) == 1:
        return f"uniform attribution (1/n² = {1 / values[0] ** 2:.3g})"
    return "uniform attribution (1/n²)"


def empty_panel(ax, message: str) -> None:
    """An axes with nothing to show but a centred note."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=8, color="0.4",
            transform=ax.transAxes, wrap=True)
