"""Benchmark: torch threads for the digits models, on a quiet machine and next to other work.

Issue 19, section 5: with torch's default of one thread per core, training ``digits-vgg11`` on
a busy 2-core machine did not finish in 400 s, while one thread took 102 s. attrcli now runs
small work on one thread (:mod:`attrcli.threads`). This measures, for 1 and 2 threads and for
attrcli's own choice ("policy"):

- training both digits models from scratch (the recipe of :mod:`attrcli.models.digits`);
- a digits ``attribute``: digits-vgg11, GridPG, 32 grids of 2×2 digits cells, six methods at
  input, middle and final (its fixed-seed random weights and random grid images: the cost
  does not depend on their values, and nothing needs training first);

each once on the quiet machine and once next to one competing CPU-bound process (a Python busy
loop). Every measurement runs in a fresh subprocess with ``ATTRCLI_THREADS`` (and
``OMP_NUM_THREADS``) set to the thread count, or unset for the policy, and reports its own wall
time and CPU time, imports excluded. Bar: with the competing process, training both models
under the policy takes at most about 2.5× its quiet time (a fair share of 2 cores is 2×).

Run it on an otherwise idle machine; it takes several minutes (``--quick``: one epoch, four
grids and one method, a smoke test of the script itself, seconds).

    python benchmarks/bench_threads.py            # writes benchmarks/out/bench_threads.json
    python benchmarks/bench_threads.py --quick    # writes benchmarks/out/bench_threads_quick.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "out"
REPO = Path(__file__).resolve().parents[1]
METHODS = "grad,ixg,intgrad,gradcam,occlusion,rise"
LAYERS = "input,middle,final"
BUSY = "while True:\n    pass\n"


def _child_train(quick: bool, cache: str) -> dict:
    """Train both digits models from scratch into ``cache``; seconds per model."""
    from attrcli.models import digits

    if quick:
        for name, recipe in list(digits.RECIPES.items()):
            digits.RECIPES[name] = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=1))
    out = {}
    for name in digits.RECIPES:
        started = time.perf_counter()
        record = digits.train_digits_model(name, cache_dir=cache, force=True)
        out[name] = {"seconds": round(time.perf_counter() - started, 3), "threads": record["torch_threads"]}
    return out


def _child_attribute(quick: bool, cache: str) -> dict:
    """One digits ``attribute`` call, recomputed from scratch (``force``)."""
    import torch

    from attrcli.stages.attribute import attribute
    from attrcli.models import create_model
    from attrcli.store import write_artifact

    count = 4 if quick else 32
    grid_path = Path(cache) / "digits-random.h5"
    if not grid_path.exists():
        generator = torch.Generator().manual_seed(0)
        labels = torch.stack([torch.randperm(10, generator=generator)[:4] for _ in range(count)])
        write_artifact(grid_path, data={
            "images": torch.randn(count, 3, 64, 64, generator=generator).numpy(),
            "labels": labels.numpy(), "sources": torch.arange(count * 4).view(count, 4).numpy(),
        }, attrs={"dataset": "random", "variant": "distinct", "n": 2, "cell_size": 32, "num_classes": 10,
                  "mean": [0.5] * 3, "std": [0.25] * 3})
    seen = []
    import attrcli.engine.attribute as engine

    real = engine.compute_maps
    engine.compute_maps = lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k)
    started = time.perf_counter()
    attribute(grids=grid_path, setting="gridpg", model=create_model("digits-vgg11", weights="random"),
              layers="input" if quick else LAYERS, methods="grad" if quick else METHODS, batch_size=32,
              cache_root=Path(cache) / "cache", force=True, device="cpu")
    return {"seconds": round(time.perf_counter() - started, 3), "threads": max(seen)}


def child(task: str, quick: bool, cache: str) -> None:
    """Run one measurement and print it as JSON (wall and CPU seconds of the work alone)."""
    import attrcli.models  # noqa: F401  (imports are not part of the measurement)

    cpu = time.process_time()
    result = _child_train(quick, cache) if task == "train" else _child_attribute(quick, cache)
    result = {"result": result, "cpu_seconds": round(time.process_time() - cpu, 3)}
    print(json.dumps(result))


def measure(task: str, threads: int | None, loaded: bool, quick: bool, cache: str) -> dict:
    """One measurement in a fresh process, with a busy competitor alongside when ``loaded``."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATTRCLI_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if threads is not None:
        env.update(ATTRCLI_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    competitor = subprocess.Popen([sys.executable, "-c", BUSY]) if loaded else None
    try:
        if competitor is not None:
            time.sleep(1.0)  # let it reach full speed
        load = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", task, "--cache", cache] + (["--quick"] if quick else []),
                              env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if done.returncode != 0:
        raise SystemExit(f"{task} with threads={threads} failed:\n{done.stderr}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = report["result"]
    seconds = result["seconds"] if task == "attribute" else sum(r["seconds"] for r in result.values())
    return {"task": task, "threads": threads or "policy", "loaded": loaded, "seconds": round(seconds, 3),
            "cpu_seconds": report["cpu_seconds"], "process_seconds": round(wall, 3), "load_average_before": load,
            "detail": result}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch, four grids, one method: checks the script")
    parser.add_argument("--child", choices=("train", "attribute"), help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick, args.cache)
        return {}

    from attrcli.threads import SMALL_WORK, usable_cores

    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for task in ("train", "attribute"):
            for threads in (1, 2, None):
                for loaded in (False, True):
                    row = measure(task, threads, loaded, args.quick, cache)
                    rows.append(row)
                    print(f"{task:>9}  threads {str(row['threads']):>6}  {'loaded' if loaded else 'quiet':>6}  "
                          f"{row['seconds']:8.2f} s  cpu {row['cpu_seconds']:8.2f} s", flush=True)

    def seconds(task: str, threads, loaded: bool) -> float:
        return next(r["seconds"] for r in rows if (r["task"], r["threads"], r["loaded"]) == (task, threads, loaded))

    ratios = {f"{task}/{threads}": round(seconds(task, threads, True) / seconds(task, threads, False), 2)
              for task in ("train", "attribute") for threads in (1, 2, "policy")}
    bar = ratios["train/policy"] <= 2.5
    results = {
        "machine": {"cpus": os.cpu_count(), "usable_cores": usable_cores(), "python": platform.python_version(),
                    "torch": __import__("torch").__version__, "small_work_macs": SMALL_WORK,
                    "max_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)},
        "quick": args.quick, "rows": rows, "loaded_over_quiet": ratios,
        "bar": {"train_policy_loaded_over_quiet_at_most": 2.5, "met": bar},
    }
    for name, ratio in ratios.items():
        print(f"loaded / quiet  {name:<18} {ratio:5.2f}")
    print(f"bar (training, policy, loaded <= 2.5x quiet): {'met' if bar else 'NOT met'}")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("bench_threads_quick.json" if args.quick else "bench_threads.json")
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
