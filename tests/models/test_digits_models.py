"""The digits models: deterministic training, the cache and its sidecar, held-out accuracy."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

import attrcli.data.digits as data
from attrcli.models import create_model, digits
from attrcli.models.digits import DigitsVGG, cache_paths, train_digits_model
from attrcli.models.training import (
    TrainConfig,
    deterministic,
    predict,
    random_affine,
    train_classifier,
)


def _tiny_data(n: int = 48):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def _tiny_module() -> DigitsVGG:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return DigitsVGG(width=4, hidden=8)


def _tiny_train(seed: int = 0, progress=None) -> dict[str, torch.Tensor]:
    module = _tiny_module()
    images, labels = _tiny_data()
    train_classifier(
        module, images, labels, mean=data.MEAN, std=data.STD,
        config=TrainConfig(epochs=2, batch_size=16, seed=seed), progress=progress,
    )
    return module.state_dict()


def test_training_is_deterministic_and_seeded():
    a, b, c = _tiny_train(0), _tiny_train(0), _tiny_train(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_training_restores_global_state_and_reports_progress():
    calls = []
    was = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(5)
    rng = torch.random.get_rng_state()
    _tiny_train(progress=lambda *args: calls.append(args))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.are_deterministic_algorithms_enabled() == was
    assert calls[-1] == ("training", 6, 6) and [c[1] for c in calls] == list(range(1, 7))


def test_deterministic_context_switches_kernels_on_inside_only():
    was = torch.are_deterministic_algorithms_enabled()
    with deterministic(0):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == was


def test_random_shift_moves_whole_pixels_with_zero_fill():
    image = torch.zeros(1, 1, 8, 8)
    image[0, 0, 3, 4] = 1.0
    images = image.repeat(64, 1, 1, 1)
    shifted = random_affine(images, torch.Generator().manual_seed(0), max_shift=2)
    assert torch.equal(shifted.flatten(1).max(1).values, torch.ones(64))  # exact copies
    assert shifted.sum() == 64  # the pixel is moved, never lost or duplicated
    positions = {tuple(torch.nonzero(s[0])[0].tolist()) for s in shifted}
    assert positions <= {(3 + dy, 4 + dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert len(positions) > 10
    assert torch.equal(random_affine(images, torch.Generator()), images)


def test_random_rotation_and_scale_are_seeded_and_stay_in_range():
    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    moved = random_affine(images, torch.Generator().manual_seed(1), max_rotation=10, max_scale=0.1)
    assert moved.shape == images.shape and 0 <= moved.min() and moved.max() <= 1
    again = random_affine(images, torch.Generator().manual_seed(1), max_rotation=10, max_scale=0.1)
    assert torch.equal(moved, again)
    assert not torch.allclose(moved, images)


@pytest.fixture
def quick_digits(monkeypatch):
    """Digits training on 20 images for one epoch, so cache logic can be tested fast."""
    load = data.load_digits_split
    splits = []

    def small(split):
        splits.append(split)
        images, labels, idx = load(split)
        return images[:20], labels[:20], idx[:20]

    monkeypatch.setattr(data, "load_digits_split", small)
    for name in digits.RECIPES:
        recipe = digits.RECIPES[name]
        monkeypatch.setitem(digits.RECIPES, name, replace(recipe, train=replace(recipe.train, epochs=1)))
    return splits


def test_first_use_trains_then_loads_the_cache(quick_digits, tmp_path, monkeypatch):
    first = create_model("digits-vgg11", cache_dir=tmp_path)
    weights, meta = cache_paths(tmp_path, "digits-vgg11")
    assert weights == tmp_path / "models" / "digits-vgg11.pt" and weights.is_file()
    record = json.loads(meta.read_text())
    assert record["epochs"] == 1 and record["seed"] == 0 and record["attrcli_version"]
    assert 0.0 <= record["heldout_accuracy"] <= 1.0 and record["train_seconds"] > 0
    assert record["weights_hash"] == first.weights_hash
    assert quick_digits == ["train", "heldout"]  # trained on train, held-out only evaluated
    assert sorted(p.name for p in weights.parent.iterdir()) == ["digits-vgg11.json", "digits-vgg11.pt"]

    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(digits, "train_classifier", fail)
    again = create_model("digits-vgg11", cache_dir=tmp_path)
    assert again.weights_hash == first.weights_hash


def test_damaged_or_stale_cache_is_retrained(quick_digits, tmp_path):
    first = train_digits_model("digits-resnet18", cache_dir=tmp_path)
    weights, meta = cache_paths(tmp_path, "digits-resnet18")
    weights.write_bytes(b"garbage")
    assert train_digits_model("digits-resnet18", cache_dir=tmp_path)["weights_hash"] == first["weights_hash"]
    record = json.loads(meta.read_text())
    record["config"]["train"]["epochs"] = 99
    meta.write_text(json.dumps(record))
    assert digits.read_record(tmp_path, "digits-resnet18") is None
    assert create_model("digits-resnet18", cache_dir=tmp_path).weights_hash == first["weights_hash"]
    assert digits.read_record(tmp_path, "digits-resnet18")["config"]["train"]["epochs"] == 1


def test_given_weights_skip_training(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    random = create_model("digits-resnet18", weights="random", cache_dir=tmp_path)
    torch.save(random.module.state_dict(), tmp_path / "w.pt")
    loaded = create_model("digits-resnet18", weights=tmp_path / "w.pt", cache_dir=tmp_path)
    assert loaded.weights_hash == random.weights_hash
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_trained_models_are_accurate_and_reproducible(trained_digits_cache, tmp_path):
    images, labels, _ = data.load_digits_split("heldout")
    for name in ("digits-vgg11", "digits-resnet18"):
        adapter = create_model(name, cache_dir=trained_digits_cache)
        record = digits.read_record(trained_digits_cache, name)
        probs = predict(adapter.module, images, mean=adapter.mean, std=adapter.std)
        accuracy = float((probs.argmax(1) == labels).float().mean())
        assert accuracy == pytest.approx(record["heldout_accuracy"]) and accuracy >= 0.97
        assert record["weights_hash"] == adapter.weights_hash
    # Determinism of the training itself is checked fast in test_training_is_deterministic_and_seeded.
