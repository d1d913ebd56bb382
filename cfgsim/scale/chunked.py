"""The exact SSIM matrix of many images, in blocks, with bounded memory, resumable.

:class:`ChunkedMatrix` computes the same numbers as :meth:`cfgsim.metrics.ssim.SsimMetric.matrix`
— it calls the metric's own preparation and pair sums on each block, so the definition is the one
in :mod:`cfgsim.metrics.ssim` — but never holds more than two blocks of images:

* The matrix is cut into blocks of ``block`` rows × ``block`` columns. For the symmetric N×N matrix
  only the blocks on and above the diagonal are computed (each block below it is the transpose of
  one above); a rectangular matrix (queries × a collection) computes every block.
* Images are loaded per block from an item source (:mod:`cfgsim.scale.sources`): a row block once
  for all the blocks of its row, a column block for each block it is in. Memory is about
  2 · block images plus the metric's banded statistics (:data:`cfgsim.metrics.ssim.MEMORY_BUDGET`
  at most), whatever N is. The matrix itself is N² · 8 bytes: pass ``out`` to write it to a
  memory-mapped ``.npy`` file instead of keeping it in memory.
* With a state file (:mod:`cfgsim.scale.state`) each finished block is committed to SQLite in its
  own transaction; an interrupted run started again with the same items and settings loads the
  finished blocks and computes only the missing ones.

A value can differ from ``SsimMetric.matrix`` on all images by about 1e-8 when the images are large
enough for the metric to cut them into bands of rows (the band height depends on how many images
are compared at once, and it changes the order of the float32 sums); images small enough to be one
band give identical numbers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cfgsim.errors import InputError
from cfgsim.metrics.ssim import SsimMetric
from cfgsim.scale.sources import ItemSource, load_checked
from cfgsim.scale.state import BlockStore, run_key

__all__ = ["DEFAULT_BLOCK", "ChunkedMatrix", "chunked_ssim_matrix", "top_k"]

#: Images per block side: 2 × 64 probe images of 512² are about 100 MB, and a block of 64 × 64 pairs
#: keeps the per-block overhead (loading, one SQLite commit) to a few per cent.
DEFAULT_BLOCK = 64

Progress = Callable[[int, int], Any]


class ChunkedMatrix:
    """The SSIM matrix of ``rows`` against ``cols`` (None: ``rows`` against themselves) in blocks.

    ``block`` is the block side (an int, or (rows, cols) for a rectangular matrix); ``metric`` an
    :class:`~cfgsim.metrics.ssim.SsimMetric` (default settings when None); ``state`` a path of the
    SQLite resume file (see :mod:`cfgsim.scale.state`). After :meth:`compute` the counters say what
    was done: ``blocks_total``, ``blocks_resumed`` (read from the state), ``blocks_computed`` and
    ``loads`` (images loaded, with repeats).
    """

    def __init__(
        self,
        rows: ItemSource,
        cols: ItemSource | None = None,
        *,
        block: int | tuple[int, int] = DEFAULT_BLOCK,
        metric: SsimMetric | None = None,
        state: str | os.PathLike[str] | None = None,
    ) -> None:
        block_rows, block_cols = (block, block) if isinstance(block, int) else tuple(block)
        if block_rows < 1 or block_cols < 1:
            raise InputError(f"the block size must be at least 1, not {block!r}")
        if cols is None and block_rows != block_cols:
            raise InputError("a symmetric matrix needs square blocks (one block size)")
        if len(rows) == 0 or (cols is not None and len(cols) == 0):
            raise InputError("no images to compare")
        self.rows, self.cols = rows, cols
        self.block = (int(block_rows), int(block_cols))
        self.metric = metric or SsimMetric()
        if not isinstance(self.metric, SsimMetric):
            raise InputError(f"the chunked matrix computes SSIM, not {type(self.metric).__name__}")
        self.state = Path(state) if state is not None else None
        self.shape: tuple[int, int] | None = None  # the images' (H, W, 3), from the first one loaded
        self.blocks_total = self.blocks_resumed = self.blocks_computed = self.loads = 0

    @property
    def symmetric(self) -> bool:
        return self.cols is None

    def settings(self) -> dict[str, Any]:
        return {"metric": self.metric.name, **self.metric.settings()}

    def key(self) -> str:
        rows = [self.rows.identity(i) for i in range(len(self.rows))]
        cols = None if self.cols is None else [self.cols.identity(j) for j in range(len(self.cols))]
        return run_key(self.settings(), rows, cols, self.block[0] if self.symmetric else self.block)

    def block_list(self) -> list[tuple[int, int]]:
        """The (bi, bj) blocks to compute, row block by row block."""
        n_rows = len(self.rows)
        n_cols = n_rows if self.cols is None else len(self.cols)
        nbi, nbj = math.ceil(n_rows / self.block[0]), math.ceil(n_cols / self.block[1])
        return [(bi, bj) for bi in range(nbi) for bj in range(bi if self.symmetric else 0, nbj)]

    def _range(self, b: int, axis: int, n: int) -> range:
        size = self.block[axis]
        return range(b * size, min((b + 1) * size, n))

    def _load(self, source: ItemSource, indices: range) -> list[np.ndarray]:
        images = []
        for i in indices:
            arr = load_checked(source, i, self.shape)
            if self.shape is None:
                self.shape = arr.shape
            images.append(arr)
            self.loads += 1
        return images

    def block_values(self, row_images: list[np.ndarray], col_images: list[np.ndarray] | None) -> np.ndarray:
        """SSIM of ``row_images`` × ``col_images`` (None: a diagonal block, the rows against
        themselves), with the metric's own preparation and pair sums."""
        metric = self.metric
        if col_images is None:
            return metric.matrix(metric.prepare(row_images))
        prepared = metric.prepare(row_images + col_images)
        r, c = len(row_images), len(col_images)
        cells = [(i, r + j) for i in range(r) for j in range(c)]
        sums = metric._sums(prepared, cells)
        return (np.asarray(sums, dtype=np.float64) / prepared[0].interior_size).reshape(r, c)

    def compute(
        self,
        out: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
        max_blocks: int | None = None,
    ) -> np.ndarray:
        """The matrix: an array in memory, or with ``out`` a memory-mapped ``.npy`` written there
        (under a temporary name until it is complete). ``progress(done, total)`` is called with the
        blocks done (resumed ones included) after each block and once at the start.

        ``max_blocks`` stops after computing that many new blocks (a slice of the work, e.g. to
        measure throughput or to spread a run over sessions with a state file); the entries of
        blocks not computed are NaN in memory (undefined in ``out``), and ``out`` keeps its
        temporary name ``<out>.partial``."""
        n_rows = len(self.rows)
        n_cols = n_rows if self.cols is None else len(self.cols)
        blocks = self.block_list()
        self.blocks_total, self.blocks_resumed, self.blocks_computed, self.loads = len(blocks), 0, 0, 0
        tmp: Path | None = None
        if out is not None:
            out = Path(out)
            if out.suffix != ".npy":
                raise InputError(f"{out}: the matrix file must end in .npy")
            if not out.parent.is_dir():
                raise InputError(f"{out}: its folder {out.parent} does not exist")
            tmp = out.with_name(out.name + ".partial")
            matrix: np.ndarray = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float64, shape=(n_rows, n_cols)
            )
        else:
            matrix = np.full((n_rows, n_cols), np.nan, dtype=np.float64)
        store = None
        try:
            done: set[tuple[int, int]] = set()
            if self.state is not None:
                store = BlockStore(self.state, self.key(), self._description())
                for bi, bj, values in store.blocks():
                    self._place(matrix, bi, bj, values)
                    done.add((bi, bj))
                done &= set(blocks)
                self.blocks_resumed = len(done)
            if progress is not None:
                progress(len(done), len(blocks))
            row_block, row_images = -1, []
            for bi, bj in blocks:
                if (bi, bj) in done:
                    continue
                if max_blocks is not None and self.blocks_computed >= max_blocks:
                    break
                if bi != row_block:
                    row_block, row_images = bi, []  # free the previous row block first
                    row_images = self._load(self.rows, self._range(bi, 0, n_rows))
                if self.symmetric and bi == bj:
                    values = self.block_values(row_images, None)
                else:
                    source = self.rows if self.cols is None else self.cols
                    values = self.block_values(row_images, self._load(source, self._range(bj, 1, n_cols)))
                if store is not None:
                    store.put(bi, bj, values)
                self._place(matrix, bi, bj, values)
                done.add((bi, bj))
                self.blocks_computed += 1
                if progress is not None:
                    progress(len(done), len(blocks))
        except BaseException:
            if tmp is not None:
                del matrix
                tmp.unlink(missing_ok=True)
            raise
        finally:
            if store is not None:
                store.close()
        if tmp is not None and out is not None:
            matrix.flush()  # type: ignore[attr-defined]
            if len(done) < len(blocks):  # a slice (max_blocks): the file keeps its temporary name
                return matrix
            os.replace(tmp, out)
        return matrix

    def _place(self, matrix: np.ndarray, bi: int, bj: int, values: np.ndarray) -> None:
        rows, cols = self._range(bi, 0, matrix.shape[0]), self._range(bj, 1, matrix.shape[1])
        if values.shape != (len(rows), len(cols)):
            raise InputError(f"{self.state}: block ({bi}, {bj}) has the wrong shape {values.shape}")
        matrix[rows.start : rows.stop, cols.start : cols.stop] = values
        if self.symmetric and bi != bj:
            matrix[cols.start : cols.stop, rows.start : rows.stop] = values.T

    def _description(self) -> dict[str, Any]:
        return {
            "settings": self.settings(),
            "block": list(self.block),
            "rows": len(self.rows),
            "cols": "symmetric" if self.cols is None else len(self.cols),
        }


def chunked_ssim_matrix(
    rows: ItemSource,
    cols: ItemSource | None = None,
    *,
    block: int | tuple[int, int] = DEFAULT_BLOCK,
    metric: SsimMetric | None = None,
    state: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """``ChunkedMatrix(rows, cols, ...).compute(out, progress)``: see :class:`ChunkedMatrix`."""
    return ChunkedMatrix(rows, cols, block=block, metric=metric, state=state).compute(out, progress)


def top_k(matrix: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> list[list[tuple[int, float]]]:
    """Per row of ``matrix`` the ``k`` largest entries as (column, value), best first (ties by
    column), read one row at a time (a memory-mapped matrix stays on disk); ``exclude[i]`` are
    columns left out of row i (e.g. the item itself)."""
    result = []
    for i in range(matrix.shape[0]):
        row = np.array(matrix[i], dtype=np.float64)
        if exclude is not None and exclude[i]:
            row[list(exclude[i])] = -np.inf
        order = np.lexsort((np.arange(row.size), -row))
        result.append([(int(j), float(row[j])) for j in order[:k] if np.isfinite(row[j])])
    return result
