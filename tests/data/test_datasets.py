"""Dataset pools: the digits held-out split, image folders, and the checks on --root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attrcli.data import digits
from attrcli.data.datasets import DATASETS, load_pool, normalize, resize
from attrcli.errors import UserError


@pytest.fixture(scope="module")
def pool():
    return load_pool("digits")


def test_digits_pool_is_the_heldout_split(pool):
    images, labels, indices = digits.load_digits_split("heldout")
    _, _, train = digits.load_digits_split("train")
    assert len(pool) == len(indices) == 898
    np.testing.assert_array_equal(pool.sources, indices)
    np.testing.assert_array_equal(pool.labels, labels.numpy())
    assert not set(pool.sources) & set(train)
    assert pool.class_names == tuple(str(i) for i in range(10))
    picked = np.array([5, 0, 897])
    assert torch.equal(pool.images(picked, 32), images[picked])


def test_digits_images_resize_smoothly(pool):
    small = pool.images(np.arange(4), 32)
    big = pool.images(np.arange(4), 64)
    assert big.shape == (4, 3, 64, 64)
    assert 0.0 <= big.min() and big.max() <= 1.0
    # Upsampling keeps the mean brightness of each image (bilinear, up to edge effects).
    np.testing.assert_allclose(big.mean((1, 2, 3)), small.mean((1, 2, 3)), atol=0.01)
    assert pool.images(np.array([], dtype=np.int64), 32).shape == (0, 3, 32, 32)


def test_resize_and_normalize_values():
    flat = torch.full((1, 3, 10, 7), 0.25)
    assert torch.allclose(resize(flat, 4), torch.full((1, 3, 4, 4), 0.25))
    out = normalize(torch.ones(1, 3, 2, 2), (0.5, 0.0, 1.0), (0.5, 2.0, 1.0))
    assert out[0, :, 0, 0].tolist() == [1.0, 0.5, 0.0]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(normalize(x, digits.MEAN, digits.STD), digits.normalize(x))


def _write_folder(root: Path, classes: dict[str, list[tuple[int, int, tuple[int, int, int]]]], ext: str):
    for name, images in classes.items():
        (root / name).mkdir(parents=True)
        for i, (w, h, color) in enumerate(images):
            Image.new("RGB", (w, h), color).save(root / name / f"img{i}.{ext}")


@pytest.mark.parametrize("ext", ["png", "JPEG"])
def test_image_folder_pools(tmp_path, ext):
    _write_folder(tmp_path, {
        "n02": [(20, 10, (255, 0, 0)), (7, 9, (0, 255, 0))],
        "n01": [(16, 16, (0, 0, 255))],
    }, ext)
    pool = load_pool("folder", tmp_path)
    assert pool.dataset == "folder"
    assert pool.class_names == ("n01", "n02")  # sorted folder names are class indices
    np.testing.assert_array_equal(pool.labels, [0, 1, 1])
    np.testing.assert_array_equal(pool.sources, [0, 1, 2])
    images = pool.images(np.array([1, 0, 2]), 8)
    assert images.shape == (3, 3, 8, 8)
    means = images.mean((2, 3))
    expected = torch.tensor([[1.0, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert torch.allclose(means, expected, atol=0.02)  # JPEG is lossy, PNG exact


def test_imagenet_needs_every_class_folder(tmp_path):
    # A subset of classes would shift the sorted-folder class indices away from the model's.
    _write_folder(tmp_path, {"n01440764": [(8, 8, (1, 2, 3))], "n01443537": [(8, 8, (1, 2, 3))]}, "JPEG")
    with pytest.raises(UserError, match="has 2 class folders, ImageNet validation needs all 1000"):
        load_pool("imagenet", tmp_path)


def test_unknown_dataset_lists_valid():
    with pytest.raises(UserError, match="valid: cifar10, digits, folder, imagenet"):
        load_pool("mnist")


@pytest.mark.parametrize("name", ["cifar10", "imagenet", "folder"])
def test_root_is_required_and_must_exist(tmp_path, name):
    with pytest.raises(UserError, match=f"{name} needs --root"):
        load_pool(name)
    with pytest.raises(UserError, match="does not exist"):
        load_pool(name, tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        load_pool(name, tmp_path / "file")


def test_cifar10_without_data_says_where_it_looks(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py.*--download"):
        load_pool("cifar10", tmp_path)


def test_empty_folder_is_not_an_image_folder(tmp_path):
    with pytest.raises(UserError, match="one sub-folder per class"):
        load_pool("folder", tmp_path)


def test_digits_takes_no_root_and_no_download(tmp_path):
    with pytest.raises(UserError, match="embedded and takes no --root"):
        load_pool("digits", tmp_path)
    with pytest.raises(UserError, match="--download does not apply to digits; valid for: cifar10"):
        load_pool("digits", download=True)


def test_registry_defaults():
    spec = DATASETS.get("digits")
    assert spec.models == ("digits-vgg11", "digits-resnet18")
    assert spec.counts == {"distinct": 100, "corners": 100}
    assert DATASETS.get("cifar10").can_download and not DATASETS.get("folder").can_download


def test_the_torch_free_dataset_names_mirror_the_registry():
    from attrcli import names

    assert list(names.DATASETS) == DATASETS.names()


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    """The digits come from scikit-learn's data file without importing scikit-learn, exactly as
    ``load_digits`` gives them (so grid files stay byte-identical)."""
    from sklearn.datasets import load_digits

    from attrcli.data.digits import digits_arrays

    images, labels = digits_arrays()
    reference = load_digits()
    assert images.dtype == reference.images.dtype and np.array_equal(images, reference.images)
    assert np.array_equal(labels, reference.target) and images.shape == (1797, 8, 8)
