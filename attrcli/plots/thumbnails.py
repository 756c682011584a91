"""Small per-key images for the HTML report, as PNG bytes: the six AggAtt bins of a key
(supplement H.4), and the median example of each bin (its map, and the grid image), each tile
at most :data:`TILE` pixels wide. Drawn with numpy and zlib: no figure and no metadata, so the
same artifacts give the same bytes. Maps are palette PNGs (viridis, one byte a pixel) and grey
grid images grey PNGs, which keeps a study's page small.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attrcli.store import read_artifact

TILE = 48  # largest side of a tile, pixels
GAP = 3  # pixels between tiles
WHITE, GREY = 254, 255  # palette entries after the 254 viridis levels (0 to 253)


def png_bytes(pixels: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """A PNG file of ``uint8`` pixels: ``(H, W, 3)`` RGB, ``(H, W)`` grey, or ``(H, W)``
    indices into ``palette`` ``(K, 3)``. Deterministic (zlib level 6, no metadata)."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    kind = 2 if pixels.ndim == 3 else (3 if palette is not None else 0)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    chunks = [chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, kind, 0, 0, 0))]
    if kind == 3:
        chunks.append(chunk(b"PLTE", np.ascontiguousarray(palette, dtype=np.uint8).tobytes()))
    chunks += [chunk(b"IDAT", zlib.compress(raw, 6)), chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def shrink(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """Area-average ``image`` (H, W[, C]) by the smallest integer factor that fits ``tile``."""
    factor = max(1, math.ceil(max(image.shape[:2]) / tile))
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    cut = image[:h, :w]
    return cut.reshape(h // factor, factor, w // factor, factor, *cut.shape[2:]).mean(axis=(1, 3))


_PALETTE: np.ndarray | None = None


def palette() -> np.ndarray:
    """254 levels of viridis (as the figures draw maps), then white and a light grey."""
    global _PALETTE
    if _PALETTE is None:
        from matplotlib import colormaps

        levels = np.round(colormaps["viridis"](np.linspace(0, 1, WHITE))[:, :3] * 255)
        _PALETTE = np.vstack([levels, [[255, 255, 255], [235, 235, 235]]]).astype(np.uint8)
    return _PALETTE


def levels(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] as palette indices 0 to 253."""
    return np.clip(np.round(np.nan_to_num(values) * (WHITE - 1)), 0, WHITE - 1).astype(np.uint8)


def outline(tile: np.ndarray, cell: int, n: int, value) -> np.ndarray:
    """The target cell's border drawn with ``value`` (white) on a tile."""
    out = tile.copy()
    side = out.shape[0] / n
    r, c = divmod(cell, n)
    top, left = int(round(r * side)), int(round(c * side))
    bottom = min(out.shape[0], int(round((r + 1) * side))) - 1
    right = min(out.shape[1], int(round((c + 1) * side))) - 1
    out[[top, bottom], left:right + 1] = value
    out[top:bottom + 1, [left, right]] = value
    return out


def strip(tiles: list[np.ndarray | None], size: int, white, grey) -> np.ndarray:
    """Tiles side by side on ``white``, :data:`GAP` pixels apart; None is an empty ``grey`` tile."""
    sample = next((t for t in tiles if t is not None), np.zeros((size, size), dtype=np.uint8))
    out = np.empty((size, len(tiles) * (size + GAP) - GAP, *sample.shape[2:]), dtype=np.uint8)
    out[...] = white
    for i, tile in enumerate(tiles):
        x = i * (size + GAP)
        if tile is None:
            out[:, x:x + size] = grey
        else:
            out[: tile.shape[0], x:x + tile.shape[1]] = tile
    return out


def aggatt_strip(path: Path) -> tuple[bytes, list[int]]:
    """The six AggAtt bins of an artifact as one palette PNG (each divided by the artifact's
    normaliser, as the AggAtt figure does; an empty bin grey), and the bin counts."""
    art = read_artifact(path, names=["bins", "counts"])
    norm = float(art.attrs.get("normaliser", 0.0)) or 1.0
    tiles = [levels(shrink(np.clip(np.asarray(b, dtype=np.float64) / norm, 0.0, 1.0))) for b in art.data["bins"]]
    counts = [int(c) for c in art.data["counts"]]
    shown = [t if k else None for t, k in zip(tiles, counts)]
    return png_bytes(strip(shown, tiles[0].shape[0], WHITE, GREY), palette()), counts


@dataclass(frozen=True)
class Examples:
    """The median example of each bin of one key: maps and grid images as PNGs, their scores."""

    maps: bytes
    images: bytes
    scores: list[float]


def _examples(row) -> Examples:
    maps, images = [], []
    for image, heat in zip(row.images, row.maps):
        if image is None:
            maps.append(None)
            images.append(None)
            continue
        maps.append(outline(levels(shrink(heat)), row.cell, row.n, WHITE))
        pixels = np.round(shrink(image) * 255).astype(np.uint8)
        if np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
            pixels = pixels[..., 0]  # a grey image: one byte a pixel
        images.append(outline(pixels, row.cell, row.n, 255))
    size = next((t.shape[0] for t in maps if t is not None), 8)
    grey = all(t is None or t.ndim == 2 for t in images)
    if not grey:
        images = [t if t is None or t.ndim == 3 else np.repeat(t[..., None], 3, axis=2) for t in images]
    return Examples(png_bytes(strip(maps, size, WHITE, GREY), palette()),
                    png_bytes(strip(images, size, 255, 235)), row.scores)


def examples_strips(paths: list[Path]) -> dict[Path, Examples | str]:
    """Per AggAtt artifact: the median example of every bin, or, where it cannot be drawn
    (attribution or grid file missing), the reason. Every grid file is read and checked once."""
    from attrcli.errors import UserError
    from attrcli.plots.examples import load_examples
    from attrcli.store import ArtifactKey

    paths = [Path(p) for p in paths]
    try:
        rows = {row.key: row for row in load_examples(paths)} if paths else {}
    except UserError:  # some key lacks its inputs: draw the others one by one
        out: dict[Path, Examples | str] = {}
        for path in paths:
            try:
                (row,) = load_examples([path])
            except UserError as exc:
                out[path] = str(exc)
            else:
                out[path] = _examples(row)
        return out
    return {path: _examples(rows[ArtifactKey.from_path(path)]) for path in paths}
