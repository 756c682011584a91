"""Artifact keys: the one place that knows how a key becomes a path and back."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from attrcli.errors import UserError

STAGES = ("attributions", "scores", "aggatt")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-=,:@]*$")
# A grid file's name is the user's: anything a file name holds, bar a leading dot (hidden files,
# "..") and control characters (paths travel one a line between commands).
_GRIDS = re.compile(r"^[^./\x00-\x1f\x7f][^/\x00-\x1f\x7f]*$")
_SHARD = re.compile(r"^(?P<method>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)$")


@dataclass(frozen=True)
class ArtifactKey:
    """Identifies one artifact: ``<stage>/<grids>/<setting>/<model>/<layer>/<method>.h5``.

    ``method`` is the canonical method spec, which carries the method's non-default config
    (``occlusion:k=8,s=4``). ``shard`` is ``(index, count)`` for a shard of an attribution.
    """

    stage: str
    grids: str
    setting: str
    model: str
    layer: str
    method: str
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UserError(f"unknown artifact stage {self.stage!r}; valid: {', '.join(STAGES)}")
        if not isinstance(self.grids, str) or not _GRIDS.match(self.grids):
            raise UserError(
                f"invalid grid file name {self.grids!r} in artifact key: rename the file so that "
                "its name does not start with a dot and holds no control characters"
            )
        for field in ("setting", "model", "layer", "method"):
            value = getattr(self, field)
            if not isinstance(value, str) or not _PART.match(value) or ".." in value:
                raise UserError(
                    f"invalid {field} {value!r} in artifact key: use letters, digits and _.+-=,:@"
                )
        if self.shard is not None:
            index, count = self.shard
            if not (count >= 1 and 0 <= index < count):
                raise UserError(f"invalid shard {index}/{count}: need 0 <= i < N")

    @property
    def parts(self) -> tuple[str, ...]:
        return (self.stage, self.grids, self.setting, self.model, self.layer)

    @property
    def filename(self) -> str:
        if self.shard is None:
            return f"{self.method}.h5"
        index, count = self.shard
        return f"{self.method}.shard-{index}-of-{count}.h5"

    def path(self, root: Path | str) -> Path:
        """Where this artifact lives under the cache folder ``root``."""
        return Path(root).joinpath(*self.parts, self.filename)

    def with_stage(self, stage: str) -> "ArtifactKey":
        return ArtifactKey(stage, self.grids, self.setting, self.model, self.layer, self.method)

    def with_method(self, method: str) -> "ArtifactKey":
        return ArtifactKey(self.stage, self.grids, self.setting, self.model, self.layer, method, self.shard)

    def unsharded(self) -> "ArtifactKey":
        return ArtifactKey(self.stage, self.grids, self.setting, self.model, self.layer, self.method)

    def label(self) -> str:
        """Short human name: ``setting/model/layer/method``."""
        return f"{self.setting}/{self.model}/{self.layer}/{self.method}"

    @classmethod
    def from_path(cls, path: Path | str, root: Path | str | None = None) -> "ArtifactKey":
        """Inverse of :meth:`path`. Without ``root`` the last six path parts are used."""
        path = Path(path)
        if path.suffix != ".h5":
            raise UserError(f"{path} is not an artifact (expected a .h5 file)")
        parts = path.relative_to(root).parts if root is not None else path.parts[-6:]
        if len(parts) != 6:
            raise UserError(
                f"{path} is not an artifact path: expected "
                "<stage>/<grids>/<setting>/<model>/<layer>/<method>.h5"
            )
        stage, grids, setting, model, layer, name = parts
        stem = name[: -len(".h5")]
        shard = None
        match = _SHARD.match(stem)
        if match:
            stem = match["method"]
            shard = (int(match["index"]), int(match["count"]))
        return cls(stage, grids, setting, model, layer, stem, shard)
