"""The localization score of the Grid Pointing Game (supplement H.3), computed in bounded memory.

Each stored map (layer resolution, signed) is upsampled bilinearly to the grid's pixel size and
only then clamped at zero, in that order: a map that is exactly zero outside its cell at a hidden
layer still leaks a thin border after upsampling. The score of a target is the positive
attribution inside its cell divided by the positive attribution over the whole grid, and 0 where
that total is 0 (an all-negative map). The numerator is kept: AggAtt breaks ties with it.

The pointing game (Zhang et al., "Top-down neural attention by excitation backprop", ECCV 2016;
on the grids: the maximum of the map must lie in the target cell) is decided on the same
upsampled, clamped map (:func:`pointing_hits`). Ties: a target is a *hit* when the map's maximum
is positive and every pixel that attains it lies inside the target cell; a maximum shared with a
pixel outside the cell (a tie across the border), a maximum on the pixels that belong to no cell,
and a map without positive attribution (all maxima tie at 0) are *misses*. The localization score
itself is the energy-based pointing game (Wang et al., Score-CAM, CVPRW 2020) restricted to the
cell.

Maps are processed a chunk of grid images at a time, so memory stays bounded whatever the number
of maps; per-pixel work is float32, the per-cell totals are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from attrcli.errors import UserError
from attrcli.progress import Progress

#: Bytes of upsampled float32 maps held at once (the peak is a small multiple of this). Kept
#: under glibc's largest mmap threshold (32 MiB) so chunk buffers are reused, not re-faulted.
CHUNK_BYTES = 24 * 2**20


class MapSource(Protocol):
    """Anything sliceable along the first axis into a float array: an ndarray or h5py dataset."""

    shape: tuple[int, ...]

    def __getitem__(self, index: slice) -> np.ndarray: ...


def upsample_positive(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, T, h, w)`` maps to ``(B, T, size, size)``: bilinear upsampling, then negatives dropped.

    ``align_corners=False`` (pixel centres), as torchvision and pytorch-grad-cam resize maps. Maps
    already at ``size`` are only clamped.
    """
    b, t, h, w = maps.shape
    flat = maps.reshape(b * t, 1, h, w).float()
    if (h, w) == (size, size):
        return flat.clamp(min=0).reshape(b, t, size, size)
    up = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return up.clamp_(min=0).reshape(b, t, size, size)


def cell_sums(positive: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell and whole-grid sums of ``(B, T, S, S)`` maps: float64 ``(B, T, n, n)``, ``(B, T)``.

    Cells are ``S // n`` pixels wide, row-major; pixels beyond ``n * (S // n)`` (only when ``n``
    does not divide ``S``) belong to no cell but count in the total.
    """
    b, t, size, _ = positive.shape
    cp = size // n
    inner = positive[..., : n * cp, : n * cp].reshape(b, t, n, cp, n, cp)
    # float32 sums along one pixel row (cp values), float64 for everything above that.
    cells = inner.sum(dim=5).double().sum(dim=3)
    if n * cp == size:
        total = cells.sum(dim=(2, 3))
    else:
        total = positive.sum(dim=3).double().sum(dim=2)
    return cells, total


def cell_maxima(positive: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell maxima ``(B, T, n, n)`` of ``(B, T, S, S)`` maps, and the maximum ``(B, T)`` over
    the pixels that belong to no cell (``-1`` when ``n`` divides ``S``: there are none)."""
    b, t, size, _ = positive.shape
    cp = size // n
    inner = positive[..., : n * cp, : n * cp].reshape(b, t, n, cp, n, cp)
    cells = inner.amax(dim=(3, 5))
    if n * cp == size:
        return cells, positive.new_full((b, t), -1.0)
    edge = torch.cat([positive[..., n * cp :, :].flatten(2), positive[..., : n * cp, n * cp :].flatten(2)], dim=2)
    return cells, edge.amax(dim=2)


def pointing_hits(
    positive: torch.Tensor, cells: np.ndarray | torch.Tensor, n: int
) -> torch.Tensor:
    """Pointing-game hits ``(B, T)`` (bool) of ``(B, T, S, S)`` upsampled positive maps.

    ``cells[t]`` is the target cell of slot ``t``. A hit: the maximum is positive and no pixel
    outside the target cell reaches it (ties across the border are misses; see the module text).
    """
    maxima, edge = cell_maxima(positive, n)
    b, t = maxima.shape[:2]
    cells = torch.as_tensor(np.asarray(cells, dtype=np.int64), device=maxima.device)
    flat = maxima.reshape(b, t, n * n)
    inside = flat[:, torch.arange(t, device=flat.device), cells]  # (B, T)
    others = flat.clone()
    others[:, torch.arange(t, device=flat.device), cells] = -1.0
    outside = torch.maximum(others.amax(dim=2), edge)
    return (inside > 0) & (inside > outside)


