"""``export``: a study's numbers as tidy tables for pandas, R and papers.

One row per attribution (:func:`attribution_table`), one row per key (:func:`summary_table`),
and the correlation and comparison artifacts as long tables (:func:`correlation_table`,
:func:`comparison_table`), each a :class:`Table` with a fixed schema (docs/artifacts.md,
"Export tables"), written as CSV, JSON lines or Parquet (:func:`render`); the per-key summary
also as a booktabs LaTeX table (:func:`latex_summary`). Nothing here computes a statistic anew:
rows are read from the score artifacts and the summary is :func:`attrcli.metrics.summary.summarize`,
the numbers of ``attrcli score``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attrcli.engine.precision import split_key_method
from attrcli.errors import UserError
from attrcli.metrics.selection import unique_paths
from attrcli.metrics.summary import ScoreSummary, summarize
from attrcli.store import ArtifactKey, read_artifact

if TYPE_CHECKING:
    import torch

    from attrcli.progress import Progress

FORMATS = ("csv", "parquet", "jsonl", "latex")
EXTRA_HINT = "pip install 'attrcli[export]'"
#: The columns every table of a key starts with (``param_<name>`` columns follow, one per
#: method parameter found in the table, as strings; empty where a method lacks the parameter).
KEY_COLUMNS = (("grids", "string"), ("setting", "string"), ("model", "string"), ("layer", "string"),
               ("method", "string"), ("method_name", "string"), ("precision", "string"))
ROW_COLUMNS = (("grid_index", "int64"), ("slot", "int64"), ("cell", "int64"), ("head", "int64"),
               ("class", "int64"), ("score", "float64"), ("numerator", "float64"), ("pointing", "float64"))
SUMMARY_COLUMNS = (
    ("count", "int64"), ("median", "float64"), ("median_low", "float64"), ("median_high", "float64"),
    ("q1", "float64"), ("q3", "float64"), ("mean", "float64"), ("mean_low", "float64"),
    ("mean_high", "float64"), ("perfect", "float64"), ("perfect_low", "float64"),
    ("perfect_high", "float64"), ("pointing", "float64"), ("chance", "float64"),
    ("confidence", "float64"), ("interval_method", "string"), ("resamples", "int64"),
)
CORRELATION_COLUMNS = (
    ("name", "string"), ("row", "string"), ("column", "string"), ("rho", "float64"),
    ("rho_low", "float64"), ("rho_high", "float64"), ("count", "int64"), ("reference", "string"),
    ("confidence", "float64"),
)
COMPARISON_COLUMNS = (
    ("name", "string"), ("first", "string"), ("second", "string"), ("delta_median", "float64"),
    ("delta_median_low", "float64"), ("delta_median_high", "float64"), ("delta_mean", "float64"),
    ("delta_mean_low", "float64"), ("delta_mean_high", "float64"), ("statistic", "float64"),
    ("p_value", "float64"), ("p_adjusted", "float64"), ("higher", "float64"), ("lower", "float64"),
    ("count", "int64"), ("grid_images", "int64"), ("confidence", "float64"),
)
_NUMPY = {"string": object, "int64": np.int64, "float64": np.float64}


@dataclass(frozen=True)
class Table:
    """Named, typed columns of equal length. Types are ``string`` (missing: None), ``int64`` and
    ``float64`` (missing: NaN)."""

    columns: dict[str, np.ndarray]
    types: dict[str, str]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def rows(self):
        """Each row as a dict of plain Python values (NaN and None as None)."""
        for i in range(len(self)):
            yield {name: _plain(values[i], self.types[name]) for name, values in self.columns.items()}

    def records(self) -> np.ndarray:
        """A numpy structured array (strings as objects)."""
        dtype = [(name, _NUMPY[kind]) for name, kind in self.types.items()]
        out = np.empty(len(self), dtype=dtype)
        for name, values in self.columns.items():
            out[name] = values
        return out

    def to_pandas(self):
        """A pandas DataFrame (strings as ``object``, the types of :attr:`types` otherwise)."""
        import pandas as pd

        return pd.DataFrame({name: self.columns[name] for name in self.types})

    def to_arrow(self):
        """A pyarrow Table with the schema of :attr:`types`."""
        import pyarrow as pa

        kinds = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
        arrays = {}
        for name, kind in self.types.items():
            values = self.columns[name]
            if kind == "float64":  # NaN stays NaN (a number), as in the CSV's round trip
                arrays[name] = pa.array(values, type=kinds[kind], from_pandas=False)
            else:
                arrays[name] = pa.array(list(values), type=kinds[kind])
        return pa.table(arrays, schema=pa.schema([(n, kinds[k]) for n, k in self.types.items()]))


def _plain(value, kind: str):
    if kind == "float64":
        value = float(value)
        return None if math.isnan(value) else value
    if kind == "int64":
        return int(value)
    return None if value is None else str(value)


def method_parts(method: str) -> tuple[str, str, dict[str, str]]:
    """A key's method part as ``(name, precision, parameters)``:
    ``occlusion:k=8,s=4@bf16`` -> ``("occlusion", "bf16", {"k": "8", "s": "4"})``."""
    spec, precision = split_key_method(method)
    head, sep, tail = spec.rpartition(":")
    if not sep or "=" not in tail:
        return spec, precision, {}
    params = dict(item.partition("=")[::2] for item in tail.split(",") if "=" in item)
    return head, precision, params


def _key_columns(keys: list[ArtifactKey], repeat: list[int]) -> tuple[dict, dict]:
    """The key columns (and one ``param_<name>`` column per parameter) of ``keys``, each key's
    values repeated ``repeat[i]`` times."""
    parts = [method_parts(k.method) for k in keys]
    params = sorted({name for _, _, p in parts for name in p})
    values: dict[str, list] = {name: [] for name, _ in KEY_COLUMNS}
    values.update({f"param_{p}": [] for p in params})
    for key, (name, precision, given), times in zip(keys, parts, repeat):
        row = {"grids": key.grids, "setting": key.setting, "model": key.model, "layer": key.layer,
               "method": key.method, "method_name": name, "precision": precision,
               **{f"param_{p}": given.get(p) for p in params}}
        for column in values:
            values[column] += [row[column]] * times
    types = {name: "string" for name in values}
    return {n: np.array(v, dtype=object).reshape(-1) for n, v in values.items()}, types


def _typed(values: dict, columns: tuple) -> tuple[dict, dict]:
    return ({name: np.asarray(values[name], dtype=_NUMPY[kind]).reshape(-1) for name, kind in columns},
            dict(columns))


def _join(first: tuple[dict, dict], second: tuple[dict, dict]) -> Table:
    return Table({**first[0], **second[0]}, {**first[1], **second[1]})


def _score_artifacts(score_paths: list[Path]) -> list[tuple[ArtifactKey, Path]]:
    out = []
    for path in unique_paths(score_paths):
        key = ArtifactKey.from_path(path)
        if key.stage != "scores":
            raise UserError(f"{path} is a {key.stage} artifact; expected a score artifact")
        out.append((key, Path(path)))
    if not out:
        raise UserError("no score artifacts given")
    return out


def _classes(key: ArtifactKey, path: Path, art) -> np.ndarray:
    """The target class of every (grid image, slot): the attribution's ``classes``, else the grid
    file's labels at the target cells, else -1."""
    shape = np.shape(art.data["scores"])
    for candidate in (key.sibling("attributions", path), Path(str(art.attrs.get("attribution", "")))):
        if candidate.name and candidate.is_file():
            try:
                classes = read_artifact(candidate, names=["classes"]).data["classes"]
            except UserError:
                continue
            if np.shape(classes) == shape:
                return np.asarray(classes, dtype=np.int64)
    grid = Path(str(art.attrs.get("grid_path", "")))
    if grid.name and grid.is_file():
        try:
            labels = read_artifact(grid, names=["labels"]).data["labels"]
            rows, cells = np.asarray(art.data["grid_index"]), np.asarray(art.data["cells"])
            return np.asarray(labels[rows][:, cells], dtype=np.int64)
        except (UserError, IndexError):
            pass
    return np.full(shape, -1, dtype=np.int64)


