"""How a launch watches SLURM tasks and reports a failed one, without a cluster (stand-ins)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from attrcli.errors import UserError
from attrcli.stages import launch
from tests.scale.helpers import MODEL, grids

FAILED = (
    "Job (task=0) failed during processing with trace:\n----------------------\n"
    "Traceback (most recent call last):\n  File \"/x/submission.py\", line 55, in process_job\n"
    "    result = delayed.result()\n  File \"/x/grids.py\", line 40, in __getitem__\n"
    "    raise UserError(f\"{self.path}: cannot read its images ({exc})\") from None\n"
    "attrcli.errors.UserError: g.h5: cannot read its images (unable to open external raw data file)\n\n"
    "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
    "  - /c/submitit/5_1_0_log.err\n  - /c/submitit/5_1_0_log.out"
)
KILLED = (
    "Job 5_1 (task: 0) with path /c/submitit/5_1_0_result.pkl\nhas not produced any output (state: TIMEOUT)\n"
    "Error stream produced:\n----------------------------------------\n"
    "slurmstepd: error: *** STEP 5.0 ON vm CANCELLED AT 2024-01-01T00:00:00 DUE TO TIME LIMIT ***\n"
    "srun: error: vm: task 0: Terminated"
)
SILENT = (
    "Job 5_1 (task: 0) with path /c/submitit/5_1_0_result.pkl\nhas not produced any output (state: UNKNOWN)\n"
    "No output/error stream produced ! Check: /c/submitit/5_1_0_log.out"
)


@pytest.mark.parametrize(("report", "line"), [
    (FAILED, "UserError: g.h5: cannot read its images (unable to open external raw data file)"),
    (KILLED, "slurmstepd: error: *** STEP 5.0 ON vm CANCELLED AT 2024-01-01T00:00:00 DUE TO TIME LIMIT ***"),
    (SILENT, "has not produced any output (state: UNKNOWN)"),
    ("Traceback ...\nKeyboardInterrupt", "KeyboardInterrupt"),
])
def test_task_error_line(report, line):
    assert launch.task_error_line(report) == line


class Task:
    """A submitted array task: ``result`` says whether its result file exists."""

    def __init__(self, job_id: str, folder: Path, finished: bool) -> None:
        self.job_id = job_id
        pickle = folder / f"{job_id}_0_result.pkl"
        if finished:
            pickle.write_bytes(b"")
        self.paths = type("Paths", (), {"result_pickle": pickle})()

    def done(self) -> bool:
        return self.paths.result_pickle.exists()


def squeue(monkeypatch, *, stdout: str = "", stderr: str = "", code: int = 0, missing: bool = False) -> list:
    calls: list = []

    def run(args, **kwargs):
        calls.append(args)
        if missing:
            raise FileNotFoundError("squeue")
        return subprocess.CompletedProcess(args, code, stdout, stderr)

    monkeypatch.setattr(launch.subprocess, "run", run)
    return calls


def test_slurm_tasks_end_when_they_leave_the_queue(tmp_path, monkeypatch):
    tasks = [Task("5_0", tmp_path, True), Task("5_1", tmp_path, False)]
    # Still queued: only the task with a result file has ended; squeue is asked for array 5.
    calls = squeue(monkeypatch, stdout="5_1 RUNNING\n")
    assert launch._finished(tasks, "slurm", {}) == 1
    assert calls[0][:3] == ["squeue", "--noheader", "--jobs"] and calls[0][3] == "5"
    # squeue is asked again only after a pause.
    state: dict = {}
    launch._finished(tasks, "slurm", state)
    launch._finished(tasks, "slurm", state)
    assert len(calls) == 2
    # Out of the queue (or purged by the controller): every task has ended, results or not.
    squeue(monkeypatch, stdout="")
    assert launch._finished(tasks, "slurm", {}) == 2
    squeue(monkeypatch, stderr="slurm_load_jobs error: Invalid job id specified", code=1)
    assert launch._finished(tasks, "slurm", {}) == 2
    # squeue unusable: submitit's own check decides.
    squeue(monkeypatch, missing=True)
    assert launch._finished(tasks, "slurm", {}) == 1
    squeue(monkeypatch, stderr="slurm_load_jobs error: Unable to contact slurm controller", code=1)
    assert launch._finished(tasks, "slurm", {}) == 1


def test_slurm_launcher_without_sbatch_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    request = launch.AttributeRequest(grids=grids(tmp_path, count=2), setting=["gridpg"], model=MODEL, layers=["input"],
                                      methods=["grad"], device="cpu", batch_size=2, cache_root=tmp_path / "c")
    with pytest.raises(UserError, match="--launcher slurm needs SLURM's sbatch on PATH"):
        launch.launch_attribute(request, launch.LaunchOptions(launcher="slurm"))
    assert not (tmp_path / "c").exists()
