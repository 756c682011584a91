"""Fixtures shared by every test folder."""

from tests.fixtures_digits import trained_digits_cache  # noqa: F401  (session fixture: digits models trained once)
