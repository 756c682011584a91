"""One answer to "is this artifact still what its inputs would give?", for every stage.

An artifact is *fresh* when its provenance records the inputs and config that computing it now
would record; *stale* when it records others; *missing* when there is no file; *corrupt* when
the file cannot be read as an artifact. ``make-grids``, ``attribute``, ``score``, ``aggatt``,
``correlate``, ``status`` and ``launch`` all ask :func:`freshness`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attrcli.errors import UserError
from attrcli.store.artifacts import read_provenance

FRESH, STALE, MISSING, CORRUPT = "fresh", "stale", "missing", "corrupt"
_ABSENT = object()


@dataclass(frozen=True)
class Freshness:
    """Where an artifact stands; ``detail`` says what changed (stale) or what is wrong (corrupt)."""

    state: str
    detail: str = ""

    @property
    def fresh(self) -> bool:
        return self.state == FRESH


def _field(record: Mapping[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _ABSENT
        value = value[part]
    return value


def freshness(
    path: Path | str,
    expected: Mapping[str, Any],
    *,
    labels: Mapping[str, str] | None = None,
    recorded: Callable[[dict], dict] | None = None,
) -> Freshness:
    """Compare the provenance of the artifact at ``path`` with ``expected``.

    ``expected`` maps a dotted provenance field (``"inputs"``, ``"inputs.grids"``,
    ``"config.identity"``) to the value computing the artifact now would record; fields are
    compared in order and the first that differs makes the artifact stale, its detail
    ``"<label> changed"`` (``labels`` names fields for people; the field itself otherwise).
    ``recorded`` may rewrite the stored provenance before the comparison, for a difference of
    spelling that does not change the computation.
    """
    path = Path(path)
    if not path.exists():
        return Freshness(MISSING)
    try:
        record = read_provenance(path)
    except UserError as exc:
        return Freshness(CORRUPT, str(exc).split(": ")[-1][:80])
    if recorded is not None:
        record = recorded(record)
    for name, value in expected.items():
        if _field(record, name) != value:
            label = (labels or {}).get(name, name)
            return Freshness(STALE, f"{label} changed")
    return Freshness(FRESH)
