"""Session fixture: the two digits models trained once into a temporary cache.

Register it in tests/conftest.py (``from fixtures_digits import trained_digits_cache``) and use
``create_model("digits-vgg11", cache_dir=trained_digits_cache)`` in slow tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DIGITS_MODELS = ("digits-vgg11", "digits-resnet18")


@pytest.fixture(scope="session")
def trained_digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding ``models/digits-*.pt`` and their sidecars (trained once per session)."""
    from attrcli.models.digits import train_digits_model

    cache = tmp_path_factory.mktemp("cache")
    for name in DIGITS_MODELS:
        train_digits_model(name, cache_dir=cache)
    return cache
