"""The fixed cost of one cheap ``attrcli attribute`` call: what it costs besides the key's compute.

A call as a script on a cluster makes it: a fresh interpreter runs ``attrcli attribute --method
grad --layer final`` on one grid image of vgg11 with ``--weights FILE`` (the fixed-seed random
weights saved as a state dict, so nothing downloads). Measured in CPU seconds of the child
process (``getrusage``), median of ``--repeat`` calls after one untimed call (which fills the OS
file cache and attrcli's weights-hash cache), split into

- *key compute*: :func:`attrcli.engine.attribute.compute_maps`, timed inside the child;
- *fixed cost*: the rest (interpreter start, imports, validation, building the model and loading
  its weights, hashing them, reading the grid, writing the artifact);
- ``python -c 'import torch'`` beside it, for scale;
- the same call *in one process* as ``bench_study.py`` makes its per-key calls (``attrcli.cli.main``
  called again and again, the model a memoised ``_study_models`` factory with random weights):
  median of ``2·repeat + 1`` calls after a warm one.

``--source DIR`` (repeatable) runs the same calls against other checkouts of attrcli (for
example ``git archive <commit> | tar -x -C DIR``) in the same run, so before/after is a ratio
of one run on one machine.

    python benchmarks/bench_fixed_cost.py --source /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

HERE = Path(__file__).resolve().parent.parent
OUT = Path(__file__).parent / "out"

CHILD = r"""
import sys, time, json, os
sys.argv = ["attrcli", *json.loads(os.environ["BENCH_ARGS"])]
import attrcli.engine.attribute as engine
spent = [0.0]
real = engine.compute_maps
def timed(*a, **k):
    start = time.process_time()
    try:
        return real(*a, **k)
    finally:
        spent[0] += time.process_time() - start
engine.compute_maps = timed
from attrcli.cli.main import main
try:
    main()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
finally:
    import attrcli
    print("COMPUTE", spent[0], attrcli.__file__, file=sys.stderr)
"""


INPROC = r"""
import sys, time, json, os
sys.path.insert(0, os.environ["BENCH_DIR"])
import torch
torch.set_num_threads(1)
import attrcli.engine.attribute as engine
spent = [0.0]
real = engine.compute_maps
def timed(*a, **k):
    start = time.process_time()
    try:
        return real(*a, **k)
    finally:
        spent[0] += time.process_time() - start
engine.compute_maps = timed
import bench_study
args = json.loads(os.environ["BENCH_ARGS"])
bench_study.cli(args)  # warm: imports, first-use costs
calls = []
for _ in range(int(os.environ["BENCH_REPEAT"])):
    spent[0] = 0.0
    start = time.process_time()
    bench_study.cli(args)
    calls.append((time.process_time() - start, spent[0]))
calls.sort()
cpu, compute = calls[len(calls) // 2]
import attrcli
print("INPROC", cpu, compute, attrcli.__file__)
"""


def in_process(source: Path, args: list[str], repeat: int) -> dict[str, float]:
    """``bench_study.py``'s per-key call in one process (the model a memoised factory, the
    interpreter and imports paid once): median CPU-s of a call and of its compute."""
    env = {**os.environ, "PYTHONPATH": str(source), "ATTRCLI_THREADS": "1", "OMP_NUM_THREADS": "1",
           "BENCH_ARGS": json.dumps(args), "BENCH_REPEAT": str(repeat), "BENCH_DIR": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, "-c", INPROC], env=env, capture_output=True, text=True,
                          cwd=tempfile.gettempdir())  # not the checkout: ``python -c`` puts the cwd first
    if done.returncode != 0:
        raise RuntimeError(f"in-process calls failed: {done.stderr.strip().splitlines()[-1:]}")
    cpu, compute, found = done.stdout.split("INPROC", 1)[1].split()
    if not Path(found).resolve().is_relative_to(source):
        raise RuntimeError(f"imported attrcli from {found}, not from {source}")
    cpu, compute = float(cpu), float(compute)
    return {"call_cpu_s": cpu, "compute_cpu_s": compute, "fixed_cpu_s": cpu - compute}


def child_cpu(args: list[str], env: dict[str, str], *, code: str = CHILD, source: Path | None = None) -> tuple[float, float]:
    """CPU seconds of one child process and the compute it reported (0 if none)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", code], env={**env, "BENCH_ARGS": json.dumps(args)},
                          capture_output=True, text=True, cwd=tempfile.gettempdir())  # the cwd would come first
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"call failed: {done.stderr.strip().splitlines()[-1:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("COMPUTE ")]
    if found and source is not None and not Path(found[0][1]).resolve().is_relative_to(source):
        raise RuntimeError(f"imported attrcli from {found[0][1]}, not from {source}")
    return cpu, (float(found[0][0]) if found else 0.0)


