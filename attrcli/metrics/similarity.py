"""Similarity of two attribution maps of the same input, for model-randomisation sanity checks
(Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, Sec. 3).

- :func:`spearman_maps`: Spearman rank correlation of each pair of maps, over their pixels at
  the stored (layer) resolution; ``absolute=True`` ranks the absolute values (Adebayo et al.
  report both). Ties get average ranks. A constant map has no ranking: its coefficient is NaN.
- :func:`ssim`: the structural similarity index of Wang et al. (IEEE TIP 2004) with their
  Gaussian window (σ = 1.5, truncated at 3.5 σ: 11 × 11 pixels), K1 = 0.01, K2 = 0.03,
  population (not sample) covariances, reflected borders, and the mean over the pixels at
  least half a window from the border — the settings of scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
- :func:`ssim_maps`: SSIM of maps upsampled bilinearly to the grid's pixel size (as the scorer
  does), each taken as absolute values and divided by its own maximum (so in [0, 1], data range
  1; a zero map stays zero), as Adebayo et al. compare normalised absolute maps.
- :func:`cell_crops`: each target's own cell of its maps (``region="cell"`` of the sanity
  stage): where the setting fixes the map's support (DiFull's zeros outside the cell, a sliding
  head's window), the pixels outside share their zeros whatever the weights and would keep
  the similarity up; inside the cell only the model decides. The cell is ``size // n`` pixels
  wide, row-major, as the scorer's; the normalisation for SSIM is then over the cell.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from scipy.stats import rankdata

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K = (0.01, 0.03)
#: The config a sanity artifact records for its measures.
SIMILARITY_CONFIG = {
    "spearman": "over the pixels of the stored maps, average ranks; NaN for a constant map",
    "spearman_abs": "Spearman of the absolute maps",
    "ssim": {
        "maps": "bilinear upsampling to the grid size, absolute values over each map's maximum",
        "window": "gaussian", "sigma": SSIM_SIGMA, "truncate": SSIM_TRUNCATE, "k": list(SSIM_K),
        "data_range": 1.0, "covariance": "population", "border": "reflect, half a window cropped",
    },
    "score_change": "localization score of the randomised model's map minus the trained one's",
}


def spearman_maps(first: np.ndarray, second: np.ndarray, *, absolute: bool = False) -> np.ndarray:
    """Spearman coefficients ``(...)`` between maps ``(..., h, w)`` of the same shape."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape}")
    lead = a.shape[:-2]
    a = a.reshape(-1, a.shape[-2] * a.shape[-1])
    b = b.reshape(a.shape)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    ra = rankdata(a, axis=1) - (a.shape[1] + 1) / 2
    rb = rankdata(b, axis=1) - (a.shape[1] + 1) / 2
    num = (ra * rb).sum(axis=1)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    out = np.full(len(a), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return np.clip(out, -1.0, 1.0).reshape(lead)


def ssim(first: np.ndarray, second: np.ndarray, *, data_range: float = 1.0) -> np.ndarray:
    """Mean SSIM ``(...)`` of images ``(..., H, W)`` (Wang et al., 2004; see the module text)."""
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images of shapes {a.shape} and {b.shape}")
    lead, (h, w) = a.shape[:-2], a.shape[-2:]
    a = a.reshape(-1, h, w)
    b = b.reshape(-1, h, w)
    sigma = (0.0, SSIM_SIGMA, SSIM_SIGMA)

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=sigma, truncate=SSIM_TRUNCATE, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1 = (SSIM_K[0] * data_range) ** 2
    c2 = (SSIM_K[1] * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    pad = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if h > 2 * pad and w > 2 * pad:
        index = index[:, pad : h - pad, pad : w - pad]
    return index.mean(axis=(1, 2)).reshape(lead)


def normalised_abs(maps: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, T, h, w)`` maps upsampled bilinearly to ``size`` (pixel centres, as the scorer),
    absolute, each divided by its maximum (zero maps stay zero)."""
    b, t, h, w = maps.shape
    flat = maps.reshape(b * t, 1, h, w).double()
    if (h, w) != (size, size):
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    flat = flat.abs().reshape(b, t, size, size)
    peak = flat.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, flat / peak.clamp(min=torch.finfo(flat.dtype).tiny), flat)


def cell_crops(maps: np.ndarray, cells: np.ndarray, n: int) -> np.ndarray:
    """``(B, T, c, c)``: target ``t``'s cell ``cells[t]`` of ``(B, T, S, S)`` maps, ``c = S // n``."""
    maps = np.asarray(maps)
    c = maps.shape[-1] // n
    crops = [maps[:, t, (cell // n) * c : (cell // n + 1) * c, (cell % n) * c : (cell % n + 1) * c]
             for t, cell in enumerate(np.asarray(cells, dtype=np.int64))]
    return np.stack(crops, axis=1)


def ssim_maps(
    first: np.ndarray, second: np.ndarray, *, image_size: int, cells: np.ndarray | None = None,
    n: int = 1,
) -> np.ndarray:
    """SSIM ``(B, T)`` of ``(B, T, h, w)`` maps on the grid's pixels (:func:`normalised_abs`);
    with ``cells`` over each target's own cell of the ``n`` x ``n`` grid (:func:`cell_crops`),
    normalised over that cell."""
    if cells is None:
        a = normalised_abs(torch.from_numpy(np.asarray(first)), image_size).numpy()
        b = normalised_abs(torch.from_numpy(np.asarray(second)), image_size).numpy()
        return ssim(a, b, data_range=1.0)
    crops = []
    for maps in (first, second):
        up = normalised_abs(torch.from_numpy(np.asarray(maps)), image_size).numpy()
        part = cell_crops(up, cells, n)
        peak = part.max(axis=(2, 3), keepdims=True)
        crops.append(np.divide(part, peak, out=np.zeros_like(part), where=peak > 0))
    return ssim(crops[0], crops[1], data_range=1.0)
