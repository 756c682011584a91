"""Grid construction with two tiny deterministic classifiers standing in for the digits models.

The stand-ins are nearest-class-mean classifiers on the digits training split (logits are
scaled negative squared distances); their scale sets how confident they are, so the joint
filter, the per-model filter and an over-strict --min-conf all have something to bite on.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attrcli.data import digits, grids
from attrcli.data.datasets import DATASETS, load_pool
from attrcli.errors import UserError
from attrcli.models.adapter import ModelAdapter
from attrcli.registry import Registry
from attrcli.stages import make_grids as stage
from attrcli.store import read_artifact


@functools.cache
def class_means() -> torch.Tensor:
    x, y, _ = digits.load_digits_split("train")
    x = digits.normalize(x).flatten(1)
    return torch.stack([x[y == c].mean(0) for c in range(10)])


class Centroids(nn.Module):
    """Nearest class mean on the digits training split; ``scale`` sets the confidence."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("means", class_means())
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        distance = (x * x).sum(1, keepdim=True) - 2 * x @ self.means.T + (self.means**2).sum(1)
        return -self.scale * distance / x.shape[1]


def fake_adapter(name: str, scale: float) -> ModelAdapter:
    module = Centroids(scale).eval()
    return ModelAdapter(
        name=name, module=module, blocks=[("body", nn.Identity())], head=module, gap_head=True,
        aliases={"middle": "body", "final": "body"}, stage_layers=["body"], cell_size=32,
        num_classes=10, mean=digits.MEAN, std=digits.STD, weights_hash=f"centroids-{scale}",
    )


FAKES: Registry = Registry("model")
FAKES.register("digits-vgg11")(lambda: fake_adapter("digits-vgg11", 40.0))
FAKES.register("digits-resnet18")(lambda: fake_adapter("digits-resnet18", 25.0))
FAKES.register("timid")(lambda: fake_adapter("timid", 10.0))


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    monkeypatch.setattr(stage, "load_models", lambda names, **_: [FAKES.get(n)() for n in names])


@pytest.fixture(scope="module")
def pool():
    return load_pool("digits")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The default files (both variants, joint filter) and the pool masks of the two models."""
    out = tmp_path_factory.mktemp("grids")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stage, "load_models", lambda names, **_: [FAKES.get(n)() for n in names])
        paths = stage.make_grids(out_dir=out)
    return {p.stem: read_artifact(p) for p in paths}


def rerun(artifact, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and confidence of model ``name`` on every cell of a grid file."""
    n, c = artifact.attrs["n"], artifact.attrs["cell_size"]
    images = torch.from_numpy(artifact.data["images"])
    cells = images.reshape(-1, 3, n, c, n, c).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, c, c)
    probs = FAKES.get(name)().logits(cells).softmax(1)
    conf, pred = probs.max(1)
    return pred.numpy().reshape(-1, n * n), conf.numpy().reshape(-1, n * n)


def test_default_files(made):
    assert sorted(made) == ["digits-corners-n2", "digits-distinct-n2"]
    for art in made.values():
        assert art.data["images"].shape == (100, 3, 64, 64) and art.data["images"].dtype == np.float32
        assert art.attrs["models"] == ["digits-vgg11", "digits-resnet18"]
        assert art.attrs["reused"] == 0 and not art.attrs["per_model"]
        assert art.attrs["mean"] == list(digits.MEAN) and art.attrs["cell_size"] == 32
        # Without reuse no image appears twice in a file.
        assert len(np.unique(art.data["sources"])) == art.data["sources"].size
        assert art.provenance["inputs"]["model:digits-vgg11"] == "centroids-40.0"
        assert "created" not in art.provenance and "seconds" not in art.provenance


def test_distinct_grids_hold_distinct_classes(made):
    labels = made["digits-distinct-n2"].data["labels"]
    assert all(len(set(row)) == 4 for row in labels)
    # Classes are shuffled over the cell positions.
    for cell in range(4):
        assert len(set(labels[:, cell])) >= 8


def test_corner_grids_hold_one_class_in_the_corners(made):
    art = made["digits-corners-n2"]
    labels, sources = art.data["labels"], art.data["sources"]
    assert (labels[:, 0] == labels[:, 3]).all()
    assert (sources[:, 0] != sources[:, 3]).all()
    others = labels[:, 1:3]
    assert (others != labels[:, :1]).all()
    assert (others[:, 0] != others[:, 1]).all()


