"""Keys: the one place that knows how an artifact, a grid file or a correlation becomes a path,
how a path becomes a key again, and how the keys under a folder are listed.

Nothing else in attrcli builds, slices or globs these paths: it asks a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path

from attrcli.errors import UserError

STAGES = ("attributions", "scores", "aggatt")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+\-=,:@]*$")
# A grid file's name is the user's: anything a file name holds, bar a leading dot (hidden files,
# "..") and control characters (paths travel one a line between commands).
_GRIDS = re.compile(r"^[^./\x00-\x1f\x7f][^/\x00-\x1f\x7f]*$")
_SHARD = re.compile(r"^(?P<method>.+)\.shard-(?P<index>\d+)-of-(?P<count>\d+)$")
SUFFIX = ".h5"
PARTIAL = ".partial"  # the checkpoint folder beside an artifact being computed
CORRELATIONS = "correlations"


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

    def checkpoint_folder(self, root: Path | str) -> Path:
        """The folder holding this artifact's checkpointed chunks while it is computed."""
        path = self.path(root)
        return path.with_name(path.name + PARTIAL)

    def shards_on_disk(self, root: Path | str) -> list["ArtifactKey"]:
        """The shard keys of this (unsharded) artifact found under ``root``, by shard count then
        index: ``shard-0-of-2``, ``shard-1-of-2``, ``shard-0-of-3``..."""
        folder = self.unsharded().path(root).parent
        found = []
        for path in folder.glob(f"{glob_escape(self.method)}.shard-*-of-*{SUFFIX}"):
            key = _parsed(path, Path(root))
            if key is not None and key.shard is not None and key.unsharded() == self.unsharded():
                found.append(key)
        return sorted(found, key=lambda k: (k.shard[1], k.shard[0]))  # type: ignore[index]

    @classmethod
    def glob(
        cls, root: Path | str, stage: str, *, grids: str = "*", setting: str = "*", model: str = "*",
        layer: str = "*", method: str = "*", shards: bool = False,
    ) -> list["ArtifactKey"]:
        """The keys of the artifacts of ``stage`` under ``root`` whose parts match the given glob
        patterns, sorted by path. Hidden files, checkpoint folders and files that are not keys
        are skipped; shards only with ``shards=True``."""
        if stage not in STAGES:
            raise UserError(f"unknown artifact stage {stage!r}; valid: {', '.join(STAGES)}")
        root = Path(root)
        pattern = f"{grids}/{setting}/{model}/{layer}/{method}{SUFFIX}"
        out = []
        for path in sorted((root / stage).glob(pattern)):
            key = _parsed(path, root)
            if key is not None and (shards or key.shard is None):
                out.append(key)
        return out

    @classmethod
    def split(cls, path: Path | str) -> tuple[Path, "ArtifactKey"]:
        """``(cache root, key)`` of an artifact path ``<root>/<stage>/.../<method>.h5``; a path
        of exactly six parts has the current folder as root."""
        path = Path(path)
        key = cls.from_path(path)
        return root_of(path), key

    def with_stage(self, stage: str) -> "ArtifactKey":
        return ArtifactKey(stage, self.grids, self.setting, self.model, self.layer, self.method)

    def with_method(self, method: str) -> "ArtifactKey":
        return ArtifactKey(self.stage, self.grids, self.setting, self.model, self.layer, method, self.shard)

    def unsharded(self) -> "ArtifactKey":
        return ArtifactKey(self.stage, self.grids, self.setting, self.model, self.layer, self.method)

    def label(self) -> str:
        """Short human name: ``setting/model/layer/method``."""
        return f"{self.setting}/{self.model}/{self.layer}/{self.method}"

    def sibling(self, stage: str, path: Path | str) -> Path:
        """The path of this key's artifact of another ``stage``, beside ``path`` (an artifact
        of this key): the scores of an attribution, the attribution of an AggAtt..."""
        return self.with_stage(stage).unsharded().path(root_of(path))

    @classmethod
    def from_path(cls, path: Path | str, root: Path | str | None = None) -> "ArtifactKey":
        """Inverse of :meth:`path`. Without ``root`` the last six path parts are used."""
        path = Path(path)
        if path.suffix != SUFFIX:
            raise UserError(f"{path} is not an artifact (expected a .h5 file)")
        parts = path.relative_to(root).parts if root is not None else path.parts[-6:]
        if len(parts) != 6:
            raise UserError(
                f"{path} is not an artifact path: expected "
                "<stage>/<grids>/<setting>/<model>/<layer>/<method>.h5"
            )
        stage, grids, setting, model, layer, name = parts
        stem = name[: -len(SUFFIX)]
        shard = None
        match = _SHARD.match(stem)
        if match:
            stem = match["method"]
            shard = (int(match["index"]), int(match["count"]))
        return cls(stage, grids, setting, model, layer, stem, shard)


def root_of(path: Path | str) -> Path:
    """The cache root of an artifact path (six parts below it); the current folder for a path
    of six parts or fewer."""
    path = Path(path)
    return Path(*path.parts[:-6]) if len(path.parts) > 6 else Path(".")