def setup(work: Path, model: str, cell: int) -> tuple[Path, Path]:
    """A random grid file and a weights file of ``model`` (fixed-seed random weights)."""
    import torch

    import _baseline_work
    from attrcli.models import create_model

    adapter = create_model(model, weights="random")
    weights = work / f"{model}.pt"
    torch.save(adapter.module.state_dict(), weights)
    import dataclasses

    grid = _baseline_work.random_grid_file(work / "grid.h5", dataclasses.replace(adapter, cell_size=cell),
                                           variant="distinct", count=1)
    return grid, weights


def measure(source: Path, args: list[str], repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source), "ATTRCLI_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child_cpu(args, env, source=source)  # untimed: OS file cache, weights-hash cache
    runs = [child_cpu(args, env, source=source) for _ in range(repeat)]
    cpu = statistics.median(r[0] for r in runs)
    compute = statistics.median(r[1] for r in runs)
    return {"call_cpu_s": cpu, "compute_cpu_s": compute, "fixed_cpu_s": cpu - compute}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, action="append", default=[], help="another attrcli checkout to time")
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--cell-size", type=int, default=224)
    parser.add_argument("--setting", default="gridpg")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args(argv)
    sources = [HERE, *[s.resolve() for s in args.source]]
    with tempfile.TemporaryDirectory(prefix="bench_fixed_") as tmp:
        work = Path(tmp)
        grid, weights = setup(work, args.model, args.cell_size)
        time.sleep(2.5)  # the weights file settles (attrcli.store.hashcache.SETTLED_NS)
        call = ["attribute", "--grids", str(grid), "--setting", args.setting, "--model", args.model,
                "--weights", str(weights), "--layer", "final", "--method", "grad", "--device", "cpu",
                "--cache-dir", str(work / "cache"), "--force", "--quiet"]
        env = {**os.environ, "ATTRCLI_THREADS": "1", "OMP_NUM_THREADS": "1"}
        torch_cpu = statistics.median(child_cpu([], env, code="import torch")[0] for _ in range(args.repeat))
        rows = {str(source): measure(source, call, args.repeat) for source in sources}
        import _study_models

        study = ["attribute", "--grids", str(grid), "--setting", args.setting,
                 "--model", _study_models.spec(_study_models.model_name(args.model, args.cell_size)),
                 "--layer", "final", "--method", "grad", "--device", "cpu", "--batch-size", "8",
                 "--cache-dir", str(work / "cache-inproc"), "--force", "--quiet"]
        inproc = {str(source): in_process(source, study, 2 * args.repeat + 1) for source in sources}
    report = {"model": args.model, "cell_size": args.cell_size, "setting": args.setting, "repeat": args.repeat,
              "import_torch_cpu_s": torch_cpu, "load_average": os.getloadavg(), "sources": rows,
              "in_process": inproc}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_fixed_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| attrcli | call CPU-s | key compute CPU-s | fixed cost CPU-s |", "|---|---:|---:|---:|"]
    for source, row in rows.items():
        lines.append(f"| {source} | {row['call_cpu_s']:.2f} | {row['compute_cpu_s']:.2f} | {row['fixed_cpu_s']:.2f} |")
    lines.append(f"| `python -c 'import torch'` | {torch_cpu:.2f} | | |")
    lines += ["", "In one process (bench_study.py's per-key call):", "",
              "| attrcli | call CPU-s | key compute CPU-s | fixed cost CPU-s |", "|---|---:|---:|---:|"]
    for source, row in inproc.items():
        lines.append(f"| {source} | {row['call_cpu_s']:.3f} | {row['compute_cpu_s']:.3f} | {row['fixed_cpu_s']:.3f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
