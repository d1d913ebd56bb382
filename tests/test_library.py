"""The probe library (issue 10): what a user notices — re-runs that generate nothing, an added checkpoint
that generates only its own cells, damaged entries that are made again, a folder or index that cannot be
written, two processes at once, and "compare with everything probed before"."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import multiprocessing
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfgsim.compare import build_metrics
from cfgsim.host import Checkpoint, Generated
from cfgsim.library import LibraryError, ProbeLibrary, open_library, settings_key
from cfgsim.library.store import INDEX_NAME, SCHEMA_VERSION
from cfgsim.probe import run_probe
from cfgsim.result import OK, SKIPPED
from cfgsim.spec import ProbeSpec

SPEC = ProbeSpec(seeds="1, 2")


def picture(name: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(int(hashlib.sha256(f"{name}/{seed}".encode()).hexdigest()[:8], 16))
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


class CountingHost:
    """A host that counts what it is asked to make and which checkpoints it had to load."""

    name = "counting"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.loaded: list[str] = []
        self.env = env or {"RNG": "CPU", "VAE": "auto"}

    def checkpoints(self):
        return []

    def current_checkpoint(self):
        return None

    def generate(self, checkpoint, spec, seed):
        if not self.loaded or self.loaded[-1] != checkpoint.name:
            self.loaded.append(checkpoint.name)
        self.calls.append((checkpoint.name, seed))
        return Generated(picture(checkpoint.name, seed), infotext=f"Seed: {seed}, Model: {checkpoint.label}")

    def progress(self, done, total, job):
        pass

    def interrupted(self):
        return False

    def environment(self):
        return dict(self.env)


def ckpt(name: str, **kw) -> Checkpoint:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return Checkpoint(name, architecture="sd1", sha256=kw.pop("sha256", digest), **kw)


A, B, C, D = (ckpt(n) for n in "abcd")


@pytest.fixture
def library(tmp_path):
    return ProbeLibrary(tmp_path / "lib")


# -- the settings key ------------------------------------------------------------------------------


def test_the_key_changes_with_every_setting_that_changes_pixels():
    env = {"VAE": "auto", "RNG": "CPU", "Precision": "fp32", "Version": "v1.10.1", "Cond-only": "hook"}
    base = settings_key(SPEC, "webui", env)
    assert settings_key(SPEC.replace(seeds=(7, 8, 9)), "webui", dict(reversed(env.items()))) == base
    changed = [
        SPEC.replace(prompt="a cat"),
        SPEC.replace(negative_prompt=""),
        SPEC.replace(sampler="DDIM"),
        SPEC.replace(scheduler="Karras"),
        SPEC.replace(steps=255),
        SPEC.replace(steps_override=16),
        SPEC.replace(cfg_scale=1.5),
        SPEC.replace(width=256),
        SPEC.replace(height=256),
        SPEC.replace(clip_skip=1),
        SPEC.replace(extra=(("ENSD", "31337"),)),
    ]
    keys = {settings_key(spec, "webui", env) for spec in changed}
    keys |= {settings_key(SPEC, "standalone", env)}
    for name, value in env.items():
        keys.add(settings_key(SPEC, "webui", {**env, name: value + "-other"}))
    keys.add(settings_key(SPEC, "webui", {k: v for k, v in env.items() if k != "Cond-only"}))
    assert base not in keys and len(keys) == len(changed) + 1 + len(env) + 1
    # A quick preview at the probe's own step count is the probe itself.
    assert settings_key(SPEC.replace(steps_override=256), "webui", env) == base


# -- the run loop with a library -------------------------------------------------------------------


def test_a_rerun_generates_nothing_and_loads_no_checkpoint(library):
    first = CountingHost()
    result = run_probe(first, [A, B, C], SPEC, library=library, metrics=build_metrics(["ssim"]))
    assert len(first.calls) == 6 and library.stored == 6
    again = CountingHost()
    cached = run_probe(again, [A, B, C], SPEC, library=library, metrics=build_metrics(["ssim"]))
    assert again.calls == [] and again.loaded == []
    assert all(c.status == OK and c.origin == "library" for c in cached.cells)
    for old, new in zip(result.cells, cached.cells, strict=True):  # the very same pixels and infotext
        assert np.array_equal(np.asarray(old.image), np.asarray(new.image))
        assert new.infotext == old.infotext
    assert np.array_equal(cached.scores["ssim"].per_row[1], result.scores["ssim"].per_row[1])


def test_adding_a_checkpoint_generates_only_its_cells(library):
    run_probe(CountingHost(), [A, B, C], SPEC, library=library)
    host = CountingHost()
    run_probe(host, [A, B, C, D], SPEC, library=library)
    assert host.calls == [("d", 1), ("d", 2)]
    more = CountingHost()
    run_probe(more, [A, B], ProbeSpec(seeds="1, 2, 3"), library=library)  # one more seed
    assert more.calls == [("a", 3), ("b", 3)]


def test_other_settings_or_another_host_are_not_taken_from_the_library(library):
    run_probe(CountingHost(), [A], SPEC, library=library)
    for host, spec in [
        (CountingHost({"RNG": "GPU", "VAE": "auto"}), SPEC),
        (CountingHost(), SPEC.replace(steps_override=8)),
    ]:
        run_probe(host, [A], spec, library=library)
        assert len(host.calls) == 2


def _cell_file(library: ProbeLibrary, checkpoint: Checkpoint, seed: int) -> Path:
    with library.connect() as con:
        (png,) = con.execute(
            "SELECT png FROM cells WHERE sha256=? AND seed=?", (checkpoint.sha256, seed)
        ).fetchone()
    return library.png_path(png)


@pytest.mark.parametrize("damage", ["truncated", "wrong hash", "missing"])
def test_a_damaged_entry_is_regenerated_with_a_note(library, damage, caplog):
    run_probe(CountingHost(), [A, B], SPEC, library=library)
    path = _cell_file(library, B, 2)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "wrong hash":
        picture("zzz", 5).save(path, format="PNG")  # a valid PNG, not the one the index names
    else:
        path.unlink()
    host = CountingHost()
    with caplog.at_level(logging.WARNING, logger="cfgsim.library"):
        result = run_probe(host, [A, B], SPEC, library=library)
    assert host.calls == [("b", 2)]
    assert all(c.status == OK for c in result.cells)
    expected = np.asarray(picture("b", 2))
    assert np.array_equal(np.asarray(result.cells[3].image), expected)
    notes = [n for n in library.notes if n.startswith("regenerated: b seed 2")]
    assert len(notes) == 1 and str(path) in notes[0]
    assert "regenerated: b seed 2" in caplog.text
    # Stored again: the next run takes it from the library.
    third = CountingHost()
    run_probe(third, [A, B], SPEC, library=library)
    assert third.calls == []


def test_a_checkpoint_file_changed_since_it_was_cached_is_probed_afresh(tmp_path, library):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"weights v1" * 1000)
    unhashed = Checkpoint("model", architecture="sd1", file=str(file))  # the host knows no sha256
    first = CountingHost()
    run_probe(first, [unhashed], SPEC, library=library)
    old = library.identity(unhashed, None)
    assert old == hashlib.sha256(file.read_bytes()).hexdigest() and len(first.calls) == 2
    same = CountingHost()
    run_probe(same, [unhashed], SPEC, library=library)
    assert same.calls == []
    file.write_bytes(b"weights v2" * 1000)
    changed = CountingHost()
    run_probe(changed, [unhashed], SPEC, library=library)
    assert len(changed.calls) == 2 and library.identity(unhashed, None) != old


def test_a_checkpoint_without_a_readable_file_or_hash_runs_uncached(library):
    nothing = Checkpoint("ghost", architecture="sd1")
    assert library.identity(nothing, None) is None
    for _ in range(2):
        host = CountingHost()
        run_probe(host, [nothing], SPEC, library=library)
        assert len(host.calls) == 2
    assert library.stored == 0


# -- folders and indexes that cannot be used -------------------------------------------------------


def test_an_unwritable_folder_runs_uncached_with_a_warning(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING):
        assert open_library(blocker / "lib") is None
    assert "runs uncached" in caplog.text and str(blocker / "lib") in caplog.text
    host = CountingHost()
    result = run_probe(host, [A], SPEC, library=None)
    assert len(host.calls) == 2 and all(c.ok for c in result.cells)


@pytest.mark.skipif(hasattr(__import__("os"), "geteuid") and __import__("os").geteuid() == 0, reason="root")
def test_a_read_only_folder_runs_uncached(tmp_path, caplog):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING):
            assert open_library(folder) is None
        assert "cannot write" in caplog.text
    finally:
        folder.chmod(0o700)


def test_a_full_disk_mid_run_completes_uncached_and_says_so(library, monkeypatch, caplog):
    from cfgsim.library import store

    written = []

    def full(path, data):
        if written:
            raise OSError(28, "No space left on device")
        written.append(path)
        store._atomic_write.__wrapped__(path, data)

    full.__wrapped__ = store._atomic_write
    monkeypatch.setattr(store, "_atomic_write", full)
    host = CountingHost()
    with caplog.at_level(logging.WARNING, logger="cfgsim.library"):
        result = run_probe(host, [A, B], SPEC, library=library)
    assert len(host.calls) == 4 and all(c.ok for c in result.cells)
    assert library.stored == 1 and library.write_error == "No space left on device"
    assert caplog.text.count("cannot store images") == 1  # warned once, then no more attempts
    assert "not cached" in caplog.text


def test_a_locked_index_is_waited_for_briefly_then_the_run_goes_on_uncached(tmp_path, caplog):
    library = ProbeLibrary(tmp_path / "lib", timeout=0.3)
    run_probe(CountingHost(), [A], SPEC, library=library)  # something to read while it is locked
    other = sqlite3.connect(str(library.index_path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        host = CountingHost()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="cfgsim.library"):
            result = run_probe(host, [A, B], SPEC, library=library)
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert host.calls == [("b", 1), ("b", 2)]  # a's cells were still read from the library
    assert all(c.ok for c in result.cells)
    assert "locked" in library.write_error and waited >= 0.3
    assert "cannot store images" in caplog.text


def test_a_damaged_index_is_rebuilt_from_the_images(tmp_path):
    library = ProbeLibrary(tmp_path / "lib")
    run_probe(CountingHost(), [A, B], SPEC, library=library)
    for suffix in ("-wal", "-shm"):
        Path(f"{library.index_path}{suffix}").unlink(missing_ok=True)
    library.index_path.write_bytes(b"this is not an SQLite database" * 100)
    reopened = ProbeLibrary(tmp_path / "lib")
    assert any("rebuilt from 4 image(s)" in n for n in reopened.notes)
    assert list((tmp_path / "lib").glob(f"{INDEX_NAME}.damaged-*"))
    host = CountingHost()
    run_probe(host, [A, B], SPEC, library=reopened)
    assert host.calls == []
    assert [e.label for e in reopened.checkpoints()] == ["a", "b"]


def test_an_index_of_a_newer_cfgsim_is_refused_naming_the_file(tmp_path, caplog):
    library = ProbeLibrary(tmp_path / "lib")
    with sqlite3.connect(str(library.index_path)) as con:
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(LibraryError, match=f"{INDEX_NAME}: written by a newer cfgsim"):
        ProbeLibrary(tmp_path / "lib")
    with caplog.at_level(logging.WARNING):
        assert open_library(tmp_path / "lib") is None
    assert str(library.index_path) in caplog.text


# -- concurrency -----------------------------------------------------------------------------------


def _worker(root: str, worker: int, rounds: int) -> int:
    library = ProbeLibrary(root, timeout=30)
    key = settings_key(SPEC, "counting", {"RNG": "CPU"})
    misses = 0
    for i in range(rounds):
        checkpoint = ckpt(f"m{i % 5}")
        seed = i % 3
        if library.lookup(checkpoint.sha256, key, seed) is None:
            misses += 1
            generated = Generated(picture(checkpoint.name, seed), infotext=f"Seed: {seed}")
            assert library.store(checkpoint.sha256, key, seed, generated, checkpoint=checkpoint)
    return misses


def _check_consistent(root: Path, cells: int) -> None:
    library = ProbeLibrary(root)
    with library.connect() as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = con.execute("SELECT sha256, key, seed, png FROM cells").fetchall()
    assert len(rows) == cells
    for sha256, key, seed, png in rows:
        data = library.png_path(png).read_bytes()
        assert hashlib.sha256(data).hexdigest() == png
        assert library.lookup(sha256, key, seed) is not None
    assert library.notes == []
    assert not list(root.glob("cells/*/.cell-*"))  # no temporary file left behind


def test_two_processes_storing_and_reading_at_once_do_not_corrupt_it(tmp_path):
    root = tmp_path / "lib"
    ProbeLibrary(root)
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        misses = pool.starmap(_worker, [(str(root), 0, 30), (str(root), 1, 30)])
    assert 15 <= sum(misses) <= 30  # 15 distinct cells; a cell both made at once is stored twice
    _check_consistent(root, 15)


def test_two_threads_sharing_one_library(tmp_path):
    root = tmp_path / "lib"
    library = ProbeLibrary(root, timeout=30)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            host = CountingHost()
            run_probe(host, [A, B, C], ProbeSpec(seeds="1-4"), library=library)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    _check_consistent(root, 12)


# -- compare with everything probed before ---------------------------------------------------------


def test_with_library_adds_every_checkpoint_probed_before_labelled(library):
    run_probe(CountingHost(), [A, B, C], SPEC, library=library)
    # Two other files, both labelled "x", probed under the same settings (one of them for seed 1 only).
    x1 = dataclasses.replace(ckpt("x1"), label="x")
    x2 = dataclasses.replace(ckpt("x2"), label="x")
    run_probe(CountingHost(), [x1], SPEC, library=library)
    run_probe(CountingHost(), [x2], SPEC.replace(seeds=(1,)), library=library)
    host = CountingHost()
    result = run_probe(
        host, [D, A], SPEC, library=library, with_library=True, metrics=build_metrics(["ssim"])
    )
    labels = [item.label for item in result.items]
    assert labels == [
        "d",
        "a",
        "b (library)",
        "c (library)",
        "x (library)",
        f"x (library) [{x2.sha256[:10]}]",
    ]
    assert host.calls == [("d", 1), ("d", 2)]  # nothing is generated for library columns
    missing = [c for c in result.cells if c.item == 5 and c.status == SKIPPED]
    assert [c.reason for c in missing] == ["not in the library for seed 2"]
    assert all(c.origin == "library" for c in result.cells if c.item >= 1 and c.ok)
    assert result.scores["ssim"].per_row[0].shape == (6, 6)
    plain = run_probe(CountingHost(), [D, A], SPEC, library=library)
    assert [item.label for item in plain.items] == ["d", "a"]


def test_library_checkpoints_per_settings_key(library):
    run_probe(CountingHost(), [A, B], SPEC, library=library)
    key = settings_key(SPEC, "counting", {"RNG": "CPU", "VAE": "auto"})
    entries = library.checkpoints(key)
    assert [(e.label, e.seeds, e.architecture) for e in entries] == [
        ("a", (1, 2), "sd1"),
        ("b", (1, 2), "sd1"),
    ]
    assert library.checkpoints(settings_key(SPEC, "other host", {})) == []


def test_the_library_imports_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, cfgsim.library, cfgsim.library.manage, cfgsim.library.commands, cfgsim.library.webui, "
        "cfgsim.library.index; print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
