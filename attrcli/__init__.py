"""attrcli: evaluate attribution methods on GridPG, DiFull and DiPart (Rao, Böhle & Schiele, CVPR 2022).

The library behind the command line, for notebooks and scripts (every function keyword-only,
returning data, never printing or exiting; stages cached as on the command line)::

    import attrcli

    attrcli.attribute(grids="data/grids/digits-distinct.h5", model="digits-vgg11",
                      layers="input,final", methods="grad,gradcam")
    frame = attrcli.scores(grids="digits-distinct", cache_root="cache")  # one row per attribution
    table = attrcli.summary(grids="digits-distinct", cache_root="cache")  # one row per key

Stages: :func:`make_grids`, :func:`attribute`, :func:`score`, :func:`aggatt`, :func:`correlate`,
:func:`compare`, :func:`run`. Readers: :func:`scores`, :func:`summary`, :func:`correlations`,
:func:`comparisons` (pandas DataFrames when pandas is installed, numpy structured arrays
otherwise; columns in docs/artifacts.md). ``import attrcli`` is light: torch and the other heavy
libraries load when a function needs them (the functions live in :mod:`attrcli.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The public API, in pipeline order; each name is a function of :mod:`attrcli.api`.
_API = (
    "make_grids", "attribute", "score", "aggatt", "correlate", "compare", "run",
    "scores", "summary", "correlations", "comparisons",
)

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """The API's functions, imported on first use (so ``import attrcli`` loads no torch)."""
    if name in _API:
        from attrcli import api

        return getattr(api, name)
    raise AttributeError(f"module 'attrcli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
