"""Fixtures for the analysis tests: a tiny grid file and a factory of fake attribution artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def load_fakes():
    """``fakes.py`` loaded by path, so it works whatever the test import mode."""
    spec = importlib.util.spec_from_file_location(
        "attrcli_analysis_fakes", Path(__file__).with_name("fakes.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def fakes():
    return load_fakes()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def grid_file(workdir, fakes) -> Path:
    return fakes.make_grid_file(workdir / "data" / "grids" / "toy.h5")
