"""Scale-out of ``attribute``: job arrays through submitit, shell plans, and key status.

A launch splits an ``attribute`` call into tasks, one per setting and shard: each task computes
every layer and method of its setting for the grid rows of its shard, because the engine shares
forward and backward passes across them (:mod:`attrcli.engine.attribute`). The tasks run as one
submitit job array (``slurm``, or ``local``: subprocesses on this machine); when all finish, the
shards of each key are merged (:func:`attrcli.engine.shards.merge`). Keys that are up to date are
left out before anything is submitted.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attrcli.engine.checkpoint import Checkpoint  # noqa: F401  (documents the .partial layout)
from attrcli.engine.grids import GridFile, load_grid_file
from attrcli.engine.jobs import AttributeResult, Job, plan_jobs, resolve_methods, up_to_date, wants_all
from attrcli.engine.shards import merge, shard_paths, shard_rows
from attrcli.errors import TaskError, UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.store import read_provenance

LAUNCHERS = ("local", "slurm")
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class KeyStatus:
    """Where one attribution key stands: done, partial, stale, corrupt or missing."""

    path: Path
    label: str
    state: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "key": self.label, "state": self.state, "detail": self.detail}


def preview_jobs(
    *, grids: Path | str, setting: str | list[str], model: str, layers: str | list[str],
    methods: str | list[str], heads: str | list[int] | None = None, cache_root: Path | str = Path("cache"),
    adapter: ModelAdapter | None = None, seed: int = 0, batch_size: int = 32, shards: int = 1,
) -> tuple[GridFile, list[Job]]:
    """The jobs an ``attribute`` call would plan, without loading weights (unless ``adapter``).

    Registered models are built on the meta device; a ``module:attr`` factory is called as is.
    ``seed``, ``batch_size`` and ``shards`` shape the identity of sampling methods.
    """
    from attrcli.engine.attribute import _setting_names, _settings, _weightless

    names = _setting_names(setting)
    grid_file = load_grid_file(grids)
    specs = resolve_methods(methods)
    if adapter is None:
        adapter = _weightless(model)
    if adapter is None:
        from attrcli.models import create_model

        adapter = create_model(model, weights="random")
        adapter.weights_hash = ""
    settings, layer_names = _settings(grid_file, names, adapter, layers, heads)
    jobs: list[Job] = []
    for grid_setting, cells in settings:
        model_jobs, derived = plan_jobs(
            grid_file, grid_setting, cells, layer_names, specs, Path(cache_root), seed=seed,
            batch_size=batch_size, shards=shards, applicable_only=wants_all(methods),
        )
        jobs += model_jobs + derived
    return grid_file, jobs


def key_status(job: Job) -> KeyStatus:
    """Classify one planned job; weights are compared only when the job knows their hash."""
    path, label = job.path, job.key.label()
    if path.exists():
        try:
            prov = read_provenance(path)
        except UserError as exc:
            return KeyStatus(path, label, "corrupt", str(exc).split(": ")[-1][:80])
        inputs = prov.get("inputs", {})
        if inputs.get("grids") != job.inputs["grids"]:
            return KeyStatus(path, label, "stale", "grid file changed")
        if job.inputs.get("model") and inputs.get("model") != job.inputs["model"]:
            return KeyStatus(path, label, "stale", "weights changed")
        if prov.get("config", {}).get("identity") != job.identity:
            return KeyStatus(path, label, "stale", "config changed")
        return KeyStatus(path, label, "done")
    shards = shard_paths(path)
    partial = path.with_name(path.name + ".partial")
    if shards:
        count = shards[0].name.rsplit("-of-", 1)[1][: -len(".h5")]
        return KeyStatus(path, label, "partial", f"{len(shards)} of {count} shards")
    if partial.is_dir():
        chunks = len(list(partial.glob("chunk-*.npy")))
        return KeyStatus(path, label, "partial", f"{chunks} chunks checkpointed")
    return KeyStatus(path, label, "missing")


def status(**selection: Any) -> list[KeyStatus]:
    """:func:`key_status` of every key of a selection (the arguments of :func:`preview_jobs`)."""
    _, jobs = preview_jobs(**selection)
    return [key_status(job) for job in jobs]


def _tasks(jobs: list[Job], layer_order: list[str]) -> list[dict[str, Any]]:
    """One task per setting: the layers and methods of its jobs still to compute."""
    tasks: dict[str, dict[str, list[str]]] = {}
    for job in jobs:
        entry = tasks.setdefault(job.setting.name, {"layers": [], "methods": []})
        if job.layer not in entry["layers"]:
            entry["layers"].append(job.layer)
        if job.spec.canonical() not in entry["methods"]:
            entry["methods"].append(job.spec.canonical())
    return [
        {"setting": name, "layers": [l for l in layer_order if l in t["layers"]], "methods": t["methods"]}
        for name, t in tasks.items()
    ]


def plan_commands(
    *, grids: Path | str, setting: str | list[str], model: str, layers: str | list[str],
    methods: str | list[str], shards: int = 1, heads: str | None = None,
    cache_root: Path | str = Path("cache"), batch_size: int = 32, device: str = "auto",
    weights: str | None = None, seed: int = 0, force: bool = False,
) -> list[str]:
    """Shell commands: one ``attrcli attribute --shard i/N`` per setting and shard, then merges.

    Keys that are done (same grid file and config; weights are not checked) are left out unless
    ``force``. Run the attribute lines in any order or in parallel (``xargs -P``, an sbatch
    array), then the merge lines.
    """
    if shards < 1:
        raise UserError(f"--shards must be at least 1, got {shards}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    grid_file, jobs = preview_jobs(
        grids=grids, setting=setting, model=model, layers=layers, methods=methods, heads=heads,
        cache_root=cache_root, seed=seed, batch_size=batch_size, shards=shards,
    )
    if shards > 1:
        shard_rows(grid_file.count, (0, shards))
    todo = [job for job in jobs if force or key_status(job).state != "done"]
    layer_order = list(dict.fromkeys(job.layer for job in jobs))
    lines = []
    for task in _tasks(todo, layer_order):
        for i in range(shards):
            words = [
                "attrcli", "attribute", "--grids", str(grids), "--setting", task["setting"],
                "--model", model, "--layer", ",".join(task["layers"]), "--method", ",".join(task["methods"]),
                "--batch-size", str(batch_size), "--device", device, "--cache-dir", str(cache_root),
                "--seed", str(seed), "--quiet",
            ]
            words += ["--heads", heads] if heads else []
            words += ["--weights", str(weights)] if weights else []
            words += ["--force"] if force else []
            words += ["--shard", f"{i}/{shards}"] if shards > 1 else []
            lines.append(shlex.join(words))
    if shards > 1:
        lines += [shlex.join(["attrcli", "merge", str(job.path)]) for job in todo]
    return lines


def _run_task(kwargs: dict[str, Any]) -> list[AttributeResult]:
    """One array task (runs in the worker process)."""
    from attrcli.engine.attribute import attribute

    # A SLURM task owns the CPUs it was allocated, not the node's: without task binding torch
    # would start one thread per core of the node in every task.
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
    return attribute(**kwargs)


def _number(options: dict[str, Any], name: str, default: int) -> int:
    """An integer option, ``default`` when absent or None (0 is a value, and refused later)."""
    value = options.get(name)
    return default if value is None else int(value)


def _check_options(options: dict[str, Any]) -> tuple[int, int, int]:
    """Minutes, GPUs per task and array parallelism of ``options``; a UserError if out of range."""
    minutes = _number(options, "time", 60)
    gpus = _number(options, "gpus_per_task", 0)
    parallelism = _number(options, "array_parallelism", 32)
    for name, value in (("--time", minutes), ("--array-parallelism", parallelism)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if gpus < 0:
        raise UserError(f"--gpus-per-task must be 0 or more, got {gpus}")
    return minutes, gpus, parallelism


def _executor(launcher: str, folder: Path, options: dict[str, Any]):
    import submitit

    minutes, gpus, parallelism = _check_options(options)
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm needs SLURM's sbatch on PATH (scripts/local-slurm.sh starts a one-node cluster)")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher)
    params: dict[str, Any] = {"timeout_min": minutes, "name": "attrcli-attribute"}
    if launcher == "slurm":
        params.update(gpus_per_node=gpus, slurm_array_parallelism=parallelism)
        if options.get("partition"):
            params["slurm_partition"] = str(options["partition"])
    executor.update_parameters(**params)
    return executor


def _submit(executor: Any, kwargs: list[dict[str, Any]], launcher: str) -> list:
    """Submit the array; a refused submission (sbatch's error) becomes one line."""
    import contextlib
    import io

    from submitit.core.utils import FailedJobError

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # submitit prints sbatch's stderr as well
            return executor.map_array(_run_task, kwargs)
    except FailedJobError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"{launcher} refused the job array: {lines[-1] if lines else 'no reason given'}") from None


