"""Registering a method puts it under every generic test, without editing a test list.

The toy method (tests/structure/toy_method.py) is registered by tests/conftest.py only. A pytest
run in a subprocess collects the whole suite, keeps the items of the generic tests (marked
``generic``) and runs those parametrised with the toy: each generic test function must have such
an item, and all of them must pass. The product's own registry never holds the toy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from attrcli.methods import METHODS
from tests.structure.toy_method import NAME, TEST_ONLY, product_methods

ROOT = Path(__file__).resolve().parents[2]

PROBE = '''
import json, os

def pytest_collection_modifyitems(config, items):
    generic = [item for item in items if item.get_closest_marker("generic")]
    with open(os.environ["GENERIC_PROBE_OUT"], "w") as out:
        json.dump([item.nodeid for item in generic], out)
    toy = os.environ["GENERIC_PROBE_TOY"]
    keep = [item for item in generic if hasattr(item, "callspec") and toy in item.callspec.id]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep
'''


def test_the_toy_method_is_registered_for_the_tests_only():
    assert NAME in METHODS.names() and TEST_ONLY <= set(METHODS.names())
    outside = subprocess.run(
        [sys.executable, "-c", "import json; from attrcli.methods import METHODS; print(json.dumps(METHODS.names()))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    assert json.loads(outside.stdout) == product_methods()


@pytest.mark.slow
def test_every_generic_test_picks_up_the_toy_method_and_it_passes(tmp_path):
    (tmp_path / "generic_probe.py").write_text(PROBE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "GENERIC_PROBE_OUT": str(tmp_path / "items.json"),
           "GENERIC_PROBE_TOY": NAME}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "generic_probe", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    generic = json.loads((tmp_path / "items.json").read_text())
    functions = {nodeid.partition("[")[0] for nodeid in generic}
    assert len(functions) >= 5, functions  # the tests marked generic (tests/methods/test_generic_methods.py)
    with_toy = {nodeid.partition("[")[0] for nodeid in generic if NAME in nodeid.partition("[")[2]}
    assert with_toy == functions, f"generic tests without a toy item: {sorted(functions - with_toy)}"
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    passed = {line.split()[1].partition("[")[0] for line in run.stdout.splitlines() if line.startswith("PASSED ")}
    assert passed == functions, sorted(functions - passed)
