"""Issue 7: checkpoint hashes are read once per file version — both hashes in one pass over the
file, cached by path + size + mtime in a small JSON file (cfgsim.host.HashCache)."""

from __future__ import annotations

import builtins
import hashlib
import json
import os

import pytest

from cfgsim.host import FileHashes, HashCache, file_hashes


def webui_legacy_hash(path) -> str:
    """modules/sd_models.py model_hash() of A1111 1.8, as written there."""
    with open(path, "rb") as file:
        m = hashlib.sha256()
        file.seek(0x100000)
        m.update(file.read(0x10000))
        return m.hexdigest()[0:8]


@pytest.mark.parametrize("size", [0, 1000, 0x100000, 0x100000 + 5, 0x100000 + 0x10000 + 77, 3 << 20])
@pytest.mark.parametrize("chunk", [4096, 1 << 20, 100_003])
def test_one_pass_gives_both_webui_hashes(tmp_path, size, chunk):
    path = tmp_path / "model.ckpt"
    path.write_bytes(os.urandom(size))
    got = file_hashes(path, chunk_size=chunk)
    assert got == FileHashes(webui_legacy_hash(path), hashlib.sha256(path.read_bytes()).hexdigest())
    if size < 0x100000:
        assert got.legacy == "e3b0c442"  # the empty string's hash: why the legacy hash collides


def count_opens(monkeypatch, path) -> list[int]:
    opened = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        if os.fspath(file) == os.fspath(path):
            opened.append(1)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    return opened


def test_cache_reads_the_file_once_per_version(tmp_path, monkeypatch):
    model = tmp_path / "model.ckpt"
    model.write_bytes(b"a" * 5000)
    cache_file = tmp_path / "cache" / "hashes.json"
    opened = count_opens(monkeypatch, model)
    first = HashCache(cache_file).hashes(model)
    again = HashCache(cache_file).hashes(model)  # a new run: from the JSON file
    assert first == again and len(opened) == 1
    data = json.loads(cache_file.read_text())
    assert data["files"][str(model.resolve())]["sha256"] == first.sha256
    model.write_bytes(b"b" * 5000)  # same size, new content and mtime
    os.utime(model, ns=(1, 1))
    changed = HashCache(cache_file).hashes(model)
    assert changed.sha256 == hashlib.sha256(b"b" * 5000).hexdigest() and len(opened) == 2


def test_damaged_or_unwritable_cache_only_costs_a_rehash(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"x" * 100)
    cache_file = tmp_path / "hashes.json"
    cache_file.write_text("{not json")
    expected = hashlib.sha256(b"x" * 100).hexdigest()
    assert HashCache(cache_file).hashes(model).sha256 == expected
    assert json.loads(cache_file.read_text())["version"] == 1
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert HashCache(blocked / "hashes.json").hashes(model).sha256 == expected
    assert HashCache(None).hashes(model).sha256 == expected


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("CFGSIM_CACHE_DIR", str(tmp_path))
    assert HashCache().path == str(tmp_path / "hashes.json")