def launch_attribute(
    *, job: dict[str, Any], launcher: str, options: dict[str, Any], common: dict[str, Any],
) -> list[AttributeResult]:
    """Run one ``attribute`` call (``job``: grids, setting, model, layers, methods; ``common``:
    device, batch_size, force, cache_root, weights, progress, optionally heads/seed/wait) as a
    submitit job array of settings × shards, wait for it and merge the shards.

    ``options``: ``shards`` (default 1), ``partition``, ``gpus_per_task``, ``time`` (minutes),
    ``array_parallelism``, ``no_wait`` (return at once with status ``submitted``; merge later
    with ``attrcli merge --all``), ``folder`` (submitit logs; default ``<cache>/submitit``).
    """
    from attrcli.engine.attribute import resolve_device

    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; valid: inline, {', '.join(LAUNCHERS)}")
    model = job["model"]
    if not isinstance(model, str):
        raise UserError("a launcher needs the model as a name (registered, or module:attr)")
    _check_options(options)
    shards = _number(options, "shards", 1)
    if shards < 1:
        raise UserError(f"--shards must be at least 1, got {shards}")
    cache_root = Path(common.get("cache_root", "cache"))
    device, force = common.get("device", "cpu"), bool(common.get("force", False))
    batch_size = int(common.get("batch_size", 32))
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    progress: Progress | None = common.get("progress")
    from attrcli.models import create_model

    selection = dict(
        grids=job["grids"], setting=job["setting"], model=model, layers=job.get("layers", "input,middle,final"),
        methods=job.get("methods", "grad"), heads=common.get("heads"), cache_root=cache_root,
    )
    grid_file, _ = preview_jobs(**selection)  # bad input fails here, before weights are loaded or trained
    if shards > 1:
        shard_rows(grid_file.count, (0, shards))
    # Loading here validates the weights and trains default digits weights once, not per task.
    adapter = create_model(model, weights=common.get("weights"), device=resolve_device(device), cache_dir=cache_root, progress=progress)
    grid_file, jobs = preview_jobs(
        **selection, adapter=adapter, seed=int(common.get("seed", 0)), batch_size=batch_size, shards=shards,
    )
    todo = [j for j in jobs if force or not up_to_date(j)]
    results = [AttributeResult(j.key, j.path, "up to date") for j in jobs if j not in todo]
    if not todo:
        return results
    layer_order = list(dict.fromkeys(j.layer for j in jobs))
    device_name = str(device)
    kwargs = [
        dict(
            grids=str(job["grids"]), setting=task["setting"], model=model, layers=task["layers"],
            methods=task["methods"], heads=common.get("heads"), device=device_name, batch_size=batch_size,
            force=force, wait=True, cache_root=str(cache_root), weights=common.get("weights"),
            seed=int(common.get("seed", 0)), progress=None, shard=(i, shards) if shards > 1 else None,
        )
        for task in _tasks(todo, layer_order)
        for i in range(shards)
    ]
    folder = Path(options.get("folder") or cache_root / "submitit")
    executor = _executor(launcher, folder, options)
    submitted = _submit(executor, kwargs, launcher)
    if options.get("no_wait"):
        return results + [AttributeResult(j.key, j.path, "submitted") for j in todo]
    _wait(submitted, kwargs, progress, launcher=launcher)
    if shards > 1:
        derived = [j for j in todo if j.base_path is not None]
        for j in [j for j in todo if j.base_path is None] + derived:
            merge(j.path, wait=True)
    return results + [AttributeResult(j.key, j.path, "computed") for j in todo]