def chunk_rows(shape: tuple[int, ...], image_size: int, budget: int = CHUNK_BYTES) -> int:
    """How many grid images of ``(N, T, h, w)`` maps to upsample at once within ``budget`` bytes."""
    per_row = max(1, shape[1]) * image_size * image_size * 4
    return max(1, budget // per_row)


def iter_positive(
    maps: MapSource,
    *,
    image_size: int,
    slots: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    rows: int | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(first row, positive upsampled maps)`` chunk by chunk, in storage order.

    ``slots`` keeps only those target slots. Raises :class:`UserError` on NaN or inf in a map.
    """
    total = maps.shape[0]
    t = len(slots) if slots is not None else maps.shape[1]
    step = rows or chunk_rows((total, t, *maps.shape[2:]), image_size)
    for start in range(0, total, step):
        block = np.asarray(maps[start : start + step])
        if slots is not None:
            block = block[:, slots]
        tensor = torch.from_numpy(np.ascontiguousarray(block)).to(device)
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"maps contain NaN or inf (grid images {start}-{start + len(block) - 1}); "
                "recompute the attribution"
            )
        yield start, upsample_positive(tensor, image_size)


def scores_from_sums(numerators: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Numerator over total, 0 where the total is 0 (supplement H.3)."""
    out = np.zeros_like(numerators, dtype=np.float64)
    np.divide(numerators, totals, out=out, where=totals > 0)
    return out


def localization_and_pointing(
    maps: MapSource,
    *,
    cells: np.ndarray,
    n: int,
    image_size: int,
    device: torch.device | str = "cpu",
    rows: int | None = None,
    progress: Progress | None = None,
    label: str = "score",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Localization scores and numerators (float64 ``(N, T)``) and pointing-game hits (uint8
    ``(N, T)``, 1 = hit) of ``(N, T, h, w)`` maps, in one pass over the maps.

    ``cells[t]`` is the target cell (row-major in the ``n`` x ``n`` grid) of target slot ``t``.
    """
    cells = np.asarray(cells, dtype=np.int64)
    count, t = maps.shape[0], maps.shape[1]
    if cells.shape != (t,) or (cells.size and (cells.min() < 0 or cells.max() >= n * n)):
        raise UserError(f"target cells {cells.tolist()} do not fit {t} slots of a {n}x{n} grid")
    numerators = np.zeros((count, t), dtype=np.float64)
    totals = np.zeros((count, t), dtype=np.float64)
    hits = np.zeros((count, t), dtype=np.uint8)
    slot = torch.arange(t)
    row, col = torch.from_numpy(cells // n), torch.from_numpy(cells % n)
    for start, positive in iter_positive(maps, image_size=image_size, device=device, rows=rows):
        sums, total = cell_sums(positive, n)
        stop = start + len(positive)
        numerators[start:stop] = sums.cpu()[:, slot, row, col].numpy()
        totals[start:stop] = total.cpu().numpy()
        hits[start:stop] = pointing_hits(positive, cells, n).cpu().numpy()
        if progress is not None:
            progress(label, stop, count)
    if progress is not None and count == 0:
        progress(label, 0, 0)
    return scores_from_sums(numerators, totals), numerators, hits


def localization_scores(
    maps: MapSource,
    *,
    cells: np.ndarray,
    n: int,
    image_size: int,
    device: torch.device | str = "cpu",
    rows: int | None = None,
    progress: Progress | None = None,
    label: str = "score",
    pointing: bool = False,
) -> tuple[np.ndarray, ...]:
    """Localization scores and numerators, both float64 ``(N, T)``, of ``(N, T, h, w)`` maps;
    with ``pointing`` also the pointing-game hits (:func:`localization_and_pointing`).

    ``cells[t]`` is the target cell (row-major in the ``n`` x ``n`` grid) of target slot ``t``.
    """
    found = localization_and_pointing(
        maps, cells=cells, n=n, image_size=image_size, device=device, rows=rows,
        progress=progress, label=label,
    )
    return found if pointing else found[:2]