def pointing_hits(art) -> np.ndarray:
    """The pointing game's hits (1.0 / 0.0) of a score artifact, NaN where it has none."""
    scores = np.asarray(art.data["scores"])
    if "pointing" not in art.data:
        return np.full(scores.shape, np.nan)
    hits = np.asarray(art.data["pointing"])
    if hits.shape != scores.shape:
        raise UserError(f"{art.path}: dataset pointing has shape {hits.shape}, scores {scores.shape}")
    return hits.astype(np.float64)


def attribution_table(*, score_paths: list[Path]) -> Table:
    """One row per attribution: key, method parameters, grid image, target slot, cell, head,
    class, score, numerator and pointing hit; keys in the given order, then grid images, then
    slots (the row-major order of a score artifact's ``scores``)."""
    items = _score_artifacts(score_paths)
    keys, counts = [], []
    values: dict[str, list] = {name: [] for name, _ in ROW_COLUMNS}
    for key, path in items:
        art = read_artifact(path)
        for name in ("scores", "numerators", "grid_index", "cells", "heads"):
            if name not in art.data:
                raise UserError(f"{path} lacks dataset {name}")
        scores = np.asarray(art.data["scores"], dtype=np.float64)
        rows, slots = scores.shape
        grid, slot = np.meshgrid(np.asarray(art.data["grid_index"]), np.arange(slots), indexing="ij")
        values["grid_index"].append(grid.ravel())
        values["slot"].append(slot.ravel())
        values["cell"].append(np.asarray(art.data["cells"])[slot].ravel())
        values["head"].append(np.asarray(art.data["heads"])[slot].ravel())
        values["class"].append(_classes(key, path, art).ravel())
        values["score"].append(scores.ravel())
        values["numerator"].append(np.asarray(art.data["numerators"], dtype=np.float64).ravel())
        values["pointing"].append(pointing_hits(art).ravel())
        keys.append(key)
        counts.append(rows * slots)
    joined = {name: np.concatenate(parts) for name, parts in values.items()}
    return _join(_key_columns(keys, counts), _typed(joined, ROW_COLUMNS))


