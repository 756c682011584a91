"""The artifact store: keys, HDF5 files with provenance, atomic writes and locks."""

from attrcli.store.artifacts import (
    SCHEMA_VERSION,
    Artifact,
    content_hash,
    file_hash,
    read_artifact,
    read_provenance,
    write_artifact,
)
from attrcli.store.keys import ArtifactKey
from attrcli.store.lock import artifact_lock

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactKey",
    "artifact_lock",
    "content_hash",
    "file_hash",
    "read_artifact",
    "read_provenance",
    "write_artifact",
]
