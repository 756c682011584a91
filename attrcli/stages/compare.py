"""The ``compare`` stage: paired differences between keys that score the same attributions.

For two keys (say S-IntGrad at the input and Grad-CAM at the final layer, on the same GridPG
grid file) the result is the difference of their median and mean scores with bootstrap
intervals and a Wilcoxon signed-rank test; for more keys (every method at one layer), every
pair, with p-values Holm-corrected over the family (:func:`attrcli.metrics.intervals.compare_keys`).
Writes ``<cache_root>/comparisons/<name>.h5`` (:class:`~attrcli.store.keys.ComparisonKey`) and
skips it when up to date, as ``correlate`` does. ``statistic="pointing"`` compares the
pointing-game hits (0 or 1 per attribution) instead of the localization scores: Δmean is then
the difference of hit rates.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from attrcli.errors import UserError
from attrcli.metrics.intervals import (
    CORRECTION,
    TEST,
    BootstrapConfig,
    PairedDifference,
    compare_keys,
)
from attrcli.metrics.scoresets import (
    check_inputs,
    check_name,
    default_name,
    score_inputs,
    scores_hashes,
)
from attrcli.progress import Progress
from attrcli.stages.caching import UP_TO_DATE, status_of
from attrcli.stages.score import STATISTICS, load_scores
from attrcli.store import ArtifactKey, artifact_lock, read_artifact, write_artifact
from attrcli.store.artifacts import make_provenance
from attrcli.store.keys import ComparisonKey

if TYPE_CHECKING:
    import torch

#: Datasets of a comparison artifact, one row per pair (``pairs`` holds the key indices).
_FIELDS = (
    "delta_median",
    "delta_median_ci",
    "delta_mean",
    "delta_mean_ci",
    "statistic",
    "p_value",
    "p_adjusted",
    "higher",
    "lower",
)


@dataclass
class ComparisonResult:
    """Every pair of keys compared, and where the comparison is stored."""

    path: Path
    name: str
    status: str
    keys: list[str]  # key labels setting/model/layer/method
    pairs: list[PairedDifference]  # first < second, in row-major order of the key pairs
    count: int  # attributions per key
    grid_images: int  # the resampled and tested units
    bootstrap: BootstrapConfig
    statistic: str = "score"  # what is compared: localization scores, or pointing-game hits

    def matrix(self, field: str) -> np.ndarray:
        """``field`` of every pair as a (K, K) matrix, row key minus column key.

        Differences are antisymmetric (and intervals are mirrored: use the pairs for those);
        tests are symmetric; the diagonal is NaN.
        """
        k = len(self.keys)
        out = np.full((k, k), np.nan)
        sign = -1.0 if field.startswith("delta_") else 1.0
        for pair in self.pairs:
            value = getattr(pair, field)
            out[pair.first, pair.second] = value
            out[pair.second, pair.first] = sign * value
        return out

    def to_dict(self) -> dict:
        def clean(value):
            if isinstance(value, float) and not np.isfinite(value):
                return None
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        pairs = []
        for pair in self.pairs:
            item = {k: clean(v) for k, v in asdict(pair).items()}
            item["first"], item["second"] = self.keys[pair.first], self.keys[pair.second]
            pairs.append(item)
        return {
            "path": str(self.path),
            "name": self.name,
            "status": self.status,
            "keys": self.keys,
            "count": self.count,
            "grid_images": self.grid_images,
            "statistic": self.statistic,
            "test": TEST,
            "correction": f"{CORRECTION} (family-wise error over {len(self.pairs)} comparisons)",
            "intervals": self.bootstrap.to_dict(),
            "pairs": pairs,
            "matrix": {
                field: [[clean(float(v)) for v in row] for row in self.matrix(field)]
                for field in ("delta_median", "p_adjusted")
            },
        }


def compare(
    *,
    score_paths: list[Path] | None = None,
    keys: list[ArtifactKey] | None = None,
    name: str | None = None,
    cache_root: Path | None = None,
    force: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    wait: bool = False,
    bootstrap: BootstrapConfig | None = None,
    statistic: str = "score",
) -> ComparisonResult:
    """Compare every pair of the given keys (at least two) on the same attributions, cached.

    Keys are score or attribution artifact paths, or keys resolved under ``cache_root``; missing
    or stale scores are computed first. Refused unless every key scores the same attributions
    (same grid file, grid images, target cells and heads). The default name is
    ``<grids>.<setting(s)>.<model(s)>.<hash of the key labels>`` (``.pointing`` appended for
    ``statistic="pointing"``, which compares pointing-game hits instead of scores).
    """
    check_name(name, "comparison")
    if statistic not in STATISTICS:
        raise UserError(f"unknown statistic {statistic!r}; valid: {', '.join(STATISTICS)}")
    bootstrap = bootstrap or BootstrapConfig()
    items = score_inputs(score_paths, keys, cache_root, verb="compare")
    if len(items) < 2:
        raise UserError(
            f"compare needs at least two different keys, got {len(items)} "
            f"({', '.join(i.key.label() for i in items)})"
        )
    check_inputs(items, "compare")
    labels = [item.key.label() for item in items]
    root = Path(cache_root) if cache_root else items[0].root
    if name is None:
        name = default_name([i.key for i in items], labels)
        name += "" if statistic == "score" else f".{statistic}"
    out = ComparisonKey(name).path(root)
    scores = load_scores(items, device=device, progress=progress, wait=wait, statistic=statistic)
    inputs = scores_hashes(scores)
    config = {
        "stage": "compare",
        "keys": labels,
        "test": TEST,
        "correction": CORRECTION,
        "intervals": bootstrap.to_dict(),
        "version": 1,
    }
    if statistic != "score":  # score comparisons keep the config they always had
        config["statistic"] = statistic
    stacked = np.stack([scores[item.key] for item in items])
    count, grid_images = int(stacked[0].size), int(stacked.shape[1])
    status = status_of(out, inputs, config, force)
    if status == UP_TO_DATE:
        pairs = _read_pairs(out)
    else:
        start = time.perf_counter()
        pairs = compare_keys(stacked, bootstrap)
        with artifact_lock(out, wait=wait):
            write_artifact(
                out,
                data=_pair_arrays(pairs),
                attrs={
                    "keys": labels,
                    "count": count,
                    "grid_images": grid_images,
                    "test": TEST,
                    "correction": CORRECTION,
                    "statistic": statistic,
                    **bootstrap.attrs(),
                },
                provenance=make_provenance(
                    config=config,
                    inputs=inputs,
                    seed=bootstrap.seed,
                    device="cpu",
                    seconds=time.perf_counter() - start,
                ),
            )
    return ComparisonResult(out, name, status, labels, pairs, count, grid_images, bootstrap, statistic)


def _pair_arrays(pairs: list[PairedDifference]) -> dict[str, np.ndarray]:
    data = {"pairs": np.array([[p.first, p.second] for p in pairs], dtype=np.int64).reshape(-1, 2)}
    for field in _FIELDS:
        values = [getattr(p, field) for p in pairs]
        shape = (-1, 2) if field.endswith("_ci") else (-1,)
        data[field] = np.asarray(values, dtype=np.float64).reshape(shape)
    return data


def _read_pairs(path: Path) -> list[PairedDifference]:
    data = read_artifact(path, names=["pairs", *_FIELDS]).data
    pairs = []
    for row, (first, second) in enumerate(data["pairs"].tolist()):
        values = {
            field: tuple(float(v) for v in data[field][row])
            if field.endswith("_ci")
            else float(data[field][row])
            for field in _FIELDS
        }
        pairs.append(PairedDifference(first=first, second=second, **values))
    return pairs
