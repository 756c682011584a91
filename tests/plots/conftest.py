"""Fixtures for the figure tests: a working folder and the synthetic-artifact helpers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def helpers():
    """``helpers.py`` beside this file, loaded by path (works whatever the import mode)."""
    return _load("attrcli_plot_helpers", Path(__file__).with_name("helpers.py"))


@pytest.fixture(scope="session")
def fakes(helpers):
    return helpers.load_fakes()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
