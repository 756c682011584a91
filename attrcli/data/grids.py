"""Grid images (SPEC §1): n×n cells of whole held-out images the models classify confidently.

*distinct* grids (GridPG) hold n² images of n² distinct classes. *corners* grids (DiFull and
DiPart) hold two different images of one class at the top-left and bottom-right cells and
images of other classes elsewhere (distinct classes when the pool has enough of them). Only
images that every model of the filter classifies correctly with softmax confidence ≥
``min_conf`` enter a grid (supplement I.1: confidence 0.99). No image repeats inside a grid;
across the grids of one file every image is used once while the pool allows, after that the
least used images are reused and the file records how many were (as CIFAR10 in I.1 does).
The construction is seeded, so the same arguments give the same grids.

This module is the grid maths (which images, in which cells); the ``make-grids`` stage that
loads the models and writes the files is :mod:`attrcli.stages.make_grids`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from attrcli.data.datasets import DatasetSpec, Pool, normalize
from attrcli.errors import UserError
from attrcli.names import GRID_VARIANTS as VARIANTS
from attrcli.progress import Progress
from attrcli.store import content_hash


def resolve_variants(variant: str | Sequence[str]) -> tuple[str, ...]:
    """``"both"`` or a variant name (or a list of them) to a tuple of variant names."""
    items = [variant] if isinstance(variant, str) else list(variant)
    out: list[str] = []
    for item in items:
        for name in VARIANTS if item == "both" else [item]:
            if name not in VARIANTS:
                raise UserError(f"unknown grid variant {name!r}; valid: {', '.join(VARIANTS)}, both")
            if name not in out:
                out.append(name)
    if not out:
        raise UserError(f"no grid variant given; valid: {', '.join(VARIANTS)}, both")
    return tuple(out)


def confident(pool: Pool, adapters: Sequence, *, min_conf: float, batch_size: int = 256,
              device: str | torch.device = "cpu", progress: Progress | None = None) -> np.ndarray:
    """``(models, images)`` bool: model m classifies image i correctly with confidence ≥ min_conf.

    The pool is streamed in batches; each batch is read once per cell size and normalised per
    model with that model's mean and std.
    """
    results: list[list[torch.Tensor]] = [[] for _ in adapters]
    sizes = sorted({int(a.cell_size) for a in adapters})
    with torch.inference_mode():
        for start in range(0, len(pool), batch_size):
            positions = np.arange(start, min(start + batch_size, len(pool)))
            labels = torch.from_numpy(pool.labels[positions]).to(device)
            for size in sizes:
                images = pool.images(positions, size).to(device)
                for m, adapter in enumerate(adapters):
                    if int(adapter.cell_size) != size:
                        continue
                    probs = adapter.logits(normalize(images, adapter.mean, adapter.std)).float().softmax(1)
                    conf = probs.gather(1, labels[:, None])[:, 0]
                    results[m].append((probs.argmax(1) == labels) & (conf >= min_conf))
            if progress:
                progress(f"classifying {pool.dataset} images", int(positions[-1]) + 1, len(pool))
    if not len(pool):
        return np.zeros((len(adapters), 0), dtype=bool)
    return np.stack([torch.cat(r).cpu().numpy() for r in results])


class _Draw:
    """Hands out pool positions class by class: unused images first, then the least used."""

    def __init__(self, labels: np.ndarray, eligible: np.ndarray, rng: np.random.Generator) -> None:
        self.rng = rng
        self.classes = np.unique(labels[eligible])
        self.members = {int(c): rng.permutation(eligible[labels[eligible] == c]) for c in self.classes}
        self.uses = {c: np.zeros(len(m), dtype=np.int64) for c, m in self.members.items()}

    def size(self, c: int) -> int:
        return len(self.members[c])

    def fresh(self, c: int) -> int:
        return int((self.uses[c] == 0).sum())

    def take(self, c: int, taken: list[int]) -> int:
        """The least used image of class ``c`` not in ``taken`` (in the class's shuffled order)."""
        uses = np.where(np.isin(self.members[c], taken), np.iinfo(np.int64).max, self.uses[c])
        i = int(np.argmin(uses))
        self.uses[c][i] += 1
        return int(self.members[c][i])

    def reused(self) -> int:
        return int(sum((u > 1).sum() for u in self.uses.values()))

    def choose(self, candidates: Sequence[int], k: int, need: int = 1) -> list[int]:
        """``k`` distinct classes: those with ≥ ``need`` unused images first, drawn with
        probability proportional to their unused images (which delays reuse), then any."""
        candidates = list(candidates)
        fresh = np.array([self.fresh(c) for c in candidates], dtype=float)
        first = [c for c, f in zip(candidates, fresh) if f >= need]
        weights = np.array([f for f in fresh if f >= need])
        picked = []
        if first:
            picked = list(self.rng.choice(first, min(k, len(first)), replace=False, p=weights / weights.sum()))
        rest = [c for c in candidates if c not in picked]
        if len(picked) < k:
            picked += list(self.rng.choice(rest, size=k - len(picked), replace=False))
        return [int(c) for c in picked]

    def distinct(self, n: int) -> list[int]:
        classes = self.rng.permutation(self.choose(self.classes, n * n))
        taken: list[int] = []
        for c in classes:
            taken.append(self.take(int(c), taken))
        return taken

    def corners(self, n: int) -> list[int]:
        total = sum(self.size(c) for c in self.members)
        valid = [c for c in self.members if self.size(c) >= 2 and total - self.size(c) >= n * n - 2]
        corner = self.choose(valid, 1, need=2)[0]
        taken = [self.take(corner, [])]
        taken.append(self.take(corner, taken))
        others: list[int] = []
        while len(others) < n * n - 2:
            # Distinct classes per round; classes repeat only when there are too few of them.
            left = [c for c in self.members if c != corner and self.size(c) > others.count(c)]
            others.extend(self.choose(left, min(n * n - 2 - len(others), len(left))))
        middle: list[int] = []
        for c in self.rng.permutation(others):
            middle.append(self.take(int(c), taken + middle))
        return [taken[0], *middle, taken[1]]


def plan_grids(labels: np.ndarray, eligible: np.ndarray, *, variant: str, n: int,
               count: int | None, seed: int) -> tuple[np.ndarray, int]:
    """Pool positions ``(count, n²)`` of each grid's cells (row-major), and how many images were
    reused. ``count=None`` builds as many grids as the pool fills without reuse.

    The caller checks feasibility first (:func:`check_pool`).
    """
    draw = _Draw(labels, np.asarray(eligible, dtype=np.int64), np.random.default_rng(seed))
    build = draw.distinct if variant == "distinct" else draw.corners
    grids: list[list[int]] = []
    while count is None or len(grids) < count:
        grid = build(n)
        if count is None and draw.reused():
            return np.array(grids, dtype=np.int64).reshape(len(grids), n * n), 0
        grids.append(grid)
    return np.array(grids, dtype=np.int64).reshape(len(grids), n * n), draw.reused()


def check_classes(labels: np.ndarray, *, dataset: str, variant: str, n: int) -> None:
    """Fail early when the dataset has too few classes for the grids asked (before any model)."""
    classes = len(np.unique(labels))
    if variant == "distinct" and classes < n * n:
        fits = int(np.sqrt(classes))
        valid = f"use --n {fits} or less, or --variant corners" if fits >= 2 else "use --variant corners"
        raise UserError(
            f"distinct {n}×{n} grids need {n * n} distinct classes, {dataset} has {classes}; {valid}"
        )
    if variant == "corners" and classes < 2:
        raise UserError(f"corner grids need at least 2 classes, {dataset} has {classes}")


def check_pool(labels: np.ndarray, eligible: np.ndarray, *, variant: str, n: int, who: str,
               min_conf: float, dataset: str) -> None:
    """Fail when the confident images cannot fill even one grid (with reuse, any count fits)."""
    counts = np.bincount(labels[eligible]) if len(eligible) else np.zeros(0, dtype=np.int64)
    passed = (
        f"{len(eligible)} of {len(labels)} {dataset} images pass (classified correctly by {who} "
        f"with confidence ≥ {min_conf:g})"
    )
    if variant == "distinct":
        classes = int((counts > 0).sum())
        if classes < n * n:
            raise UserError(
                f"distinct {n}×{n} grids need confident images of {n * n} classes, only {classes} "
                f"classes have any: {passed}; lower --min-conf or --n"
            )
        return
    total = len(eligible)
    if counts.size == 0 or counts.max() < 2:
        raise UserError(
            f"corner grids need 2 confident images of one class, no class has 2: {passed}; "
            "lower --min-conf"
        )
    if not any(c >= 2 and total - c >= n * n - 2 for c in counts):
        raise UserError(
            f"corner {n}×{n} grids need 2 confident images of one class and {n * n - 2} of other "
            f"classes, no class leaves that many: {passed}; lower --min-conf or --n"
        )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=,:@-]", "_", name)


