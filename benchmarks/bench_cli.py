"""How long the command line takes to answer without computing: ``attrcli --help``, a command's
help, ``status`` of an empty cache, beside ``import torch`` for scale.

Each is run ``--repeat`` times in a fresh interpreter; the median wall time is reported. Run it
on a quiet machine: ``python benchmarks/bench_cli.py``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "attrcli --help": ["-m", "attrcli.cli.main", "--help"],
    "attrcli attribute --help": ["-m", "attrcli.cli.main", "attribute", "--help"],
    "attrcli score --help": ["-m", "attrcli.cli.main", "score", "--help"],
    "attrcli status (empty cache)": ["-m", "attrcli.cli.main", "status", "--cache-dir", "{tmp}"],
    "python -c 'import torch' (reference)": ["-c", "import torch"],
}


def median_seconds(args: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| command | median wall (s) |\n|---|---:|")
        for label, args in CASES.items():
            seconds = median_seconds([a.replace("{tmp}", tmp) for a in args], options.repeat)
            print(f"| {label} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