def glob_escape(text: str) -> str:
    """``text`` as a literal inside a glob pattern."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _parsed(path: Path, root: Path) -> ArtifactKey | None:
    if path.name.startswith(".") or not path.is_file():
        return None
    try:
        return ArtifactKey.from_path(path, root)
    except (UserError, ValueError):
        return None


def grids_part(grids: str | Path) -> str:
    """The ``<grids>`` part of artifact keys for a grid file path, or a grid name as is."""
    path = Path(grids)
    return path.stem if path.suffix == SUFFIX else str(grids)


@dataclass(frozen=True)
class GridFileKey:
    """A grid file: ``<folder>/<name>.h5``; ``name`` is the ``<grids>`` part of artifact keys."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _GRIDS.match(self.name):
            raise UserError(
                f"invalid grid file name {self.name!r}: use a name that does not start with a dot "
                "and holds no control characters"
            )

    def path(self, folder: Path | str) -> Path:
        return Path(folder) / f"{self.name}{SUFFIX}"


@dataclass(frozen=True)
class CorrelationKey:
    """A correlation artifact: ``<root>/correlations/<name>.h5``."""

    name: str

    def __post_init__(self) -> None:
        # a file name: default names embed the grid file's name, which may hold any character
        if not isinstance(self.name, str) or not _GRIDS.match(self.name):
            raise UserError(f"invalid correlation name {self.name!r}: use a plain file name")

    def path(self, root: Path | str) -> Path:
        return Path(root) / CORRELATIONS / f"{self.name}{SUFFIX}"

    @classmethod
    def from_path(cls, path: Path | str) -> "CorrelationKey":
        path = Path(path)
        if path.suffix != SUFFIX or path.parent.name != CORRELATIONS:
            raise UserError(f"{path} is not a correlation artifact (expected <root>/correlations/<name>.h5)")
        return cls(path.stem)


def iter_checkpoint_folders(root: Path | str, stage: str = "attributions") -> Iterator[tuple[ArtifactKey, Path]]:
    """``(key, folder)`` of every checkpoint folder of ``stage`` under ``root``."""
    root = Path(root)
    for folder in sorted((root / stage).glob(f"*/*/*/*/*{SUFFIX}{PARTIAL}")):
        if not folder.is_dir():
            continue
        artifact = folder.with_name(folder.name[: -len(PARTIAL)])
        try:
            yield ArtifactKey.from_path(artifact, root), folder
        except UserError:
            continue


def checkpoint_folder_of(artifact: Path | str) -> Path:
    """The checkpoint folder beside the artifact file ``artifact`` (any path, a shard's too)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + PARTIAL)


@dataclass(frozen=True)
class ComparisonKey:
    """A comparison artifact (``attrcli compare``): ``<root>/comparisons/<name>.h5``. The name
    is a file name (default names embed the grid file's name, which may hold any character)."""

    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _GRIDS.match(self.name):
            raise UserError(f"invalid comparison name {self.name!r}: use a plain file name")

    def path(self, root: Path | str) -> Path:
        return Path(root) / "comparisons" / f"{self.name}{SUFFIX}"


SANITY = "sanity"
SANITY_MODES = ("cascading", "independent")
SANITY_REGIONS = ("grid", "cell")


@dataclass(frozen=True)
class SanityKey:
    """Artifacts of one model-randomisation run (``attrcli sanity``): its ``mode`` and ``seed``.

    ``<root>/sanity/<mode>-seed<seed>/steps/<step>/`` is the cache folder of the maps of the
    model randomised up to ``step`` (laid out as any cache folder, so the attribute stage caches
    and checkpoints them); ``<root>/sanity/<mode>-seed<seed>/similarity/<grids>/<setting>/
    <model>/<layer>/<method>.h5`` holds a key's similarities to the trained model's maps
    (``similarity-cell/`` those over the target cell only).
    """

    mode: str
    seed: int

    def __post_init__(self) -> None:
        if self.mode not in SANITY_MODES:
            raise UserError(f"unknown randomisation mode {self.mode!r}; valid: {', '.join(SANITY_MODES)}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed {self.seed}: give a non-negative integer")

    def folder(self, root: Path | str) -> Path:
        return Path(root) / SANITY / f"{self.mode}-seed{self.seed}"

    def step_root(self, root: Path | str, step: str) -> Path:
        """The cache folder of the maps computed on the model randomised up to ``step``."""
        if not _PART.match(step) or ".." in step:
            raise UserError(f"invalid randomisation step {step!r}")
        return self.folder(root) / "steps" / step

    def similarity_path(self, root: Path | str, key: ArtifactKey, region: str = "grid") -> Path:
        """Where the similarities of ``key`` (an attribution key of the trained model) live;
        those over the target cell only (``region="cell"``) under ``similarity-cell/``."""
        if region not in SANITY_REGIONS:
            raise UserError(f"unknown region {region!r}; valid: {', '.join(SANITY_REGIONS)}")
        folder = "similarity" if region == "grid" else f"similarity-{region}"
        return self.folder(root).joinpath(
            folder, key.grids, key.setting, key.model, key.layer, key.unsharded().filename
        )

    @classmethod
    def glob_similarities(cls, root: Path | str) -> list[Path]:
        """Every similarity artifact under the cache folder ``root``, sorted."""
        return sorted(
            p for p in (Path(root) / SANITY).glob(f"*-seed*/similarity*/*/*/*/*/*{SUFFIX}")
            if p.is_file() and not p.name.startswith(".")
        )