def grid_name(*, spec: DatasetSpec, root: Path | None, variant: str, n: int, count: int | None,
              min_conf: float, seed: int, models: Sequence[str]) -> str:
    """``<dataset>-<variant>-n<n>`` plus every non-default setting, so that files made with
    different arguments never overwrite each other (``digits-corners-n2-count50-seed3``).

    A folder dataset adds the folder's name and a short hash of its absolute path; models other
    than the dataset's defaults are appended joined by ``+``.
    """
    base = spec.name
    if spec.name == "folder" and root is not None:
        where = Path(root).expanduser().resolve()
        base = f"{base}-{where.name}-{content_hash(str(where))[:6]}"
    parts = [base, variant, f"n{n}"]
    if count is not None and count != spec.counts.get(variant):
        parts.append(f"count{count}")
    if min_conf != 0.99:
        parts.append(f"conf{float(min_conf)!r}")
    if seed != 0:
        parts.append(f"seed{seed}")
    if tuple(models) != tuple(spec.models):
        parts.append("+".join(models))
    return _safe("-".join(parts))


def assemble(pool: Pool, positions: np.ndarray, *, n: int, cell_size: int, mean: Sequence[float],
             std: Sequence[float], batch_size: int = 256, progress: Progress | None = None,
             label: str = "grids") -> np.ndarray:
    """Normalised grid images ``(G, 3, n·c, n·c)`` from pool positions ``(G, n²)`` (row-major)."""
    count, c = len(positions), cell_size
    out = np.empty((count, 3, n * c, n * c), dtype=np.float32)
    per = max(1, batch_size // (n * n))
    for start in range(0, count, per):
        block = positions[start : start + per]
        cells = normalize(pool.images(block.reshape(-1), c), mean, std)
        b = len(block)
        grid = cells.reshape(b, n, n, 3, c, c).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, n * c, n * c)
        out[start : start + b] = grid.cpu().numpy()
        if progress:
            progress(f"building {label}", start + b, count)
    return out
