"""Option types that several command modules share, and the check of the artifact selection.

Each is an ``Annotated`` type spelled once; a command names it with its own default. Numbers
carry their range and folders are checked as they are parsed, so a bad value is refused with
one line (exit 2) before any work starts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from attrcli.cli.app import paths_from_args, split_list
from attrcli.devices import DEVICE_HELP
from attrcli.engine.precision import PRECISIONS, validate_precision
from attrcli.errors import UserError
from attrcli.names import LAYERS, SETTINGS, listed

# What score, aggatt, correlate and the plot figures read: paths, or keys on disk for --grids.
Paths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Artifact paths; '-' reads paths from stdin, one a line.", show_default=False
    ),
]
Grids = Annotated[
    str | None,
    typer.Option("--grids", help="Grid file (or its name): select keys on disk instead of paths."),
]
Setting = Annotated[str, typer.Option("--setting", help="Settings, comma-separated, or 'all'.")]
Model = Annotated[str, typer.Option("--model", help="Models, comma-separated, or 'all'.")]
Layer = Annotated[
    str, typer.Option("--layer", help="Layers as in the paths (input,middle,final), or 'all'.")
]
Method = Annotated[
    str,
    typer.Option(
        "--method", help="Method specs, or bare names (which include their variants), or 'all'."
    ),
]


def _name(param: typer.CallbackParam) -> str:
    return param.opts[0] if param.opts else str(param.name)


def _folder(writable: bool) -> Callable[[typer.Context, typer.CallbackParam, Path | None], Path | None]:
    """A callback refusing a folder option that names a file, a device or a kernel file system
    (:func:`attrcli.store.files.check_folder`)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
        if value is None or ctx.resilient_parsing:
            return value
        from attrcli.store.files import check_folder

        check_folder(value, what=_name(param), writable=writable)
        return value

    return check


