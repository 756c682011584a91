"""Fixtures of the scale tests."""

from tests.fixtures_digits import trained_digits_cache  # noqa: F401
