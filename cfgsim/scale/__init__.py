"""Comparisons at scale: thousands of probe images (issue 12, part 3).

* :mod:`cfgsim.scale.chunked`: the exact SSIM matrix in blocks, bounded memory, resumable from an
  SQLite state file (:mod:`cfgsim.scale.state`), optionally written to a memory-mapped ``.npy``;
* :mod:`cfgsim.scale.prefilter`: nearest relatives among many — compact descriptors, an exact
  inner-product index (FAISS when installed, else numpy), exact SSIM on the top-M candidates;
* :mod:`cfgsim.scale.sources`: where the images come from (files, or a loader callable);
* :mod:`cfgsim.scale.cli`: the ``cfgsim nearest`` subcommand;
* :mod:`cfgsim.scale.synthetic`: probe-like image families for the tests and the benchmark.
"""

from __future__ import annotations

from cfgsim.scale.chunked import DEFAULT_BLOCK, ChunkedMatrix, chunked_ssim_matrix, top_k
from cfgsim.scale.prefilter import NearestResult, VectorIndex, describe, faiss_available, nearest
from cfgsim.scale.sources import LoaderSource, PathSource, find_images

__all__ = [
    "DEFAULT_BLOCK",
    "ChunkedMatrix",
    "LoaderSource",
    "NearestResult",
    "PathSource",
    "VectorIndex",
    "chunked_ssim_matrix",
    "describe",
    "faiss_available",
    "find_images",
    "nearest",
    "top_k",
]