@pytest.mark.parametrize("variant", ["distinct", "corners"])
def test_every_cell_passes_every_filter_model(made, pool, variant):
    art = made[f"digits-{variant}-n2"]
    for name in ("digits-vgg11", "digits-resnet18"):
        pred, conf = rerun(art, name)
        assert (pred == art.data["labels"]).all()
        assert (conf >= 0.99).all()
    # Cells are exactly the normalised held-out images their sources name.
    position = {int(s): i for i, s in enumerate(pool.sources)}
    g = 7
    cells = pool.images(np.array([position[int(s)] for s in art.data["sources"][g]]), 32)
    cells = digits.normalize(cells).numpy()
    image = art.data["images"][g]
    np.testing.assert_array_equal(image[:, :32, 32:], cells[1])
    np.testing.assert_array_equal(image[:, 32:, :32], cells[2])
    np.testing.assert_array_equal(pool.labels[[position[int(s)] for s in art.data["sources"][g]]],
                                  art.data["labels"][g])


def test_no_training_image_enters_a_grid(made):
    _, _, heldout = digits.load_digits_split("heldout")
    _, _, train = digits.load_digits_split("train")
    for art in made.values():
        used = set(art.data["sources"].ravel().tolist())
        assert used <= set(heldout.tolist())
        assert not used & set(train.tolist())


def test_same_arguments_give_identical_bytes(tmp_path, made):
    first = stage.make_grids(out_dir=tmp_path / "a", variant="corners", seed=3, count=20)
    second = stage.make_grids(out_dir=tmp_path / "b", variant="corners", seed=3, count=20)
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in first + second]
    assert digest[0] == digest[1]
    # A file made alone equals the same file made together with the other variant.
    alone = stage.make_grids(out_dir=tmp_path / "c", variant="distinct")[0]
    assert read_artifact(alone).data["sources"].tolist() == made["digits-distinct-n2"].data["sources"].tolist()
    other = stage.make_grids(out_dir=tmp_path / "d", variant="distinct")[0]
    assert alone.read_bytes() == other.read_bytes()


def test_names_carry_non_default_settings(tmp_path):
    spec = DATASETS.get("digits")
    name = lambda **kw: grids.grid_name(spec=spec, root=None, **{
        "variant": "corners", "n": 2, "count": 100, "min_conf": 0.99, "seed": 0,
        "models": spec.models, **kw})
    assert name() == "digits-corners-n2"
    assert name(count=50, seed=3) == "digits-corners-n2-count50-seed3"
    assert name(n=3, min_conf=0.9) == "digits-corners-n3-conf0.9"
    assert name(models=["digits-vgg11"]) == "digits-corners-n2-digits-vgg11"
    folder = grids.grid_name(spec=DATASETS.get("folder"), root=tmp_path / "my pets", variant="distinct",
                             n=2, count=None, min_conf=0.99, seed=0, models=["m"])
    assert folder.startswith("folder-my_pets-") and folder.endswith("-distinct-n2-m")


def test_reuse_is_counted(tmp_path, pool):
    path = stage.make_grids(out_dir=tmp_path, variant="distinct", count=300)[0]
    art = read_artifact(path)
    sources = art.data["sources"]
    values, uses = np.unique(sources, return_counts=True)
    assert art.attrs["reused"] == int((uses > 1).sum()) > 0
    assert all(len(set(row)) == 4 for row in sources)  # never twice inside one grid
    # 1200 cells from fewer confident images: every one is used, and within a class the
    # least used image is taken next, so uses differ by at most one.
    assert len(values) == art.attrs["confident"] < 1200
    labels = dict(zip(sources.ravel().tolist(), art.data["labels"].ravel().tolist()))
    for c in range(10):
        counts = uses[[labels[v] == c for v in values]]
        assert counts.max() - counts.min() <= 1


def test_count_none_fills_without_reuse(pool):
    labels = pool.labels
    eligible = np.arange(0, len(labels), 3)
    positions, reused = grids.plan_grids(labels, eligible, variant="distinct", n=2, count=None, seed=1)
    assert reused == 0 and len(positions) >= 0.9 * len(eligible) // 4
    assert len(np.unique(positions)) == positions.size
    _, more = grids.plan_grids(labels, eligible, variant="distinct", n=2, count=len(positions) + 1, seed=1)
    assert more > 0


