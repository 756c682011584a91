"""Scale-out of ``attribute``: job arrays through submitit, shell plans, and key status.

A launch splits an ``attribute`` request into tasks, one per setting and shard: each task
computes every layer and method of its setting for the grid rows of its shard, because the
engine shares forward and backward passes across them (:mod:`attrcli.engine.attribute`). The
tasks run as one submitit job array (``slurm``, or ``local``: subprocesses on this machine);
when all finish, the shards of each key are merged (:func:`attrcli.stages.merge.merge`). Keys
that are up to date are left out before anything is submitted.
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
from typing import Any

from attrcli.devices import resolve_device
from attrcli.engine.precision import DEFAULT as FP32
from attrcli.engine.precision import check_device
from attrcli.engine.shards import shard_rows
from attrcli.errors import TaskError, UserError
from attrcli.models import create_model
from attrcli.progress import Progress
from attrcli.stages.merge import merge
from attrcli.stages.plan import (
    AttributeRequest,
    AttributeResult,
    Job,
    key_freshness,
    plan,
    up_to_date,
)
from attrcli.store.freshness import CORRUPT, FRESH, STALE
from attrcli.store.keys import root_of

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """How a launch runs its job array: ``launcher`` (``local`` or ``slurm``), the SLURM
    ``partition``, ``gpus_per_task``, ``time`` (minutes per task), ``array_parallelism`` (tasks
    at once), ``no_wait`` (return at once with status ``submitted``; merge later with
    ``attrcli merge --all``) and ``folder`` (submitit's logs; default ``<cache>/submitit``)."""

    launcher: str = "local"
    partition: str | None = None
    gpus_per_task: int = 0
    time: int = 60
    array_parallelism: int = 32
    no_wait: bool = False
    folder: Path | str | None = None

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise UserError(f"unknown launcher {self.launcher!r}; valid: inline, {', '.join(LAUNCHERS)}")
        for name, value in (("--time", self.time), ("--array-parallelism", self.array_parallelism)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.gpus_per_task < 0:
            raise UserError(f"--gpus-per-task must be 0 or more, got {self.gpus_per_task}")


@dataclass(frozen=True)
class KeyStatus:
    """Where one attribution key stands: done, partial, stale, corrupt or missing."""

    path: Path
    label: str
    state: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "key": self.label, "state": self.state, "detail": self.detail}


def key_status(job: Job) -> KeyStatus:
    """Classify one planned job; weights are compared only when the job knows their hash."""
    path, label = job.path, job.key.label()
    found = key_freshness(job)
    if found.state == FRESH:
        return KeyStatus(path, label, "done")
    if found.state in (STALE, CORRUPT):
        return KeyStatus(path, label, found.state, found.detail)
    root = root_of(path)
    shards = job.key.shards_on_disk(root)
    if shards:
        return KeyStatus(path, label, "partial", f"{len(shards)} of {shards[0].shard[1]} shards")
    folder = job.key.checkpoint_folder(root)
    if folder.is_dir():
        chunks = len(list(folder.glob("chunk-*.npy")))
        return KeyStatus(path, label, "partial", f"{chunks} chunks checkpointed")
    return KeyStatus(path, label, "missing")


def status(request: AttributeRequest) -> list[KeyStatus]:
    """:func:`key_status` of every key of ``request``, without loading weights."""
    return [key_status(job) for job in plan(request).jobs]


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


def _model_name(request: AttributeRequest) -> str:
    if not isinstance(request.model, str):
        raise UserError("a launcher needs the model as a name (registered, or module:attr)")
    return request.model


def plan_commands(request: AttributeRequest) -> list[str]:
    """Shell commands: one ``attrcli attribute --shard i/N`` per setting and ``request.shards``,
    then merges.

    Keys that are done (same grid file and config; weights are not checked) are left out unless
    ``force``. Run the attribute lines in any order or in parallel (``xargs -P``, an sbatch
    array), then the merge lines.
    """
    model = _model_name(request)
    shards = request.shards
    planned = plan(request)
    if shards > 1:
        shard_rows(planned.grid_file.count, (0, shards))
    jobs = planned.jobs
    todo = [job for job in jobs if request.force or key_status(job).state != "done"]
    layer_order = list(dict.fromkeys(job.layer for job in jobs))
    heads = request.heads if not isinstance(request.heads, list) else ",".join(map(str, request.heads))
    lines = []
    for task in _tasks(todo, layer_order):
        for i in range(shards):
            words = [
                "attrcli", "attribute", "--grids", str(request.grids), "--setting", task["setting"],
                "--model", model, "--layer", ",".join(task["layers"]), "--method", ",".join(task["methods"]),
                "--batch-size", str(request.batch_size), "--device", str(request.device),
                "--cache-dir", str(request.cache_root), "--seed", str(request.seed), "--quiet",
            ]
            words += ["--heads", heads] if heads else []
            words += ["--weights", str(request.weights)] if request.weights else []
            words += ["--precision", request.precision] if request.precision != FP32 else []
            words += ["--force"] if request.force else []
            words += ["--shard", f"{i}/{shards}"] if shards > 1 else []
            lines.append(shlex.join(words))
    if shards > 1:
        lines += [shlex.join(["attrcli", "merge", str(job.path)]) for job in todo]
    return lines


def _run_task(request: AttributeRequest) -> list[AttributeResult]:
    """One array task (runs in the worker process)."""
    from attrcli.stages.attribute import run_attribute

    # A SLURM task owns the CPUs it was allocated, not the node's: without task binding torch
    # would start one thread per core of the node in every task.
    cpus = os.environ.get("SLURM_CPUS_PER_TASK") or os.environ.get("SLURM_CPUS_ON_NODE")
    if cpus and cpus.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(max(1, int(cpus)))
    return run_attribute(request)


def _executor(launcher: str, folder: Path, options: LaunchOptions):
    import submitit

    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm needs SLURM's sbatch on PATH (scripts/local-slurm.sh starts a one-node cluster)")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher)
    params: dict[str, Any] = {"timeout_min": options.time, "name": "attrcli-attribute"}
    if launcher == "slurm":
        params.update(gpus_per_node=options.gpus_per_task, slurm_array_parallelism=options.array_parallelism)
        if options.partition:
            params["slurm_partition"] = str(options.partition)
    executor.update_parameters(**params)
    return executor


def _submit(executor: Any, tasks: list[AttributeRequest], launcher: str) -> list:
    """Submit the array; a refused submission (sbatch's error) becomes one line."""
    import contextlib
    import io

    from submitit.core.utils import FailedJobError

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):  # submitit prints sbatch's stderr as well
            return executor.map_array(_run_task, tasks)
    except FailedJobError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise UserError(f"{launcher} refused the job array: {lines[-1] if lines else 'no reason given'}") from None


