"""scikit-learn's handwritten digits, the embedded default that needs no download.

The 8×8 images (values 0..16) are scaled to [0, 1], resized bilinearly to 32×32 cells and
repeated over three channels. One fixed stratified split separates the images the digits models
train on from the held-out images that grids are built from; grids never use training images.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CELL_SIZE = 32
MEAN = (0.305, 0.305, 0.305)
STD = (0.324, 0.324, 0.324)
SPLIT_SEED = 0
HELDOUT_FRACTION = 0.5
CLASS_NAMES = tuple(str(i) for i in range(10))


def _split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SPLIT_SEED)
    train, heldout = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        cut = int(round(len(idx) * HELDOUT_FRACTION))
        heldout.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(heldout))


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images ``(N, 8, 8)`` (float64, 0..16) and labels of scikit-learn's digits.

    Read straight from the data file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``)
    as its ``load_digits`` reads it, without importing scikit-learn (1.6 s of a warm ``run``);
    ``load_digits`` itself where the file is not found.
    """
    import gzip
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("sklearn")  # finds the package without running it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                data = np.loadtxt(handle, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` in [0, 1], labels ``(N,)``, and their indices in the full set.

    ``split`` is ``"train"`` or ``"heldout"``.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    images_8, target = digits_arrays()
    labels = target.astype(np.int64)
    train, heldout = _split_indices(labels)
    idx = train if split == "train" else heldout
    small = torch.tensor(images_8[idx] / 16.0, dtype=torch.float32)[:, None]
    images = F.interpolate(small, size=CELL_SIZE, mode="bilinear", align_corners=False)
    return images.clamp(0, 1).repeat(1, 3, 1, 1), torch.from_numpy(labels[idx]), idx


def normalize(images: torch.Tensor) -> torch.Tensor:
    """Apply the digits normalisation to images in [0, 1]."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images - mean) / std