def summaries(score_paths: list[Path]) -> tuple[list[ScoreSummary], list[float]]:
    """:func:`summarize` of the score artifacts, and each key's share of pointing hits (NaN
    without pointing scores)."""
    rows = summarize([p for _, p in _score_artifacts(score_paths)])
    shares = []
    for row in rows:
        art = read_artifact(row.path, names=["scores"] + (["pointing"] if _has_pointing(row.path) else []))
        hits = pointing_hits(art)
        shares.append(float(hits.mean()) if hits.size and not np.isnan(hits).all() else float("nan"))
    return rows, shares


def _has_pointing(path: str | Path) -> bool:
    import h5py

    with h5py.File(path, "r") as handle:
        return "pointing" in handle


def summary_table(*, score_paths: list[Path]) -> Table:
    """One row per key: count, median, quartiles, mean and share of perfect scores with their
    stored intervals (``_low``/``_high``), share of pointing hits, chance level."""
    rows, shares = summaries(score_paths)
    values: dict[str, list] = {name: [] for name, _ in SUMMARY_COLUMNS}
    for row, share in zip(rows, shares):
        for name in ("count", "median", "q1", "q3", "mean", "perfect", "chance"):
            values[name].append(getattr(row, name))
        for name in ("median", "mean", "perfect"):
            low, high = getattr(row, f"{name}_ci")
            values[f"{name}_low"].append(low)
            values[f"{name}_high"].append(high)
        values["pointing"].append(share)
        values["confidence"].append(row.confidence if row.confidence is not None else float("nan"))
        values["interval_method"].append(row.interval_method)
        values["resamples"].append(row.resamples or 0)
    keys = [ArtifactKey.from_path(row.path) for row in rows]
    return _join(_key_columns(keys, [1] * len(keys)), _typed(values, SUMMARY_COLUMNS))


def _artifacts(paths: list[Path], folder: str, what: str) -> list:
    out = []
    for path in unique_paths(paths):
        if Path(path).parent.name != folder:
            raise UserError(f"{path} is not a {what} artifact (expected <cache>/{folder}/<name>.h5)")
        out.append(read_artifact(path))
    if not out:
        raise UserError(f"no {what} artifacts given")
    return out


