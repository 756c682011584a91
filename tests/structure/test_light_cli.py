"""The command line answers help, ``models``, ``plan``-free listings and ``status`` of a cached
project without importing the heavy libraries it does not need there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "scipy", "matplotlib", "captum", "zennit", "sklearn")
PROBE = """
import json, sys
args, watched = json.loads(sys.argv[1]), json.loads(sys.argv[2])
from attrcli.cli.main import main
sys.argv = ["attrcli", *args]
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in watched if m in sys.modules)
print("PROBE", json.dumps({"code": code, "heavy": heavy}))
"""


def _probe(args: list[str], heavy: tuple[str, ...] = HEAVY, cwd: Path | None = None) -> dict:
    """Run the CLI in a fresh interpreter and report its exit code and the heavy modules loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(list(heavy))],
        capture_output=True, text=True, timeout=120, cwd=cwd,
    )
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    assert line, done.stderr[-2000:]
    found = json.loads(line[-1][len("PROBE "):])
    found["stdout"] = done.stdout[: done.stdout.rindex("PROBE ")]
    return found


COMMANDS = ("make-grids", "import-grids", "attribute", "score", "aggatt", "correlate", "compare",
            "plot", "run", "models", "launch", "plan", "merge", "status")


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in COMMANDS]], ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    found = _probe(args)
    assert (found["code"], found["heavy"]) == (0, []) and "Usage" in found["stdout"]


def test_the_probe_sees_what_is_loaded() -> None:
    """The check can fail: modules the CLI does load are reported (rich draws every help)."""
    found = _probe(["--help"], heavy=("rich", "typer", "torch"))
    assert (found["code"], found["heavy"]) == (0, ["rich", "typer"])


def test_status_of_a_cached_project_needs_no_torch(tmp_path: Path) -> None:
    import numpy as np

    from attrcli.store import ArtifactKey, write_artifact

    cache = tmp_path / "cache"
    for stage in ("attributions", "scores"):
        key = ArtifactKey(stage, "toy", "gridpg", "tiny", "input", "grad")
        write_artifact(key.path(cache), data={"maps": np.zeros((1, 4, 2, 2), np.float32)},
                       provenance={"inputs": {"grids": "0"}, "config": {}})
    found = _probe(["status", "--cache-dir", str(cache), "--json"], cwd=tmp_path)
    assert found["code"] == 0 and "torch" not in found["heavy"] and "scipy" not in found["heavy"]
    (group,) = json.loads(found["stdout"])
    assert (group["grids"], group["attributions"], group["scores"], group["corrupt"]) == ("toy", 1, 1, 0)
