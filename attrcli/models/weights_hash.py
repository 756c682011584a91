"""The content hash of a model's weights (its ``weights_hash``, an input of every artifact),
computed once per weights file.

What is hashed is the loaded module's state dict (:func:`attrcli.models.registry.state_dict_hash`:
names, dtypes, shapes and bytes), whatever the weights came from: a ``--weights FILE``, the
default weights (torchvision's cached file, the trained digits models), the fixed-seed random
initialisation, or a user's factory. For a weights file that state is a function of the file's
content and the model's structure (strict loading replaces every entry), so its hash is kept in
the weights-hash cache (:mod:`attrcli.store.hashcache`) under the file's identity, the model's
name and the names, dtypes and shapes of its state; it is reused while the file is unchanged and
computed as ever otherwise. The recorded hash is the same either way.

A user's factory may return an adapter whose ``weights_hash`` is already set: it vouches for
it, as an adapter passed to :func:`attrcli.stages.attribute.attribute` does, and no file is
loaded on top of it, so it is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from attrcli.models.adapter import ModelAdapter
from attrcli.store import content_hash
from attrcli.store.hashcache import Snapshot, cached_hash, lookup, snapshot

HASHED = "state_dict_hash-1"  # what the cache keeps: bump when state_dict_hash's definition changes
RANDOM = "random"


def weights_snapshot(weights: str | Path | None) -> Snapshot | None:
    """The identity of the weights file ``weights`` before it is read; None for default or
    random weights (their files, if any, are the model's business)."""
    if weights is None or (isinstance(weights, str) and weights == RANDOM):
        return None
    return snapshot(weights)


def structure(state: Mapping[str, torch.Tensor]) -> str:
    """A hash of a state dict's names, dtypes and shapes (not its values)."""
    return content_hash([[key, str(state[key].dtype), list(state[key].shape)] for key in sorted(state)])


def module_weights_hash(
    adapter: ModelAdapter, *, model: str, source: Snapshot | None, cache_dir: Path | str,
    hash_state: Callable[[Mapping[str, torch.Tensor]], str], vouched: bool = False,
) -> str:
    """The ``weights_hash`` of ``adapter``'s loaded module.

    ``source``: the snapshot of the weights file loaded into it (:func:`weights_snapshot`, taken
    before loading), or None. ``vouched``: the adapter came from a user's factory with no file
    loaded on top, so a ``weights_hash`` it already carries is kept.
    """
    if vouched and source is None and adapter.weights_hash:
        return adapter.weights_hash
    state = adapter.module.state_dict()
    if source is None:
        return hash_state(state)
    kind = f"{HASHED}/{model}/{structure(state)}"
    return cached_hash(source, kind=kind, cache_dir=cache_dir, compute=lambda: hash_state(state))


def with_hash(adapter: ModelAdapter, value: str) -> ModelAdapter:
    """``adapter`` with ``weights_hash`` set; a factory's adapter is copied (its module shared),
    so the factory's own object never appears to vouch for a hash it did not set."""
    if adapter.weights_hash == value:
        return adapter
    return dataclasses.replace(adapter, weights_hash=value)


def known_weights_hash(
    preview: ModelAdapter, *, model: str, weights: str | Path | None, cache_dir: Path | str
) -> str | None:
    """The ``weights_hash`` a weights file would give model ``model`` once loaded, from the cache
    alone (no loading), or None when it is not cached (or ``weights`` is not a file).
    ``preview``: the model's adapter on the meta device; its state has the loaded model's names,
    dtypes and shapes. An entry exists only for a file that was loaded into ``model`` before."""
    before = weights_snapshot(weights)
    if before is None or before.identity is None:
        return None
    kind = f"{HASHED}/{model}/{structure(preview.module.state_dict())}"
    return lookup(cache_dir, kind, before.identity)
