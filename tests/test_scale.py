"""cfgsim.scale: the chunked resumable SSIM matrix, the pre-filter, and ``cfgsim nearest``."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cfgsim.cli import main
from cfgsim.errors import InputError
from cfgsim.metrics.ssim import SsimMetric
from cfgsim.scale import (
    ChunkedMatrix,
    LoaderSource,
    VectorIndex,
    chunked_ssim_matrix,
    faiss_available,
    find_images,
    nearest,
    top_k,
)
from cfgsim.scale.synthetic import family_set

SIZE = 48


@pytest.fixture(scope="module")
def family():
    fs = family_set(60, SIZE, seed=3, family_size=(6, 12))
    return fs, [fs.image(i) for i in range(fs.n)]


@pytest.fixture(scope="module")
def exact(family):
    return SsimMetric().compare(family[1])


class Recording:
    """A loader that records which items it was asked for, and can fail after a number of calls."""

    def __init__(self, images, fail_after=None):
        self.images, self.calls, self.fail_after = images, [], fail_after

    def __call__(self, i):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt
        self.calls.append(i)
        return self.images[i]

    def source(self):
        n = len(self.images)
        return LoaderSource(n, self, identities=[f"img-{i}" for i in range(n)])


@pytest.mark.parametrize("block", [1, 4, 7, 60, 100])
def test_chunked_equals_the_metric_matrix(family, exact, block):
    images = family[1][:23]
    got = chunked_ssim_matrix(LoaderSource(len(images), images.__getitem__), block=block)
    np.testing.assert_array_equal(got, exact[:23, :23])


def test_rectangular_blocks_equal_the_rows_of_the_matrix(family, exact):
    images = family[1]
    queries = LoaderSource(5, lambda i: images[10 + i])
    got = chunked_ssim_matrix(queries, LoaderSource(len(images), images.__getitem__), block=(2, 16))
    np.testing.assert_array_equal(got, exact[10:15])


def test_memory_mapped_output(family, exact, tmp_path):
    images = family[1][:20]
    out = tmp_path / "m.npy"
    got = chunked_ssim_matrix(LoaderSource(20, images.__getitem__), block=6, out=out)
    assert isinstance(got, np.memmap)
    np.testing.assert_array_equal(np.load(out), exact[:20, :20])
    assert not (tmp_path / "m.npy.partial").exists()


def test_loader_called_only_for_block_members(family):
    rec = Recording(family[1][:20])
    chunked = ChunkedMatrix(rec.source(), block=5)
    seen = []

    def progress(done, total):
        seen.append(list(rec.calls))
        rec.calls.clear()

    chunked.compute(progress=progress)
    blocks = chunked.block_list()
    assert len(blocks) == 10 and chunked.blocks_computed == 10
    for (bi, bj), calls, previous in zip(blocks, seen[1:], [None, *blocks[:-1]], strict=True):
        rows, cols = set(range(5 * bi, 5 * bi + 5)), set(range(5 * bj, 5 * bj + 5))
        # Only this block's images, each once; a row block is loaded once for its whole row.
        expected = (set() if previous and previous[0] == bi else rows) | (cols if bj != bi else set())
        assert sorted(calls) == sorted(expected)
    assert chunked.loads == 20 + 5 * 6  # 4 row blocks + 6 off-diagonal column blocks


def test_resume_computes_only_the_missing_blocks(family, exact, tmp_path):
    images = family[1][:24]
    state = tmp_path / "state.db"
    rec = Recording(images, fail_after=30)  # interrupted while loading a later block
    first = ChunkedMatrix(rec.source(), block=6, state=state)
    with pytest.raises(KeyboardInterrupt):
        first.compute()
    finished = first.blocks_computed
    assert 0 < finished < len(first.block_list())
    with sqlite3.connect(state) as conn:
        assert conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0] == finished

    rec2 = Recording(images)
    second = ChunkedMatrix(rec2.source(), block=6, state=state)
    got = second.compute()
    assert second.blocks_resumed == finished
    assert second.blocks_computed == len(second.block_list()) - finished
    np.testing.assert_array_equal(got, exact[:24, :24])

    # A third run computes nothing and loads nothing.
    rec3 = Recording(images)
    third = ChunkedMatrix(rec3.source(), block=6, state=state)
    np.testing.assert_array_equal(third.compute(), exact[:24, :24])
    assert third.blocks_computed == 0 and rec3.calls == []


def test_state_key_separates_items_settings_and_blocks(family, tmp_path):
    images = family[1][:10]
    state = tmp_path / "state.db"
    ids = [f"a{i}" for i in range(10)]
    ChunkedMatrix(LoaderSource(10, images.__getitem__, ids), block=5, state=state).compute()
    for kwargs in (
        {"block": 4},
        {"metric": SsimMetric(win_size=5)},
        {"rows": LoaderSource(10, images.__getitem__, [*ids[:9], "changed"])},
    ):
        rows = kwargs.pop("rows", LoaderSource(10, images.__getitem__, ids))
        other = ChunkedMatrix(rows, **{"block": 5, **kwargs}, state=state)
        other.compute()
        assert other.blocks_resumed == 0


def test_max_blocks_slices_the_work(family, exact, tmp_path):
    images = family[1][:12]
    state = tmp_path / "s.db"
    source = LoaderSource(12, images.__getitem__, [str(i) for i in range(12)])
    part = ChunkedMatrix(source, block=4, state=state).compute(max_blocks=2)
    assert np.isnan(part).any() and not np.isnan(part[:4, :8]).any()
    rest = ChunkedMatrix(source, block=4, state=state)
    np.testing.assert_array_equal(rest.compute(), exact[:12, :12])
    assert rest.blocks_resumed == 2


def test_a_file_that_is_not_a_state_file_is_refused(family, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a database " * 100)
    with pytest.raises(InputError, match=r"notes\.txt: not a usable cfgsim state file"):
        ChunkedMatrix(LoaderSource(3, family[1].__getitem__), state=bad).compute()


def test_mismatched_sizes_name_the_item(family):
    images = [*family[1][:3], np.zeros((20, 20, 3), np.uint8)]
    names = ["a.png", "b.png", "c.png", "small.png"]
    with pytest.raises(InputError, match=r"small.png: is 20x20, the other images are 48x48"):
        chunked_ssim_matrix(LoaderSource(4, images.__getitem__, names=names), block=2)


def _recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])


@pytest.mark.parametrize("descriptor", ["thumb", "phash"])
def test_prefilter_recall_and_exact_scores(family, exact, descriptor):
    _, images = family
    n = len(images)
    truth = [[j for j, _ in row] for row in top_k(exact, 5, [{i} for i in range(n)])]
    got = nearest(
        LoaderSource(n, images.__getitem__), k=5, candidates=15, descriptor=descriptor, backend="numpy"
    )
    found = [[j for j, _ in row] for row in got.neighbours]
    assert _recall(found, truth) >= (0.95 if descriptor == "thumb" else 0.8)
    for q, row in enumerate(got.neighbours):
        assert q not in [j for j, _ in row]  # an item is not its own relative
        assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
        for j, s in row:
            assert s == pytest.approx(exact[q, j], abs=1e-12)
    # The pre-filter scored far fewer pairs than the n(n-1)/2 of the exact matrix.
    assert got.pairs < n * 15 < n * (n - 1) // 2 * 1.1


def test_prefilter_with_all_candidates_is_exact(family, exact):
    _, images = family
    n = len(images)
    got = nearest(LoaderSource(n, images.__getitem__), [0, 7, 33], k=8, candidates=n, max_images=16)
    assert [[j for j, _ in row] for row in got.neighbours] == [
        [j for j, _ in row] for row in top_k(exact[[0, 7, 33]], 8, [{0}, {7}, {33}])
    ]


def test_prefilter_loads_a_bounded_number_at_once(family):
    _, images = family
    live = {"now": 0, "peak": 0}

    class Counted(np.ndarray):
        def __del__(self):
            live["now"] -= 1

    def loader(i):
        live["now"] += 1
        live["peak"] = max(live["peak"], live["now"])
        return images[i].copy().view(Counted)

    nearest(LoaderSource(len(images), loader), k=3, candidates=6, max_images=12)
    # The batch (max_images) plus the cache of recent loads (max_images), and a few in flight.
    assert live["peak"] <= 2 * 12 + 2


def test_numpy_index_matches_faiss_candidates():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scores, ids = VectorIndex(vectors, "numpy").search(vectors[:20], 10)
    brute = vectors[:20] @ vectors.T
    expected = np.argsort(-brute, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (pip install 'cfgsim[scale]')")
def test_faiss_index_gives_the_numpy_candidates(family):
    _, images = family
    source = LoaderSource(len(images), images.__getitem__)
    a = nearest(source, k=5, candidates=12, backend="faiss")
    b = nearest(source, k=5, candidates=12, backend="numpy")
    assert a.backend == "faiss" and b.backend == "numpy"
    assert a.neighbours == b.neighbours


def test_faiss_backend_refused_when_missing(monkeypatch):
    import cfgsim.scale.prefilter as prefilter

    monkeypatch.setattr(prefilter, "faiss_available", lambda: False)
    with pytest.raises(InputError, match="faiss-cpu"):
        VectorIndex(np.eye(3, dtype=np.float32), "faiss")
    assert VectorIndex(np.eye(3, dtype=np.float32), "auto").backend == "numpy"


# -- the command line -----------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path, family):
    _, images = family
    root = tmp_path / "probes"
    for i, img in enumerate(images[:30]):
        path = root / ("sub" if i % 3 else "") / f"m{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path)
    (root / "notes.txt").write_text("not an image")
    return root


def run(*argv):
    return main(["-q", *argv])


def error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_find_images_is_recursive_and_sorted(folder):
    found = find_images(folder)
    assert len(found) == 30 and found == sorted(found)
    assert any(p.parent.name == "sub" for p in found)


def test_cli_prints_the_k_nearest(folder, exact, capsys):
    query = folder / "m00.png"
    assert run("nearest", str(query), str(folder), "-k", "4") == 0
    out = capsys.readouterr().out.splitlines()
    assert "4 nearest of 30 images" in out[0] and "pre-filter" in out[0]
    files = [line.split()[2] for line in out[1:]]
    values = [float(line.split()[1]) for line in out[1:]]
    assert str(query) not in files  # the query itself is left out
    truth = top_k(exact[:1, :30], 4, [{0}])[0]
    assert [Path(f).name for f in files] == [f"m{j:02d}.png" for j, _ in truth]
    np.testing.assert_allclose(values, [s for _, s in truth], atol=1e-6)


def test_cli_exact_route_with_state_resumes(folder, tmp_path, capsys):
    state = tmp_path / "state.db"
    args = ["nearest", str(folder / "m00.png"), str(folder / "sub" / "m04.png"), str(folder), "-k", "3"]
    assert run(*args, "--json") == 0
    approx = json.loads(capsys.readouterr().out)
    assert run(*args, "--exact", "--state", str(state), "--block", "8", "--json") == 0
    first = json.loads(capsys.readouterr().out)
    assert first["route"] == "exact" and first["images"] == 30
    assert [q["nearest"] for q in first["queries"]] == [q["nearest"] for q in approx["queries"]]
    assert run(*args, "--exact", "--state", str(state), "--block", "8") == 0
    assert "4 resumed from" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-folder", "nowhere: no such folder"),
        ("empty-folder", "empty: no images found"),
        ("folder-is-file", "m00.png: is a file, not a folder"),
        ("missing-query", "missing.png: no such image"),
        ("unreadable", "broken.png' is not an image Pillow can read"),
        ("sizes", "odd.png: is 20x20, but"),
        ("k", "-k 0: must be at least 1"),
        ("state-without-exact", "--state is for --exact"),
    ],
)
def test_cli_errors_name_the_thing_and_the_reason(case, expected, folder, tmp_path, capsys):
    query = str(folder / "m00.png")
    argv = {
        "missing-folder": [query, str(tmp_path / "nowhere")],
        "empty-folder": [query, str(tmp_path / "empty")],
        "folder-is-file": [query, query],
        "missing-query": [str(tmp_path / "missing.png"), str(folder)],
        "unreadable": [query, str(folder)],
        "sizes": [query, str(folder)],
        "k": [query, str(folder), "-k", "0"],
        "state-without-exact": [query, str(folder), "--state", str(tmp_path / "s.db")],
    }[case]
    (tmp_path / "empty").mkdir()
    if case == "unreadable":
        (folder / "sub" / "broken.png").write_bytes(b"\x89PNG not really")
    if case == "sizes":
        Image.new("RGB", (20, 20)).save(folder / "sub" / "odd.png")
    assert run("nearest", *argv) == 2
    line = error_line(capsys)
    assert line.startswith("cfgsim: error: ") and expected in line
