"""Small per-key images for the HTML report, as PNG bytes: the six AggAtt bins of a key
(supplement H.4) and the median example of each bin (grid image and map), each tile at most
:data:`TILE` pixels wide, drawn with numpy and zlib (no figure, no metadata: the same artifacts
give the same bytes).
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np

from attrcli.store import read_artifact

TILE = 48  # largest side of a tile, pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    """An RGB ``uint8 (H, W, 3)`` array as a PNG file (deterministic: zlib level 9, no metadata)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _shrink(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Area-average ``image`` (H, W[, C]) by the smallest integer factor that fits ``tile``."""
    factor = max(1, math.ceil(max(image.shape[:2]) / tile))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    cut = image[:h, :w]
    return cut.reshape(h // factor, factor, w // factor, factor, *cut.shape[2:]).mean(axis=(1, 3))


_LUT: np.ndarray | None = None


def _colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] through the viridis colour map (as the figures draw maps), uint8 RGB."""
    global _LUT
    if _LUT is None:
        from matplotlib import colormaps

        _LUT = np.round(colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return _LUT[np.clip(np.round(np.nan_to_num(values) * 255), 0, 255).astype(np.int64)]


def _outline(tile: np.ndarray, cell: int, n: int) -> np.ndarray:
    """Draw the target cell's border in white on an RGB tile."""
    out = tile.copy()
    side = out.shape[0] / n
    r, c = divmod(cell, n)
    top, left = int(round(r * side)), int(round(c * side))
    bottom, right = min(out.shape[0], int(round((r + 1) * side))) - 1, min(out.shape[1], int(round((c + 1) * side))) - 1
    out[[top, bottom], left:right + 1] = 255
    out[top:bottom + 1, [left, right]] = 255
    return out


def _strip(tiles: list[np.ndarray | None], size: int, gap: int = 3) -> np.ndarray:
    """Tiles side by side on white, ``gap`` pixels apart; None is a light grey (empty) tile."""
    out = np.full((size, len(tiles) * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        x = i * (size + gap)
        if tile is None:
            out[:, x:x + size] = 235
        else:
            out[: tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def aggatt_strip(path: Path) -> tuple[bytes, list[int]]:
    """The six AggAtt bins of an artifact as one PNG (each divided by the artifact's
    normaliser, as the AggAtt figure does), and the bin counts."""
    art = read_artifact(path, names=["bins", "counts"])
    bins = np.asarray(art.data["bins"], dtype=np.float64)
    norm = float(art.attrs.get("normaliser", 0.0)) or 1.0
    tiles = [_colour(_shrink(np.clip(b / norm, 0.0, 1.0))) for b in bins]
    counts = [int(c) for c in art.data["counts"]]
    return png_bytes(_strip([t if k else None for t, k in zip(tiles, counts)], tiles[0].shape[0])), counts


def examples_strip(path: Path) -> tuple[bytes, list[float]]:
    """The median example of every bin (grid image, then its map), one PNG; their scores."""
    from attrcli.plots.examples import load_examples

    (row,) = load_examples([path])
    tiles: list[np.ndarray | None] = []
    for image, heat in zip(row.images, row.maps):
        if image is None:
            tiles += [None, None]
            continue
        tiles.append(_outline(np.round(_shrink(image) * 255).astype(np.uint8), row.cell, row.n))
        tiles.append(_outline(_colour(_shrink(heat)), row.cell, row.n))
    size = next(t.shape[0] for t in tiles if t is not None) if any(t is not None for t in tiles) else 8
    return png_bytes(_strip(tiles, size)), row.scores
