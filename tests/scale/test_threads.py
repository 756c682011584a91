"""The thread policy (attrcli.threads): one thread for small work, never more than the usable
cores, and the count in force where the digits models train and attribute."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import attrcli.engine.attribute as engine
from attrcli import threads
from attrcli.models import create_model
from attrcli.models.training import TrainConfig, train_classifier
from attrcli.stages.attribute import attribute
from tests.scale.helpers import grids


def test_multiply_accumulates_are_counted_exactly_and_the_module_is_left_as_it_was():
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(), nn.Linear(4 * 8 * 8, 5)
    )
    module.train()
    # conv: 4·8·8 outputs × 3·3·3 weights each; linear: 5 outputs × 256 inputs
    assert threads.forward_macs(module, torch.zeros(1, 3, 8, 8)) == 256 * 27 + 5 * 256
    assert threads.forward_macs(module, torch.zeros(2, 3, 8, 8, device="meta")) is None  # weights not on meta
    assert module.training and all(not m._forward_hooks for m in module.modules())
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
    assert threads.forward_macs(grouped, torch.zeros(1, 4, 5, 5)) == 4 * 25 * 2 * 9


def test_small_work_gets_one_thread_and_no_work_more_than_the_usable_cores(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    assert threads.threads_for(threads.SMALL_WORK / 2) == 1
    cores = threads.usable_cores()
    assert cores == len(os.sched_getaffinity(0))
    big = threads.threads_for(threads.SMALL_WORK * 10)
    assert big == min(torch.get_num_threads(), cores) and threads.threads_for(None) == big
    monkeypatch.setattr(threads, "usable_cores", lambda: 1)
    assert threads.threads_for(threads.SMALL_WORK * 10) == 1
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.threads_for(1.0) == 3
    monkeypatch.setenv(threads.ENV, "zero")
    assert threads.threads_for(1.0) == 1


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), threads.torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_digits_training_and_attribution_run_on_one_thread(tmp_path, monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    images, labels = torch.rand(8, 3, 8, 8), torch.tensor([0, 1] * 4)
    result = train_classifier(module, images, labels, mean=(0.5,) * 3, std=(0.25,) * 3,
                              config=TrainConfig(epochs=1, batch_size=4, max_shift=0, max_rotation=0, max_scale=0))
    assert result.threads == 1

    seen = []
    real = engine.compute_maps
    monkeypatch.setattr(engine, "compute_maps", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    model = create_model("digits-vgg11", weights="random")
    attribute(grids=grids(tmp_path, count=2), setting="gridpg", model=model, layers="input",
              methods="grad", batch_size=2, cache_root=tmp_path / "cache")
    assert seen == [1] and torch.get_num_threads() == before