def test_corners_with_few_classes_repeat_other_classes_not_images():
    labels = np.array([0] * 5 + [1] * 6 + [2] * 4)
    eligible = np.arange(len(labels))
    positions, _ = grids.plan_grids(labels, eligible, variant="corners", n=3, count=30, seed=0)
    cells = labels[positions]
    assert (cells[:, 0] == cells[:, 8]).all()
    assert (cells[:, 1:8] != cells[:, :1]).all()
    assert all(len(set(row)) == 9 for row in positions)
    # With 2 classes left for 7 cells, both other classes appear in every grid.
    assert all(len(set(row[1:8])) == 2 for row in cells)


def test_joint_and_per_model_filters(tmp_path):
    paths = stage.make_grids(out_dir=tmp_path, per_model=True, variant="corners")
    names = [p.stem for p in paths]
    assert names == ["digits-corners-n2-digits-vgg11", "digits-corners-n2-digits-resnet18"]
    vgg, resnet = (read_artifact(p) for p in paths)
    joint = stage.make_grids(out_dir=tmp_path / "joint", variant="corners")[0]
    confident = [a.attrs["confident"] for a in (vgg, resnet, read_artifact(joint))]
    assert confident[2] <= min(confident[:2]) and confident[0] != confident[1]
    assert vgg.attrs["per_model"] and vgg.attrs["models"] == ["digits-vgg11"]
    pred, conf = rerun(resnet, "digits-resnet18")
    assert (pred == resnet.data["labels"]).all() and (conf >= 0.99).all()
    # A per-model file is the file a single-model run makes.
    single = stage.make_grids(out_dir=tmp_path / "single", variant="corners", models=["digits-vgg11"])[0]
    assert single.read_bytes() == paths[0].read_bytes()


def test_up_to_date_files_are_kept_and_force_rewrites(tmp_path):
    seen = []
    report = lambda path, status: seen.append((path.name, status))
    path = stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)[0]
    inode = path.stat().st_ino
    stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)
    assert path.stat().st_ino == inode
    stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, force=True, report=report)
    assert path.stat().st_ino != inode
    assert [s for _, s in seen] == ["written", "up to date", "written"]


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 4, "variant": "distinct"}, "distinct 4×4 grids need 16 distinct classes, digits has 10; use --n 3"),
    ({"n": 1}, "--n must be at least 2"),
    ({"variant": "diagonal"}, "valid: distinct, corners, both"),
    ({"count": 0}, "--count must be at least 1"),
    ({"min_conf": 1.5}, "between 0 and 1"),
    ({"seed": -1}, "--seed must be 0 or more"),
    ({"cell_size": 64}, "model digits-vgg11 needs 32-pixel cells, not --cell-size 64"),
    ({"models": ["nope"]}, "unknown model 'nope'; valid: digits-resnet18, digits-vgg11, timid"),
    ({"models": []}, "no model given"),
    ({"models": ["timid"], "variant": "distinct"},
     r"only \d classes have any: \d+ of 898 digits images pass \(classified correctly by timid"),
    ({"models": ["timid"], "variant": "corners"}, "corner grids need 2 confident images of one class, no class has 2"),
    ({"dataset": "cifar10"}, "cifar10 needs --root"),
    ({"root": Path(".")}, "digits is embedded and takes no --root"),
])
def test_bad_input_raises_before_writing(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        stage.make_grids(out_dir=tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_check_pool_counts_what_is_needed():
    labels = np.array([0, 0, 1, 2, 3])
    grids.check_pool(labels, np.arange(5), variant="distinct", n=2, who="m", min_conf=0.99, dataset="d")
    with pytest.raises(UserError, match="need confident images of 4 classes, only 3 classes have any: 4 of 5"):
        grids.check_pool(labels, np.arange(4), variant="distinct", n=2, who="m", min_conf=0.99, dataset="d")
    with pytest.raises(UserError, match="2 confident images of one class and 7 of other classes"):
        grids.check_pool(labels, np.arange(5), variant="corners", n=3, who="m", min_conf=0.99, dataset="d")


def test_a_corrupt_or_stale_file_is_rewritten(tmp_path, monkeypatch):
    seen = []
    report = lambda path, status: seen.append(status)
    path = stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)[0]
    written = path.read_bytes()
    path.write_bytes(b"not an artifact")
    stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)
    assert path.read_bytes() == written
    # Other weights behind the same model name: same file name, other inputs, so rewritten.
    other = lambda names, **_: [fake_adapter(n, 30.0) for n in names]
    monkeypatch.setattr(stage, "load_models", other)
    stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)
    assert read_artifact(path).provenance["inputs"]["model:digits-vgg11"] == "centroids-30.0"
    stage.make_grids(out_dir=tmp_path, variant="distinct", count=5, report=report)
    assert seen == ["written", "written", "written", "up to date"]
