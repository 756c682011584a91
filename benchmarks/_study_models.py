"""The models of ``bench_study.py``, handed to ``attrcli attribute --model _study_models:NAME``.

A user's model is given to the CLI as ``module:attr``, a zero-argument factory returning a
:class:`~attrcli.models.adapter.ModelAdapter`; this module makes one for any NAME of the form
``<registered model>-c<cell size>`` or ``<registered model>-c<cell size>-cap<k>``:

- the registered model with its fixed-seed random weights (``create_model(..., weights="random")``,
  what ``--weights random`` gives), with ``cell size`` pixels per grid cell (``vgg11-c224`` is
  the registered model as it is; ``vgg11-c112`` the same network on 112-pixel cells, for
  ``--quick``: both models adapt their pooling to the input size);
- ``-cap<k>``: the middle and final layers keep their first ``k`` channels
  (``_baseline_work.capped``, applied to both), so Score-CAM and Ablation-CAM make ``k``
  perturbations there instead of one per channel, each of unchanged cost.

Factories are memoised: every CLI call and the loop get the same adapter object (the same
weights), built once per process, so no call pays for drawing 133 M random weights again, nor
for hashing them: the adapter carries the ``weights_hash`` ``create_model`` computed, and a
factory's own hash is kept (``attrcli.models.weights_hash``).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _baseline_work import capped

NAME = re.compile(r"^(?P<model>[a-z0-9]+)-c(?P<cell>[1-9][0-9]*)(?:-cap(?P<cap>[1-9][0-9]*))?$")
CAPPED_LAYERS = ("middle", "final")
_built: dict[str, object] = {}


def model_name(model: str, cell_size: int, cap: int | None = None) -> str:
    """The factory name of ``model`` on ``cell_size``-pixel cells (``cap``: channel cap)."""
    name = f"{model}-c{cell_size}" + (f"-cap{cap}" if cap else "")
    if not NAME.match(name):
        raise ValueError(f"no study model for {model!r}: registered names of letters and digits only")
    return name


def spec(name: str) -> str:
    """The CLI's ``--model`` value for factory ``name``."""
    return f"{__name__}:{name}"


def _layer_channels(adapter, layer: str) -> int:
    index = adapter.layer_index(layer)
    with torch.no_grad():
        x = torch.zeros(1, 3, adapter.cell_size, adapter.cell_size)
        return int(adapter.run_blocks(x, -1, index).shape[1])


def build(name: str):
    """The adapter that factory ``name`` returns (memoised)."""
    if name in _built:
        return _built[name]
    found = NAME.match(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no model {name!r}; names look like vgg11-c224 or vgg11-c112-cap8")
    from attrcli.models import create_model

    base_name = f"{found['model']}-c{found['cell']}"
    if found["cap"] is None:
        adapter = create_model(found["model"], weights="random", device="cpu")
        adapter = dataclasses.replace(adapter, name=name, cell_size=int(found["cell"]))
    else:
        adapter = build(base_name)
        cap = int(found["cap"])
        for layer in CAPPED_LAYERS:
            channels = _layer_channels(adapter, layer)
            if cap < channels:
                adapter = capped(adapter, layer, cap, channels)
        adapter = dataclasses.replace(adapter, name=name)
    _built[name] = adapter
    return adapter


def __getattr__(name: str) -> Callable[[], object]:
    """``_study_models.<NAME>``: the zero-argument factory the CLI calls."""
    if name.startswith("__") or NAME.match(name) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def factory():
        return build(name)

    factory.__doc__ = f"{name}: random weights, bench_study.py"
    return factory
