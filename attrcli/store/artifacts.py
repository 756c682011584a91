"""HDF5 artifacts with provenance, written atomically and checked on read.

Every artifact holds named datasets, plain attributes, and a ``provenance`` attribute (JSON):
schema version, attrcli/torch/captum versions, the full config, the content hashes of its inputs,
seed, device and time taken. Files are written to a temporary name in the same folder and
renamed when complete, so a reader never sees a half-written artifact (:mod:`attrcli.store.files`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from attrcli import __version__
from attrcli.errors import UserError
from attrcli.store.files import atomic_output

SCHEMA_VERSION = 1


@dataclass
class Artifact:
    """An artifact read back from disk."""

    path: Path
    data: dict[str, np.ndarray]
    attrs: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape results."""
    versions = {"attrcli": __version__, "python": platform.python_version()}
    for name in ("torch", "captum", "numpy"):
        try:
            versions[name] = _version(name)
        except ImportError:  # pragma: no cover - all are dependencies
            versions[name] = "missing"
    return versions


def _version(name: str) -> str:
    """``name.__version__``; captum's from its installed metadata (the same string), so writing
    an artifact does not import it (seconds of a call's fixed cost)."""
    if name == "captum" and name not in sys.modules:
        from importlib import metadata

        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ImportError(name) from None
    return __import__(name).__version__


def make_provenance(
    *,
    config: Mapping[str, Any],
    inputs: Mapping[str, str],
    seed: int | None = None,
    device: str = "cpu",
    seconds: float | None = None,
) -> dict[str, Any]:
    """The provenance record stored with every artifact."""
    return {
        "schema_version": SCHEMA_VERSION,
        "versions": library_versions(),
        "config": dict(config),
        "inputs": dict(inputs),
        "seed": seed,
        "device": device,
        "seconds": seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def file_hash(path: Path | str) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _raw(array: np.ndarray) -> memoryview | bytes:
    """The bytes of a C-contiguous array as ``tobytes()`` gives them, without the copy."""
    if array.dtype.hasobject:
        return array.tobytes()
    return memoryview(array.reshape(-1).view(np.uint8))


def content_hash(*items: Any) -> str:
    """SHA-256 over arrays (dtype, shape and bytes) and JSON-able values, in order."""
    digest = hashlib.sha256()
    for item in items:
        if isinstance(item, np.ndarray):
            array = np.ascontiguousarray(item)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(_raw(array))
        else:
            digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


_SCALARS = (str, int, float, bool, np.integer, np.floating)


def _to_attr(value: Any) -> Any:
    return value if isinstance(value, _SCALARS) else json.dumps(value, sort_keys=True, default=str)


def write_artifact(
    path: Path | str,
    *,
    data: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    compression: str | None = None,
) -> Path:
    """Write an artifact atomically: temporary file in the same folder, then rename
    (:func:`~attrcli.store.files.atomic_output`: a folder or device at ``path`` is refused, a
    symbolic link written through, a full disk a one-line ``TaskError``).

    ``attrs`` values that are not scalars or strings are stored as JSON strings and decoded by
    :func:`read_artifact`. ``provenance`` defaults to an empty-config record.
    """
    path = Path(path)
    prov = dict(provenance) if provenance is not None else make_provenance(config={}, inputs={})
    prov.setdefault("schema_version", SCHEMA_VERSION)
    with atomic_output(path, what="artifact") as tmp:
        # track_order keeps attribute order stable; with fixed content the bytes are repeatable.
        with h5py.File(tmp, "w", track_order=True, libver=("earliest", "v110")) as handle:
            for name, array in data.items():
                array = np.asarray(array)
                opts = {"compression": compression} if compression and array.ndim > 1 else {}
                handle.create_dataset(name, data=array, **opts)
            handle.attrs["schema_version"] = SCHEMA_VERSION
            handle.attrs["provenance"] = json.dumps(prov, sort_keys=True, default=str)
            handle.attrs["json_attrs"] = json.dumps(
                sorted(k for k, v in (attrs or {}).items() if not isinstance(v, _SCALARS))
            )
            for name, value in (attrs or {}).items():
                handle.attrs[name] = _to_attr(value)
            handle.flush()
            os.fsync(handle.id.get_vfd_handle())
    return path


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 artifact (corrupt or truncated): {exc}") from None


def _check_schema(path: Path, handle: h5py.File) -> None:
    version = handle.attrs.get("schema_version")
    if version is None:
        raise UserError(f"{path} is not an attrcli artifact (no schema_version)")
    if int(version) != SCHEMA_VERSION:
        raise UserError(
            f"{path} has schema version {int(version)}, this attrcli reads {SCHEMA_VERSION}: "
            "recompute it with --force"
        )


def _decode_attrs(handle: h5py.File) -> dict[str, Any]:
    json_names = set(json.loads(handle.attrs.get("json_attrs", "[]")))
    attrs: dict[str, Any] = {}
    for name, value in handle.attrs.items():
        if name in ("schema_version", "provenance", "json_attrs"):
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if name in json_names:
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        attrs[name] = value
    return attrs


def read_provenance(path: Path | str) -> dict[str, Any]:
    """The provenance record alone (cheap: no datasets are read)."""
    path = Path(path)
    handle = _open(path)
    try:
        with handle:
            _check_schema(path, handle)
            return json.loads(handle.attrs["provenance"])
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None


def read_artifact(path: Path | str, names: list[str] | None = None) -> Artifact:
    """Read datasets (all, or ``names``), attributes and provenance; checks the schema."""
    path = Path(path)
    handle = _open(path)
    try:
        with handle:
            _check_schema(path, handle)
            wanted = names if names is not None else list(handle.keys())
            missing = [n for n in wanted if n not in handle]
            if missing:
                raise UserError(f"{path} lacks dataset(s) {', '.join(missing)}")
            data = {name: handle[name][()] for name in wanted}
            return Artifact(
                path=path,
                data=data,
                attrs=_decode_attrs(handle),
                provenance=json.loads(handle.attrs["provenance"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{path} is corrupt: {exc}") from None
