"""What the analysis stages share: the statuses they report and the check behind them.

An output is up to date when its provenance records the same input hashes and config as a run
now would (:func:`attrcli.store.freshness.freshness`); otherwise it is stale and recomputed.
``force`` recomputes anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from attrcli.store import ArtifactKey
from attrcli.store.freshness import FRESH, MISSING, freshness

COMPUTED = "computed"
UP_TO_DATE = "up to date"
STALE = "stale, recomputed"
FORCED = "forced, recomputed"


@dataclass(frozen=True)
class StageResult:
    """One artifact a stage produced or found up to date."""

    path: Path
    key: ArtifactKey
    status: str

    def to_dict(self) -> dict:
        return {"path": str(self.path), "key": self.key.label(), "status": self.status}


def status_of(out: Path, inputs: dict, config: dict, force: bool) -> str:
    """How an output stands against the inputs and config it would be computed from now:
    computed (missing), forced (there, but ``force``), up to date, or stale (recorded inputs
    or config differ, or the provenance cannot be read)."""
    if force and out.exists():
        return FORCED
    state = freshness(out, {"inputs": inputs, "config": config}).state
    return {MISSING: COMPUTED, FRESH: UP_TO_DATE}.get(state, STALE)