def _slurm_active(array_ids: list[str]) -> bool | None:
    """Whether ``squeue`` still lists a task of these arrays (pending, running, completing);
    None when squeue cannot tell (not installed, or the controller does not answer)."""
    try:
        out = subprocess.run(
            ["squeue", "--noheader", "--jobs", ",".join(array_ids), "--format", "%i %T"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # Jobs purged from the controller's memory are unknown to it: they have ended.
        return False if "Invalid job id" in out.stderr else None
    return any(line.strip() for line in out.stdout.splitlines())


def _finished(submitted: list, launcher: str, state: dict[str, float]) -> int:
    """How many tasks have ended.

    SLURM tasks are watched through their result files and ``squeue``, not submitit's ``sacct``
    calls: a cluster without accounting storage (such as scripts/local-slurm.sh) answers sacct
    with an error on every poll, and a task that died without a result file would then be
    waited for forever. Once no task of the array is queued, every task counts as ended and
    ``result()`` says what happened to those without a result.
    """
    if launcher != "slurm":
        return sum(task.done() for task in submitted)
    done = sum(task.paths.result_pickle.exists() for task in submitted)
    now = time.monotonic()
    if done < len(submitted) and now >= state.get("next_check", 0.0):
        state["next_check"] = now + 5.0
        arrays = sorted({str(task.job_id).split("_")[0] for task in submitted})
        active = _slurm_active(arrays)
        if active is None:
            return sum(task.done() for task in submitted)
        if not active:
            return len(submitted)
    return done


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)(?::\s.*)?)$")


