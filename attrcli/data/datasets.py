"""Datasets that grids are built from: the held-out pool of each, loaded lazily.

Each registered :class:`DatasetSpec` opens a :class:`Pool`: the labels, class names and source
indices of every held-out image, and a loader that returns any subset of the images in [0, 1],
resized to a cell size. Labels are known up front, pixels are read on demand, so a big image
folder is streamed in batches by the confidence filter instead of loaded at once.

Source indices number the images as the dataset itself does: the index in scikit-learn's full
digits set (always one of the held-out indices of :mod:`attrcli.data.digits`), the index in the
CIFAR10 test set, or the sample index of torchvision's ``ImageFolder`` (sorted class folders,
sorted files).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from attrcli.errors import UserError
from attrcli.registry import Registry

#: ``read(positions, size)``: the images at ``positions`` of a pool (not source indices), in
#: [0, 1], resized to ``size``×``size``, as float32 ``(B, 3, size, size)``.
ImageReader = Callable[[np.ndarray, int], torch.Tensor]
IMAGENET_CLASSES = 1000


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(B, 3, H, W)`` images to ``size``×``size`` (bilinear, antialiased) in [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp_(0.0, 1.0)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Apply a per-channel normalisation to images in [0, 1]."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


@dataclass
class Pool:
    """The held-out images of a dataset.

    Attributes:
        dataset: registry name of the dataset.
        labels: int64 ``(N,)`` class of each image.
        sources: int64 ``(N,)`` index of each image in the dataset (see the module docstring).
        class_names: name of each class index.
        read: the :data:`ImageReader` behind :meth:`images`.
    """

    dataset: str
    labels: np.ndarray
    sources: np.ndarray
    class_names: tuple[str, ...]
    read: ImageReader = field(repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def images(self, positions: np.ndarray, size: int) -> torch.Tensor:
        """Images at ``positions`` as float32 ``(B, 3, size, size)`` in [0, 1]."""
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return torch.zeros(0, 3, size, size)
        return self.read(positions, size)

    def batches(self, size: int, batch_size: int):
        """Yield ``(positions, images)`` over the whole pool, ``batch_size`` images at a time."""
        for start in range(0, len(self), batch_size):
            positions = np.arange(start, min(start + batch_size, len(self)))
            yield positions, self.images(positions, size)


@dataclass(frozen=True)
class DatasetSpec:
    """How to open one dataset's held-out pool, and its defaults.

    Attributes:
        name: registry name (``--dataset``).
        summary: one line for the help text.
        open: ``open(root, download)`` returns the :class:`Pool`.
        needs_root: ``--root`` is required (the data lives on the user's disk).
        can_download: ``--download`` fetches the data into ``--root``.
        models: default ``--models`` (empty: the user must name them).
        counts: default number of grids per variant; a missing variant means "as many as the
            confident pool fills without reusing an image".
    """

    name: str
    summary: str
    open: Callable[[Path | None, bool], Pool]
    needs_root: bool = True
    can_download: bool = False
    models: tuple[str, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    def load(self, root: Path | None = None, download: bool = False) -> Pool:
        """Check ``root`` and ``download`` against this dataset, then open the pool."""
        if download and not self.can_download:
            fetchable = [n for n in DATASETS.names() if DATASETS.get(n).can_download]
            raise UserError(f"--download does not apply to {self.name}; valid for: {', '.join(fetchable)}")
        if not self.needs_root:
            if root is not None:
                raise UserError(f"{self.name} is embedded and takes no --root")
            return self.open(None, False)
        if root is None:
            raise UserError(f"{self.name} needs --root: {self.summary}")
        root = Path(root).expanduser()
        if not root.exists() and not download:
            raise UserError(f"--root {root} does not exist ({self.name}: {self.summary})")
        if root.exists() and not root.is_dir():
            raise UserError(f"--root {root} is not a folder ({self.name}: {self.summary})")
        return self.open(root, download)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def load_pool(name: str, root: Path | None = None, download: bool = False) -> Pool:
    """The held-out pool of the dataset registered as ``name`` (unknown names list the valid)."""
    spec = DATASETS.get(name)
    if not isinstance(spec, DatasetSpec):
        raise UserError(f"{name} is not a dataset spec (a DatasetSpec instance)")
    return spec.load(root, download)


def _add(spec: DatasetSpec) -> None:
    DATASETS.register(spec.name)(spec)


def _tensor_reader(images: torch.Tensor, scale: float = 1.0) -> ImageReader:
    def read(positions: np.ndarray, size: int) -> torch.Tensor:
        return resize(images[torch.from_numpy(positions)].float() * scale, size)

    return read


def _open_digits(root: Path | None, download: bool) -> Pool:
    from attrcli.data import digits

    images, labels, indices = digits.load_digits_split("heldout")
    return Pool(
        dataset="digits",
        labels=labels.numpy().astype(np.int64),
        sources=np.asarray(indices, dtype=np.int64),
        class_names=tuple(digits.CLASS_NAMES),
        read=_tensor_reader(images),
    )


def _open_cifar10(root: Path, download: bool) -> Pool:
    from torchvision.datasets import CIFAR10

    try:
        data = CIFAR10(str(root), train=False, download=download)
    except RuntimeError:
        raise UserError(
            f"no CIFAR10 test set in {root} (looked for {root / 'cifar-10-batches-py'}); "
            "point --root at the folder that holds cifar-10-batches-py, or add --download"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot download CIFAR10 into {root}: {exc}") from None
    pixels = torch.from_numpy(np.ascontiguousarray(data.data)).permute(0, 3, 1, 2)
    labels = np.asarray(data.targets, dtype=np.int64)
    sources = np.arange(len(labels), dtype=np.int64)
    return Pool("cifar10", labels, sources, tuple(data.classes), _tensor_reader(pixels, 1 / 255))


def _open_imagenet(root: Path, download: bool) -> Pool:
    pool = _open_folder(root, "imagenet")
    if len(pool.class_names) != IMAGENET_CLASSES:
        raise UserError(
            f"{root} has {len(pool.class_names)} class folders, ImageNet validation needs all "
            f"{IMAGENET_CLASSES} (<wnid>/*.JPEG) so that sorted folder names match the models' "
            "class indices; use --dataset folder for other class sets"
        )
    return pool


def load_images(paths: Sequence[Path | str], size: int, loader: Callable | None = None) -> torch.Tensor:
    """Image files as float32 ``(B, 3, size, size)`` in [0, 1], resized as every pool resizes.

    ``loader`` opens one file as an RGB PIL image (default: torchvision's, as ``ImageFolder``).
    """
    from torchvision.datasets.folder import default_loader
    from torchvision.transforms.functional import pil_to_tensor

    cells = []
    for path in paths:
        try:
            image = (loader or default_loader)(str(path))
        except OSError as exc:
            raise UserError(f"cannot read image {path}: {exc}") from None
        cells.append(resize(pil_to_tensor(image).float().div_(255.0)[None], size))
    return torch.cat(cells) if cells else torch.zeros(0, 3, size, size)


def _open_folder(root: Path, name: str) -> Pool:
    from torchvision.datasets import ImageFolder

    try:
        data = ImageFolder(str(root))
    except (FileNotFoundError, OSError) as exc:
        raise UserError(
            f"{root} is not an image folder with one sub-folder per class ({exc})"
        ) from None
    labels = np.asarray(data.targets, dtype=np.int64)

    def read(positions: np.ndarray, size: int) -> torch.Tensor:
        return load_images([data.samples[int(p)][0] for p in positions], size, data.loader)

    sources = np.arange(len(labels), dtype=np.int64)
    return Pool(name, labels, sources, tuple(data.classes), read)


_add(DatasetSpec(
    name="digits",
    summary="scikit-learn's handwritten digits, held-out half (embedded, 10 classes, 32-pixel cells)",
    open=_open_digits,
    needs_root=False,
    models=("digits-vgg11", "digits-resnet18"),
    counts={"distinct": 100, "corners": 100},
))

_add(DatasetSpec(
    name="cifar10",
    summary="torchvision's CIFAR10 test set; --root is the folder holding cifar-10-batches-py",
    open=_open_cifar10,
    can_download=True,
    counts={"distinct": 1000, "corners": 2000},
))

_add(DatasetSpec(
    name="imagenet",
    summary="ImageNet validation images in ImageFolder layout, --root/<wnid>/*.JPEG",
    open=_open_imagenet,
    models=("vgg11", "resnet18"),
    counts={"distinct": 500, "corners": 1000},
))

_add(DatasetSpec(
    name="folder",
    summary="any image folder with one sub-folder per class (sorted names are class indices)",
    open=lambda root, download: _open_folder(root, "folder"),
))
