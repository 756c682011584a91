"""A small study made in the tests: a random tiny VGG on four 2×2 grid images, attributed,
scored, AggAtt'd, correlated and compared through the public API (a few seconds on a CPU)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

METHODS = {"input": "grad,gradcam,ixg,occlusion:k=16,s=16", "final": "grad,gradcam,ixg"}  # 7 keys


@dataclass
class TinyStudy:
    grid: Path
    cache: Path
    attributions: list[Path]
    scores: list[Path]
    aggatts: list[Path]
    correlation: Path
    comparison: Path
    figures: list[Path] = field(default_factory=list)


def make_tiny_study(root: Path, *, resamples: int = 200) -> TinyStudy:
    """The study under ``root`` (grid file in ``root/data/grids``, artifacts in ``root/cache``)."""
    import torch

    import attrcli
    from tests.engine.helpers import tiny_vgg, write_grids

    grid = write_grids(root / "data" / "grids" / "tiny.h5", count=4)
    cache = root / "cache"
    model = tiny_vgg(dtype=torch.float32)
    attributed = [result for layer, methods in METHODS.items()
                  for result in attrcli.attribute(grids=grid, model=model, setting="gridpg", layers=layer,
                                                  methods=methods, cache_root=cache, batch_size=4)]
    scored = attrcli.score(attributions=attributed, cache_root=cache, resamples=resamples)
    aggatts = attrcli.aggatt(paths=attributed, cache_root=cache)
    correlation = attrcli.correlate(scores=scored, cache_root=cache, resamples=resamples)
    inputs = [s for s in scored if s.key.layer == "input"]
    comparison = attrcli.compare(scores=inputs, cache_root=cache, resamples=resamples)
    return TinyStudy(grid, cache, [r.path for r in attributed], [r.path for r in scored],
                     [r.path for r in aggatts], correlation.path, comparison.path)


@functools.cache
def shared_tiny_study() -> TinyStudy:
    """One tiny study per test session (in a temporary folder removed at exit), for the tests
    that only read it."""
    root = Path(tempfile.mkdtemp(prefix="attrcli-tiny-study-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_tiny_study(root)