def task_error_line(text: str) -> str:
    """The line of a failed task's report that says why: the exception of its traceback (without
    the module path), else the first error the scheduler logged, else the report's first line.

    Drops submitit's footer (the log paths, which the caller names) and separator lines.
    """
    body = text.split("You can check full logs", 1)[0]
    lines = [line.strip() for line in body.splitlines() if line.strip() and set(line.strip()) != {"-"}]
    for line in reversed(lines):
        match = _EXCEPTION_LINE.match(line)
        if match:
            return match[1]
    boilerplate = ("has not produced any output", "error stream produced")
    errors = [line for line in lines if "error" in line.lower() and not any(b in line.lower() for b in boilerplate)]
    if errors:
        return errors[0]
    silent = [line for line in lines if "has not produced any output" in line]
    return silent[0] if silent else (lines[0] if lines else "no error message")


def _wait(
    submitted: list, kwargs: list[dict[str, Any]], progress: Progress | None, *, launcher: str = "local",
    poll: float = 0.5,
) -> None:
    """Block until every task ends; the first failure becomes a one-line :class:`TaskError`."""
    total, state = len(submitted), {}
    while True:
        done = _finished(submitted, launcher, state)
        if progress:
            progress("launch", done, total)
        if done == total:
            break
        time.sleep(poll)
    for task, args in zip(submitted, kwargs):
        try:
            task.result()
        except Exception as exc:  # submitit wraps the worker's exception and traceback
            shard = args["shard"]
            where = f"setting {args['setting']}" + (f", shard {shard[0]}/{shard[1]}" if shard else "")
            raise TaskError(
                f"task {task.job_id} ({where}) failed: {task_error_line(str(exc))} (log: {task.paths.stderr})"
            ) from None