def correlation_table(*, paths: list[Path]) -> Table:
    """Every coefficient of the correlation artifacts: one row per (row key, column key)."""
    values: dict[str, list] = {name: [] for name, _ in CORRELATION_COLUMNS}
    for art in _artifacts(paths, "correlations", "correlation"):
        matrix = np.asarray(art.data["matrix"], dtype=np.float64)
        low = np.asarray(art.data.get("low", np.full(matrix.shape, np.nan)), dtype=np.float64)
        high = np.asarray(art.data.get("high", np.full(matrix.shape, np.nan)), dtype=np.float64)
        for i, row in enumerate(art.attrs["rows"]):
            for j, column in enumerate(art.attrs["columns"]):
                for name, value in (("name", art.path.stem), ("row", row), ("column", column),
                                    ("rho", matrix[i, j]), ("rho_low", low[i, j]), ("rho_high", high[i, j]),
                                    ("count", int(art.attrs.get("count", 0))),
                                    ("reference", str(art.attrs.get("reference", "")) or None),
                                    ("confidence", float(art.attrs.get("confidence", np.nan)))):
                    values[name].append(value)
    return Table(*_typed(values, CORRELATION_COLUMNS))


def comparison_table(*, paths: list[Path]) -> Table:
    """Every pair of the comparison artifacts: first minus second, intervals, tests."""
    values: dict[str, list] = {name: [] for name, _ in COMPARISON_COLUMNS}
    for art in _artifacts(paths, "comparisons", "comparison"):
        keys = list(art.attrs["keys"])
        for row, (first, second) in enumerate(np.asarray(art.data["pairs"]).tolist()):
            values["name"].append(art.path.stem)
            values["first"].append(keys[first])
            values["second"].append(keys[second])
            for name in ("delta_median", "delta_mean"):
                values[name].append(float(art.data[name][row]))
                values[f"{name}_low"].append(float(art.data[f"{name}_ci"][row][0]))
                values[f"{name}_high"].append(float(art.data[f"{name}_ci"][row][1]))
            for name in ("statistic", "p_value", "p_adjusted", "higher", "lower"):
                values[name].append(float(art.data[name][row]))
            values["count"].append(int(art.attrs.get("count", 0)))
            values["grid_images"].append(int(art.attrs.get("grid_images", 0)))
            values["confidence"].append(float(art.attrs.get("confidence", np.nan)))
    return Table(*_typed(values, COMPARISON_COLUMNS))


def _csv_value(value) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)  # repr: shortest exact float


def render(table: Table, fmt: str) -> bytes:
    """``table`` as CSV (header row; missing values empty), JSON lines (missing: null) or
    Parquet (pyarrow, the schema of ``table.types``)."""
    if fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(list(table.types))
        for row in table.rows():
            writer.writerow([_csv_value(v) for v in row.values()])
        return text.getvalue().encode()
    if fmt == "jsonl":
        return "".join(json.dumps(row, allow_nan=False) + "\n" for row in table.rows()).encode()
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"--format parquet needs pyarrow: {EXTRA_HINT}") from None
        import pyarrow as pa

        sink = pa.BufferOutputStream()
        pq.write_table(table.to_arrow(), sink)
        return sink.getvalue().to_pybytes()
    raise UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def resolve_scores(
    paths: list[Path], *, cache_root: Path | None, device: torch.device | str = "cpu",
    progress: Progress | None = None, wait: bool = False,
) -> list[Path]:
    """Score artifact paths for attribution or score artifact paths (in order): attributions are
    scored first where their scores are missing or stale (:func:`attrcli.stages.score.score`)."""
    keys = [ArtifactKey.from_path(p) for p in unique_paths(paths)]
    bad = [f"{p} ({k.stage})" for p, k in zip(unique_paths(paths), keys) if k.stage not in ("attributions", "scores")]
    if bad:
        raise UserError(f"give score or attribution artifacts, not {bad[0]}")
    attributions = [p for p, k in zip(unique_paths(paths), keys) if k.stage == "attributions"]
    scored = {}
    if attributions:
        from attrcli.metrics.selection import check_grid_sources, inspect_attribution
        from attrcli.stages.score import score_one

        sources = [inspect_attribution(Path(p)) for p in attributions]
        check_grid_sources(sources)
        for path, source in zip(attributions, sources):  # any stored intervals will do
            result, _ = score_one(source, Path(cache_root) if cache_root else source.root, force=False,
                                  device=device, progress=progress, wait=wait, bootstrap=None)
            scored[Path(path)] = result.path
    return [scored.get(Path(p), Path(p)) for p in unique_paths(paths)]
