"""``attrcli import-grids``: round trips from .npz and .csv, and every invariant violation refused."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from attrcli.cli.main import app
from attrcli.data.datasets import load_images, normalize
from attrcli.data.gridfile import load_grid_file
from attrcli.errors import UserError
from attrcli.store import read_artifact, write_artifact
from tests.engine.helpers import MEAN, STD, grid_labels, write_grids

MODEL = "tests.engine.helpers:tiny_vgg_model"  # 32-pixel cells, 10 classes, MEAN/STD
NAMES = [f"class-{i}" for i in range(10)]


def grids_npz(path: Path, *, count: int = 3, n: int = 2, cell: int = 32, variant: str = "distinct",
              seed: int = 0, **arrays) -> Path:
    """A valid .npz source; ``arrays`` replace or add entries (None drops one)."""
    rng = np.random.default_rng(seed)
    content = {
        "grids": rng.standard_normal((count, 3, n * cell, n * cell)).astype(np.float32),
        "labels": grid_labels(count, n=n, variant=variant, seed=seed),
        "class_names": NAMES,
        "mean": np.array(MEAN),
        "std": np.array(STD),
    }
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return path


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def imported(source: Path, out: Path, *args: object) -> Path:
    result = invoke("import-grids", source, "--out-dir", out, *args)
    assert result.exit_code == 0, result.output
    (line,) = result.stdout.splitlines()
    return Path(line)


def test_npz_round_trip_then_attribute_and_score(tmp_path):
    source = grids_npz(tmp_path / "mine.npz", count=3)
    path = imported(source, tmp_path / "grids", "--variant", "distinct", "--model", MODEL)
    assert path == tmp_path / "grids" / "mine.h5"
    art = read_artifact(path)
    with np.load(source) as npz:
        assert np.array_equal(art.data["images"], npz["grids"]) and art.data["images"].dtype == np.float32
        assert np.array_equal(art.data["labels"], npz["labels"])
    assert art.data["sources"].shape == (3, 4) and len(np.unique(art.data["sources"])) == 12
    attrs = art.attrs
    assert (attrs["variant"], attrs["n"], attrs["cell_size"], attrs["count"]) == ("distinct", 2, 32, 3)
    assert attrs["class_names"] == NAMES and attrs["num_classes"] == 10
    assert np.allclose(attrs["mean"], MEAN) and np.allclose(attrs["std"], STD)
    grid = load_grid_file(path)
    assert (grid.num_classes, grid.variant, grid.n, grid.cell_size) == (10, "distinct", 2, 32)

    # The same source again: nothing rewritten, byte for byte.
    before = tree(tmp_path)
    again = invoke("import-grids", source, "--out-dir", tmp_path / "grids", "--variant", "distinct", "--model", MODEL)
    assert again.exit_code == 0 and "up to date" in again.stderr and tree(tmp_path) == before

    cache = tmp_path / "cache"
    maps = invoke("attribute", "--grids", path, "--setting", "gridpg", "--model", MODEL, "--layer", "input",
                  "--method", "grad", "--device", "cpu", "--cache-dir", cache, "--quiet")
    assert maps.exit_code == 0, maps.output
    scored = invoke("score", *maps.stdout.split(), "--cache-dir", cache)
    assert scored.exit_code == 0, scored.output
    (score_path,) = scored.stdout.split()
    scores = read_artifact(score_path).data["scores"]
    assert scores.shape == (3, 4) and np.all((scores >= 0) & (scores <= 1))


def write_pngs(folder: Path, count: int, seed: int = 0, size: int = 20) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size + 3 * i, 3), dtype=np.uint8)  # sizes differ: all get resized
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        paths.append(folder / f"img{i}.png")
    return paths


def write_csv(path: Path, rows: list[tuple], header: tuple = ("grid", "cell", "image", "class")) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def corner_rows(images: list[Path], folder: Path) -> list[tuple]:
    """Two corners grids over six images (img1 and img2 in both): classes (3, 5, 6, 3) and
    (1, 5, 6, 1); grid ids need not be consecutive, nor rows in cell order."""
    rel = [str(p.relative_to(folder)) for p in images]
    return [
        (0, 0, rel[0], 3), (0, 1, rel[1], 5), (0, 2, rel[2], 6), (0, 3, rel[3], 3),
        (7, 3, rel[5], 1), (7, 0, rel[4], 1), (7, 1, rel[1], 5), (7, 2, rel[2], 6),
    ]


def test_csv_round_trip_then_attribute_and_score(tmp_path):
    images = write_pngs(tmp_path / "pics", 6)
    source = write_csv(tmp_path / "cells.csv", corner_rows(images, tmp_path))
    path = imported(source, tmp_path / "grids", "--variant", "corners", "--model", MODEL)
    art = read_artifact(path)
    assert art.data["labels"].tolist() == [[3, 5, 6, 3], [1, 5, 6, 1]]
    assert art.attrs["reused"] == 2 and art.attrs["pool_size"] == 6 and art.attrs["num_classes"] == 10
    # Each cell is its image resized to 32 pixels and normalised as make-grids does.
    order = {0: [0, 1, 2, 3], 1: [4, 1, 2, 5]}
    for row, picks in order.items():
        for cell, pick in enumerate(picks):
            expected = normalize(load_images([images[pick]], 32), MEAN, STD)[0].numpy()
            r, c = divmod(cell, 2)
            got = art.data["images"][row, :, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert art.data["sources"].tolist() == [[0, 1, 2, 3], [4, 1, 2, 5]]

    cache = tmp_path / "cache"
    maps = invoke("attribute", "--grids", path, "--setting", "difull", "--model", MODEL, "--layer", "input",
                  "--method", "grad", "--device", "cpu", "--cache-dir", cache, "--quiet")
    assert maps.exit_code == 0, maps.output
    scored = invoke("score", *maps.stdout.split(), "--cache-dir", cache)
    assert scored.exit_code == 0, scored.output
    scores = read_artifact(scored.stdout.split()[0]).data["scores"]
    # DiFull input gradients never leave their cell: every corner attribution localises perfectly.
    assert scores.shape == (2, 2) and np.allclose(scores, 1.0)


def _labels(variant: str = "distinct") -> np.ndarray:
    return grid_labels(3, variant=variant, seed=0)


def _nan_grids() -> np.ndarray:
    grids = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    grids[1, 0, 5, 5] = np.nan
    return grids


def _inf_grids() -> np.ndarray:
    grids = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    grids[2, 2, 0, 0] = np.inf
    return grids


def _same_corner_images() -> np.ndarray:
    grids = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    grids[0, :, 32:, 32:] = grids[0, :, :32, :32]
    return grids


def _with(labels: np.ndarray, row: int, col: int, value: int) -> np.ndarray:
    labels = labels.copy()
    labels[row, col] = value
    return labels


BAD_NPZ = {
    "labels not n²": (dict(labels=np.zeros((3, 5), dtype=np.int64)), [], "5 cells per grid is not n²"),
    "n of 1": (dict(labels=np.zeros((3, 1), dtype=np.int64)), [], "1 cells per grid is not n²"),
    "not square": (dict(grids=np.zeros((3, 3, 64, 48), dtype=np.float32)), [], "must be square"),
    "size not divisible by n": (dict(grids=np.zeros((3, 3, 65, 65), dtype=np.float32)), [], "65 is not divisible by n=2"),
    "NaN": (dict(grids=_nan_grids()), [], "grid 1 holds NaN or infinite values"),
    "infinity": (dict(grids=_inf_grids()), [], "grid 2 holds NaN or infinite values"),
    "label too large": (dict(labels=_with(_labels(), 0, 1, 10)), [], "label 10 is outside the 10 classes"),
    "negative label": (dict(labels=_with(_labels(), 2, 0, -1)), [], "label -1 is outside the 10 classes"),
    "class count unknown": (dict(class_names=None), [], "the class count is unknown"),
    "class counts disagree": ({}, ["--num-classes", 12], "--num-classes says 12, class_names says 10"),
    "distinct repeats a class": (dict(labels=_with(_labels(), 1, 3, int(_labels()[1, 0]))), [], "distinct grid 1 repeats a class"),
    "integer grids": (dict(grids=np.zeros((3, 3, 64, 64), dtype=np.uint8)), [], "grids must be floats"),
    "float labels": (dict(labels=_labels().astype(np.float32)), [], "labels must be integers"),
    "counts differ": (dict(labels=_labels()[:2]), [], "3 grids but 2 rows of labels"),
    "no labels": (dict(labels=None), [], "has no labels array"),
    "one channel": (dict(grids=np.zeros((3, 1, 64, 64), dtype=np.float32)), [], "must have shape (B, 3, H, W)"),
    "no grids at all": (dict(grids=np.zeros((0, 3, 64, 64), dtype=np.float32), labels=np.zeros((0, 4), dtype=np.int64)), [], "holds no grids"),
    "object class names": (dict(class_names=np.array(["a", 1], dtype=object)), [], "save names as np.array(names, dtype=str)"),
    "2-D class names": (dict(class_names=np.array([NAMES[:5], NAMES[5:]])), [], "class_names must be a 1-D list"),
    "repeated class names": (dict(class_names=["a"] * 10), [], "class_names repeat a name"),
    "mean of 2": (dict(mean=np.array([0.5, 0.5])), [], "mean must be 3 finite numbers"),
    "zero std": (dict(std=np.array([0.25, 0.0, 0.25])), [], "std must be positive"),
    "mean disagrees": ({}, ["--mean", "0.4,0.5,0.5"], "the mean values disagree"),
    "model cells": (dict(grids=np.zeros((3, 3, 32, 32), dtype=np.float32)), ["--model", MODEL], "16-pixel cells but model"),
    "model classes": (dict(class_names=NAMES[:8], labels=_labels() % 8), ["--model", MODEL], "class_names says 8"),
    "cell size option": ({}, ["--cell-size", 16], "32-pixel cells, not --cell-size 16"),
}
BAD_CORNERS = {
    "corners differ": (dict(labels=_with(_labels("corners"), 2, 3, (int(_labels("corners")[2, 0]) + 1) % 10)), "corners grid 2 has class"),
    "corner class inside": (dict(labels=_with(_labels("corners"), 0, 1, int(_labels("corners")[0, 0]))), "corners grid 0 holds its corner class"),
    "one image at both corners": (dict(grids=_same_corner_images()), "corners grid 0 holds the same image at both corners"),
    "distinct file as corners": (dict(labels=_labels("distinct")), "corners grid 0 has class"),
}


def refused(tmp_path: Path, *args: object) -> str:
    """Run import-grids, expect exit 2 with one line and an unchanged tree; return the line."""
    before = tree(tmp_path)
    result = invoke("import-grids", *args, "--out-dir", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == "", result.output
    assert tree(tmp_path) == before
    return lines[0]


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_refused(tmp_path, case):
    arrays, options, message = BAD_NPZ[case]
    source = grids_npz(tmp_path / "bad.npz", **arrays)
    assert message in refused(tmp_path, source, "--variant", "distinct", *options)


@pytest.mark.parametrize("case", sorted(BAD_CORNERS))
def test_bad_corners_npz_refused(tmp_path, case):
    arrays, message = BAD_CORNERS[case]
    source = grids_npz(tmp_path / "bad.npz", variant="corners", **arrays)
    assert message in refused(tmp_path, source, "--variant", "corners")


def test_bad_arguments_refused(tmp_path):
    source = grids_npz(tmp_path / "ok.npz")
    assert "unknown grid variant 'both'" in refused(tmp_path, source, "--variant", "both")
    assert "no such file" in refused(tmp_path, tmp_path / "nope.npz", "--variant", "distinct")
    text = tmp_path / "grids.txt"
    text.write_text("x")
    assert "must be a .npz or .csv file" in refused(tmp_path, text, "--variant", "distinct")
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    assert "not a readable .npz file" in refused(tmp_path, broken, "--variant", "distinct")
    assert "invalid grid name '../up'" in refused(tmp_path, source, "--variant", "distinct", "--name", "../up")
    assert "--mean must be 3 comma-separated numbers" in refused(tmp_path, source, "--variant", "distinct", "--mean", "a,b,c")
    assert "--num-classes must be at least 1" in refused(tmp_path, source, "--variant", "distinct", "--num-classes", 0)
    # A file that import-grids did not make is not overwritten without --force.
    (tmp_path / "out").mkdir()
    write_grids(tmp_path / "out" / "ok.h5")
    assert "was not made by import-grids" in refused(tmp_path, source, "--variant", "distinct")
    forced = invoke("import-grids", source, "--variant", "distinct", "--out-dir", tmp_path / "out", "--force")
    assert forced.exit_code == 0 and read_artifact(tmp_path / "out" / "ok.h5").attrs["num_classes"] == 10


def test_bad_csv_refused(tmp_path):
    images = write_pngs(tmp_path / "pics", 6)
    good = corner_rows(images, tmp_path)
    args = ("--variant", "corners", "--num-classes", 10, "--cell-size", 32, "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    cases = {
        "needs the header grid,cell,image,class": (good, ("grid", "cell", "file", "class")),
        "grid 0 lists cell 1 twice": ([*good[:3], (0, 1, good[3][2], 3), *good[4:]], None),
        "grids list different numbers of cells": (good[:3] + good[4:], None),
        "has cells [0, 1, 2, 5], expected 0–3": ([*good[:3], (0, 5, good[3][2], 3), *good[4:]], None),
        "pics/img3.png appears twice in grid 0": ([*good[:2], (0, 2, good[3][2], 6), *good[3:]], None),
        "has class 4 here but 6 in row": ([*good[:7], (7, 2, good[2][2], 4)], None),
        "class must be an integer, got 'cat'": ([*good[:1], (0, 1, good[1][2], "cat"), *good[2:]], None),
        "does not exist": ([*good[:1], (0, 1, "pics/missing.png", 5), *good[2:]], None),
        "corners grid 7 has class 1 at the top-left but 2": ([*good[:4], (7, 3, good[4][2], 2), *good[5:]], None),
    }
    for message, (rows, header) in cases.items():
        source = write_csv(tmp_path / "cells.csv", rows, header or ("grid", "cell", "image", "class"))
        assert message in refused(tmp_path, source, *args), message
    source = write_csv(tmp_path / "cells.csv", good)
    assert "needs --cell-size (or --model)" in refused(tmp_path, source, "--variant", "corners", "--num-classes", 10)
    assert "needs --mean and --std" in refused(tmp_path, source, "--variant", "corners", "--num-classes", 10, "--cell-size", 32)
    (tmp_path / "pics" / "img5.png").write_bytes(b"not a png")
    assert "cannot read image" in refused(tmp_path, source, *args)


def test_grid_reader_refuses_wrong_corners_and_reads_list_class_names(tmp_path):
    corners = write_grids(tmp_path / "c.h5", variant="corners")
    with h5py.File(corners, "a") as handle:
        labels = handle["labels"][()]
        labels[1, -1] = (labels[1, 0] + 1) % 10
        handle["labels"][...] = labels
    with pytest.raises(UserError, match="corners grid 1 has class"):
        load_grid_file(corners)
    # class_names stored by h5py as a list of strings: counted, not crashed on; labels only use
    # classes 0-3 but the file names 10 classes.
    listed = write_artifact(
        tmp_path / "l.h5",
        data={"images": np.zeros((2, 3, 64, 64), np.float32), "labels": np.array([[0, 1, 2, 3], [3, 2, 1, 0]]),
              "sources": np.zeros((2, 4), np.int64)},
        attrs={"variant": "distinct", "n": 2, "cell_size": 32, "mean": list(MEAN), "std": list(STD)},
    )
    with h5py.File(listed, "a") as handle:
        handle.attrs["class_names"] = NAMES
    assert load_grid_file(listed).num_classes == 10
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as handle:
        handle["images"] = np.zeros((1, 3, 64, 64), np.float32)
        handle["labels"] = np.zeros((1, 4), np.int64)
    with pytest.raises(UserError, match="convert your own grids with attrcli import-grids"):
        load_grid_file(bare)


def test_written_file_is_repeatable(tmp_path):
    source = grids_npz(tmp_path / "mine.npz")
    first = imported(source, tmp_path / "a", "--variant", "distinct")
    second = imported(source, tmp_path / "b", "--variant", "distinct")
    assert first.read_bytes() == second.read_bytes()
    assert torch.equal(torch.from_numpy(read_artifact(first).data["images"]),
                       torch.from_numpy(np.load(source)["grids"]))