def at_least(least: int, most: int | None = None) -> Callable[[typer.Context, typer.CallbackParam, int | None], int | None]:
    """A callback refusing a number below ``least`` (or above ``most``): zero and negative
    counts are errors, never "the default"."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: int | None) -> int | None:
        if value is None or ctx.resilient_parsing:
            return value
        if value < least:
            raise UserError(f"{_name(param)} must be at least {least}, got {value}")
        if most is not None and value > most:
            raise UserError(f"{_name(param)} must be at most {most}, got {value}")
        return value

    return check


positive = at_least(1)


#: Callbacks of folder options that attrcli writes into, and of those it only reads.
writable_folder = _folder(writable=True)
readable_folder = _folder(writable=False)

# Attribution jobs: attribute, launch, status, plan, merge, run (and Force, Device for the
# analysis commands). Help texts name settings and layers from attrcli.names.
SETTING_HELP = f"{listed(SETTINGS)} (comma list allowed; all need the same grid variant)."
MODEL_HELP = "Registered model (see `attrcli models`) or module:Name."
GridFile = Annotated[Path, typer.Option("--grids", help="Grid file written by make-grids.")]
AttributeSetting = Annotated[str, typer.Option("--setting", help=SETTING_HELP)]
AttributeModel = Annotated[str, typer.Option("--model", help=MODEL_HELP)]
AttributeLayers = Annotated[
    str, typer.Option("--layer", help=f"Comma list of {', '.join(LAYERS)}, all, or module paths.")
]
AttributeMethods = Annotated[
    str, typer.Option("--method", help="Comma list of methods, each optionally with parameters: "
                      "occlusion:k=16,s=8. 'all' for every method.")
]
Heads = Annotated[
    str | None, typer.Option("--heads", help="Cells to evaluate: 'default' (all for gridpg, the two corners "
                             "otherwise), 'all', or indices like 0,3.")
]
CacheRoot = Annotated[
    Path, typer.Option("--cache-dir", help="Root of the artifact cache.", callback=writable_folder)
]
CacheRead = Annotated[
    Path, typer.Option("--cache-dir", help="Root of the artifact cache.", callback=readable_folder)
]
BATCH_HELP = ("Grid images per forward pass (intgrad: grid images x steps; perturbation methods: "
              "perturbed copies); bounds memory.")
BatchSize = Annotated[int, typer.Option("--batch-size", callback=positive, help=BATCH_HELP)]
Seed = Annotated[
    int, typer.Option("--seed", callback=at_least(0, 2**63 - 1), help="Seed for methods that sample (RISE, SmoothGrad).")
]
Shard = Annotated[
    str | None, typer.Option("--shard", help="Compute only shard i/N of the grid images (0-based); join with "
                             "`attrcli merge`.")
]
Weights = Annotated[
    str | None,
    typer.Option("--weights", help="State-dict file for the model, as FILE or MODEL=FILE (loaded "
                 "with weights_only=True), or 'random'."),
]
Device = Annotated[str, typer.Option("--device", help=f"{DEVICE_HELP}.")]


def _precision(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """``--precision`` normalised; an unknown name is a one-line error naming the valid ones."""
    if value is None or ctx.resilient_parsing:
        return value
    return validate_precision(value)


PRECISION_HELP = (f"{listed(PRECISIONS)}: fp32 exact (default); tf32 (CUDA) and bf16 for speed on GPUs, "
                  "keyed apart (gradcam@bf16).")
Precision = Annotated[str, typer.Option("--precision", callback=_precision, help=PRECISION_HELP)]
Force = Annotated[bool, typer.Option("--force", help="Recompute even if up to date.")]
Wait = Annotated[
    bool, typer.Option("--wait", help="Wait for another process that holds an artifact's lock instead of exiting.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout instead of paths.")]

# Scale-out: attribute --launcher, launch and run.
Launcher = Annotated[
    str, typer.Option("--launcher", help="inline (this process), local or slurm (submitit job array of "
                      "settings x shards, then merge).")
]
Shards = Annotated[int, typer.Option("--shards", callback=positive, help="Split each setting's grid images into N shards.")]
Partition = Annotated[str | None, typer.Option("--partition", help="SLURM partition (with --launcher slurm).")]
GpusPerTask = Annotated[int, typer.Option("--gpus-per-task", callback=at_least(0), help="GPUs per SLURM task.")]
TimeLimit = Annotated[int, typer.Option("--time", callback=positive, help="Time limit per task, minutes.")]
ArrayParallelism = Annotated[
    int, typer.Option("--array-parallelism", callback=positive, help="Tasks of the array running at once (SLURM).")
]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="Return after submitting; merge later with `attrcli merge --all`.")
]


def selected(
    paths: list[str] | None,
    grids: str | None,
    selection: tuple[str, str, str, str],
    *,
    find: Callable[..., list[Path]],
    nothing: str,
) -> list[Path]:
    """The artifact paths given (``-`` reads them from stdin), or those ``find`` selects on disk.

    ``selection`` is ``(setting, model, layer, method)`` as typed; ``find`` gets ``grids`` and
    them parsed as ``settings``, ``models``, ``layers`` and ``methods``. ``nothing`` is what the
    command does, for the error when neither paths nor --grids are given.
    """
    from attrcli.metrics.selection import ALL, split_methods

    if paths and grids:
        raise UserError("give artifact paths or --grids with a selection, not both")
    if paths:
        if any(value != ALL for value in selection):
            raise UserError(
                "--setting/--model/--layer/--method select keys with --grids, not paths"
            )
        return paths_from_args(paths)
    if not grids:
        raise UserError(
            f"nothing to {nothing}: give artifact paths, '-' for stdin, or --grids FILE"
        )
    setting, model, layer, method = selection
    return find(
        grids=grids,
        settings=split_list(setting),
        models=split_list(model),
        layers=split_list(layer),
        methods=split_methods(method),
    )


def model_weights(value: str | None, model: str) -> str | None:
    """``--weights`` of a command with one model: ``FILE``, ``MODEL=FILE`` or ``random``; the
    file (or ``random``), or None for the model's default weights.

    A value that names an existing file is a file, even with a ``=`` in its name.
    """
    if value is None:
        return None
    if not value.strip():
        raise UserError("--weights is empty: give FILE, MODEL=FILE or random")
    if value == "random" or "=" not in value or Path(value).is_file():
        return value
    name, _, path = value.partition("=")
    if not name or not path:
        raise UserError(f"invalid --weights {value!r}: use FILE or MODEL=FILE")
    if name != model:
        raise UserError(f"--weights {value!r} is for model {name}, but --model is {model}; use FILE or {model}=FILE")
    return path


def study_weights(items: list[str], models: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``--weights`` of a command with several models (``run``): each ``MODEL=FILE``, or one
    ``FILE`` when there is one model; a dict model -> file."""
    out: dict[str, str] = {}
    for item in items:
        if not item.strip():
            raise UserError("--weights is empty: give MODEL=FILE")
        if "=" in item and not Path(item).is_file():
            model, _, path = item.partition("=")
            if not model or not path:
                raise UserError(f"invalid --weights {item!r}: use MODEL=FILE, e.g. vgg11=vgg11.pth")
        elif len(models) == 1:
            model, path = models[0], item
        else:
            raise UserError(
                f"--weights {item!r} does not say which model it is for; use MODEL=FILE with one of "
                f"{', '.join(models)}"
            )
        if model in out:
            raise UserError(f"--weights given twice for model {model}")
        out[model] = path
    return out