def launch_attribute(
    request: AttributeRequest, options: LaunchOptions, *, progress: Progress | None = None,
) -> list[AttributeResult]:
    """Run ``request`` as a submitit job array of settings × ``request.shards``, wait for it
    and merge the shards (:class:`LaunchOptions` says how)."""
    model = _model_name(request)
    shards, cache_root = request.shards, Path(request.cache_root)
    grid_file = plan(request).grid_file  # bad input fails here, before weights are loaded or trained
    if shards > 1:
        shard_rows(grid_file.count, (0, shards))
    device = resolve_device(request.device)
    check_device(request.precision, device)  # tf32 off CUDA, before weights are trained or written
    # Loading here validates the weights and trains default digits weights once, not per task.
    adapter = create_model(model, weights=request.weights, device=device,
                           cache_dir=cache_root, progress=progress)
    jobs = plan(request, adapter=adapter, grid_file=grid_file).jobs
    todo = [j for j in jobs if request.force or not up_to_date(j)]
    results = [AttributeResult(j.key, j.path, "up to date") for j in jobs if j not in todo]
    if not todo:
        return results
    layer_order = list(dict.fromkeys(j.layer for j in jobs))
    tasks = [
        request.replace(
            grids=str(request.grids), setting=task["setting"], layers=task["layers"], methods=task["methods"],
            device=str(request.device), wait=True, shard=(i, shards) if shards > 1 else None,
        )
        for task in _tasks(todo, layer_order)
        for i in range(shards)
    ]
    folder = Path(options.folder or cache_root / "submitit")
    executor = _executor(options.launcher, folder, options)
    submitted = _submit(executor, tasks, options.launcher)
    if options.no_wait:
        return results + [AttributeResult(j.key, j.path, "submitted") for j in todo]
    _wait(submitted, tasks, progress, launcher=options.launcher)
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
    submitted: list, tasks: list[AttributeRequest], progress: Progress | None, *, launcher: str = "local",
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
    for task, request in zip(submitted, tasks):
        try:
            task.result()
        except Exception as exc:  # submitit wraps the worker's exception and traceback
            shard = request.shard
            where = f"setting {request.setting}" + (f", shard {shard[0]}/{shard[1]}" if shard else "")
            raise TaskError(
                f"task {task.job_id} ({where}) failed: {task_error_line(str(exc))} (log: {task.paths.stderr})"
            ) from None
