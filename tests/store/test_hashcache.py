"""The weights-hash cache: a hash is reused only while the file's identity (path, device, inode,
size, mtime_ns, ctime_ns) is unchanged, and a model's recorded ``weights_hash`` is the same with
or without it."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch

from attrcli.models import create_model, state_dict_hash
from attrcli.models import registry
from attrcli.store import hashcache
from attrcli.store.hashcache import cached_hash, file_identity, snapshot
from tests.conftest import make_conv_model

TICK = 0.05  # longer than the coarse clock the kernel stamps ctimes with


class Counter:
    """``compute`` callback: the file's bytes as the hash, counting the calls."""

    def __init__(self, path: Path) -> None:
        self.path, self.calls = path, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.path.read_bytes().hex()


def settled(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    time.sleep(TICK)  # the write's ctime now lies before the next snapshot
    return path


def hashed(path: Path, cache: Path, counter: Counter) -> str:
    return cached_hash(snapshot(path), kind="bytes", cache_dir=cache, compute=counter)


@pytest.fixture
def no_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries are trusted as soon as the file's ctime precedes the hashing (the tests wait a
    tick instead of the two seconds the real margin asks)."""
    monkeypatch.setattr(hashcache, "SETTLED_NS", 0)


def test_unchanged_file_is_hashed_once(tmp_path: Path, no_margin: None) -> None:
    path = settled(tmp_path / "w.bin", b"abcd")
    counter = Counter(path)
    assert hashed(path, tmp_path / "cache", counter) == b"abcd".hex()
    assert hashed(path, tmp_path / "cache", counter) == b"abcd".hex()
    assert counter.calls == 1
    entry = hashcache.entry_path(tmp_path / "cache", "bytes", path)
    assert entry.parent == tmp_path / "cache" / "hashes"
    # another kind of hash of the same file is its own entry
    assert cached_hash(snapshot(path), kind="other", cache_dir=tmp_path / "cache", compute=counter) == b"abcd".hex()
    assert counter.calls == 2


def test_touch_without_change_rehashes_to_the_same_hash(tmp_path: Path, no_margin: None) -> None:
    path = settled(tmp_path / "w.bin", b"abcd")
    counter = Counter(path)
    first = hashed(path, tmp_path / "cache", counter)
    ctime = os.stat(path).st_ctime_ns
    os.utime(path)  # touch: mtime and ctime move, the content does not
    time.sleep(TICK)
    assert os.stat(path).st_ctime_ns != ctime
    assert hashed(path, tmp_path / "cache", counter) == first
    assert counter.calls == 2
    assert hashed(path, tmp_path / "cache", counter) == first  # the new identity is cached in turn
    assert counter.calls == 2


def test_same_size_change_with_mtime_set_back_is_detected(tmp_path: Path, no_margin: None) -> None:
    path = settled(tmp_path / "w.bin", b"abcd")
    counter = Counter(path)
    hashed(path, tmp_path / "cache", counter)
    before = os.stat(path)
    with open(path, "r+b") as handle:  # in place: same inode, same size
        handle.write(b"x")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime restored
    time.sleep(TICK)
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert hashed(path, tmp_path / "cache", counter) == b"xbcd".hex()
    assert counter.calls == 2


def test_replaced_file_is_detected(tmp_path: Path, no_margin: None) -> None:
    path = settled(tmp_path / "w.bin", b"abcd")
    counter = Counter(path)
    hashed(path, tmp_path / "cache", counter)
    before = os.stat(path)
    other = tmp_path / "new.bin"
    other.write_bytes(b"abce")
    os.utime(other, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(other, path)  # a new inode under the old name, same size and mtime
    time.sleep(TICK)
    assert hashed(path, tmp_path / "cache", counter) == b"abce".hex()
    assert counter.calls == 2


def test_a_file_written_just_before_is_not_trusted_yet(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abcd")  # its ctime is within SETTLED_NS of the hashing: a racing write could hide
    counter = Counter(path)
    hashed(path, tmp_path / "cache", counter)
    hashed(path, tmp_path / "cache", counter)
    assert counter.calls == 2


def test_file_changed_while_hashing_is_not_cached(tmp_path: Path, no_margin: None) -> None:
    path = settled(tmp_path / "w.bin", b"abcd")
    before = snapshot(path)
    path.write_bytes(b"abcdef")  # written after the snapshot, before the hash is kept
    calls = []
    cached_hash(before, kind="bytes", cache_dir=tmp_path / "cache", compute=lambda: calls.append(1) or "stale")
    assert not hashcache.entry_path(tmp_path / "cache", "bytes", path).exists()
    assert file_identity(path)["size"] == 6


def test_weights_file_hash_is_cached_and_equals_the_uncached_hash(
    tmp_path: Path, no_margin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--weights FILE on a registered model: the recorded hash is the loaded module's state-dict
    hash as ever, computed once while the file is unchanged and again after a change."""
    generator = torch.Generator().manual_seed(1)
    state = {key: value + torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
             for key, value in registry.build_module(registry.MODELS.get("digits-vgg11")).state_dict().items()}
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    time.sleep(TICK)
    calls = []
    real = registry.state_dict_hash
    monkeypatch.setattr(registry, "state_dict_hash", lambda s: calls.append(1) or real(s))
    first = create_model("digits-vgg11", weights=weights, cache_dir=tmp_path / "cache")
    expected = real(first.module.state_dict())
    assert first.weights_hash == expected == real(state)
    again = create_model("digits-vgg11", weights=weights, cache_dir=tmp_path / "cache")
    assert again.weights_hash == expected and len(calls) == 1
    # random weights are hashed as ever
    assert create_model("digits-vgg11", weights="random", cache_dir=tmp_path / "cache").weights_hash != expected
    assert len(calls) == 2
    # the same size, the mtime set back: the new content's hash
    before = os.stat(weights)
    changed = {k: v.clone() for k, v in state.items()}
    changed["features.0.bias"][0] += 1.0
    torch.save(changed, weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(TICK)
    assert os.stat(weights).st_size == before.st_size
    third = create_model("digits-vgg11", weights=weights, cache_dir=tmp_path / "cache")
    assert third.weights_hash == real(changed) != expected
    assert len(calls) == 3


def test_a_factory_vouches_only_for_its_own_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A user factory's adapter keeps a weights_hash it carries (no file loaded on top); one
    without gets the state-dict hash, on a copy: the factory's object is left as it was."""
    plain = make_conv_model()
    vouched = dataclasses.replace(make_conv_model(), weights_hash="mine")
    monkeypatch.setitem(registry.MODELS._items, "test-plain", lambda: plain)
    monkeypatch.setitem(registry.MODELS._items, "test-vouched", lambda: vouched)
    got = create_model("test-plain", cache_dir=tmp_path)
    assert got.weights_hash == state_dict_hash(plain.module.state_dict()) and plain.weights_hash == ""
    assert got.module is plain.module
    assert create_model("test-vouched", cache_dir=tmp_path).weights_hash == "mine"
    weights = tmp_path / "w.pt"
    torch.save(vouched.module.state_dict(), weights)
    loaded = create_model("test-vouched", weights=weights, cache_dir=tmp_path)
    assert loaded.weights_hash == state_dict_hash(vouched.module.state_dict())


def test_up_to_date_keys_with_a_known_weights_file_load_no_weights(
    tmp_path: Path, no_margin: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second ``attribute`` of the same keys with the same --weights FILE finds the weights'
    hash in the cache and every key fresh: no model is built or loaded. After the file changes
    (same size, mtime set back) the keys are computed again."""
    from attrcli.stages import attribute as stage
    from tests.engine.helpers import write_grids

    grids = write_grids(tmp_path / "g.h5", count=1, cell=32)
    state = registry.build_module(registry.MODELS.get("digits-vgg11")).state_dict()
    weights = tmp_path / "w.pt"
    torch.save(state, weights)
    time.sleep(TICK)
    request = dict(grids=grids, model="digits-vgg11", weights=weights, layers="final", methods="grad",
                   cache_root=tmp_path / "cache")
    assert [r.status for r in stage.attribute(**request)] == ["computed"]
    built = []
    real = stage.create_model
    monkeypatch.setattr(stage, "create_model", lambda *a, **k: built.append(1) or real(*a, **k))
    assert [r.status for r in stage.attribute(**request)] == ["up to date"]
    assert built == []
    before = os.stat(weights)
    changed = {k: v.clone() for k, v in state.items()}
    changed["classifier.6.bias"][0] += 1.0
    torch.save(changed, weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(TICK)
    assert [r.status for r in stage.attribute(**request)] == ["computed"]
    assert built == [1]
