"""Nearest relatives among many: a cheap pre-filter, then exact SSIM on the few candidates.

The exact answer to "which of N images are closest to this one by SSIM" costs N SSIM pairs per
query, N²/2 for every item's relatives. The pre-filter route costs N cheap descriptors, one
nearest-neighbour search, and M exact SSIM pairs per query (M candidates, default 50):

1. **Descriptors**, one per item, each item loaded once (:func:`describe`):

   * ``thumb`` (default): the luma (ITU-R 601: 0.299 R + 0.587 G + 0.114 B) averaged down to
     ``size``² (default 32²: box averages over 16×16 pixels of a probe image), minus its mean,
     scaled to a unit vector. The inner product of two is the correlation of the coarse pictures.
   * ``phash``: the ``imagehash`` DCT perceptual hash (:func:`cfgsim.metrics.phash.phash`,
     ``hash_size``² bits) as ±1/√bits, so the inner product is 1 − 2 · Hamming / bits.

   Measured on the benchmark's 2,000 synthetic 512² images (``benchmarks/RESULTS-scale.md``),
   recall@10 against exact SSIM: ``thumb`` 32² 0.856 / 0.980 / 0.994 with M = 10 / 20 / 50
   candidates, the 64-bit ``phash`` 0.736 / 0.934 / 0.976 (its bits keep only the signs of the
   lowest frequencies, and many candidates tie at one Hamming distance); a 256-bit pHash
   (``size=16``) is as good as ``thumb`` (0.842 / 0.990 / 0.996) but takes 3× as long to compute
   (2.1 vs 0.7 ms an image). ``thumb`` 16² and 64² score within 0.02 of 32².
2. **Index** (:class:`VectorIndex`): exact inner-product search. With FAISS installed (the
   ``scale`` extra, ``faiss-cpu``) it is ``faiss.IndexFlatIP``; without it, the same search in numpy
   (query chunks × all vectors, ``argpartition``), which gives the same candidates (identical on
   the benchmark). Not ``scipy.spatial.cKDTree``: on 1024-dimensional vectors a k-d tree cannot
   prune and visits nearly every point; searching 2,000 descriptors for their 51 nearest took it
   7.5 s against 0.45 s for the numpy brute force and 0.25 s for FAISS (RESULTS-scale.md). All are
   exact over the descriptors: the approximation is the descriptor, not the search.
3. **Exact SSIM** (:func:`cfgsim.metrics.ssim`'s metric, its own preparation and pair sums) on each
   query's M candidates, in batches of at most ``max_images`` loaded images (queries that share
   candidates go in one batch), with the last ``max_images`` images loaded kept for the next
   batches, so memory is about 2 · ``max_images`` images; the k best by SSIM are returned.

Recall@k (how many of the exact top k the route returns) depends on M and on how well the
descriptor ranks; the benchmark reports it against the exact result.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from cfgsim.errors import InputError
from cfgsim.metrics.phash import phash
from cfgsim.metrics.ssim import SsimMetric
from cfgsim.scale.sources import ItemSource, load_checked

__all__ = ["DESCRIPTORS", "NearestResult", "VectorIndex", "describe", "faiss_available", "nearest"]

DESCRIPTORS = ("thumb", "phash")

Progress = Callable[[str, int, int], Any]


def faiss_available() -> bool:
    """Whether ``import faiss`` works (the ``scale`` extra: ``pip install faiss-cpu``)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def describe(image: np.ndarray, kind: str = "thumb", size: int = 32) -> np.ndarray:
    """The descriptor of a uint8 (H, W, 3) image as a float32 unit vector (see the module docstring):
    ``thumb`` of ``size``² values, or ``phash`` of ``size``² bits (``size`` is the hash size)."""
    if kind == "thumb":
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        small = np.asarray(
            Image.fromarray(luma, mode="F").resize((size, size), Image.Resampling.BOX), dtype=np.float32
        ).reshape(-1)
        small = small - small.mean()
    elif kind == "phash":
        small = np.where(phash(image, hash_size=size), 1.0, -1.0).astype(np.float32)
    else:
        raise InputError(f"descriptor {kind!r} is unknown (known: {', '.join(DESCRIPTORS)})")
    norm = float(np.linalg.norm(small))
    return (small / norm if norm > 0 else small).astype(np.float32)


class VectorIndex:
    """Exact inner-product search over unit vectors: FAISS ``IndexFlatIP`` or numpy.

    ``backend``: ``auto`` (FAISS when importable), ``faiss`` (refused when not installed) or
    ``numpy``. The attribute ``backend`` says which one is used."""

    def __init__(self, vectors: np.ndarray, backend: str = "auto") -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if backend not in ("auto", "faiss", "numpy"):
            raise InputError(f"index backend {backend!r} is unknown (known: auto, faiss, numpy)")
        if backend == "faiss" and not faiss_available():
            raise InputError("the faiss index needs faiss-cpu: pip install 'cfgsim[scale]'")
        self.backend = "faiss" if backend == "faiss" or (backend == "auto" and faiss_available()) else "numpy"
        self._faiss = None
        if self.backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(self.vectors)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def search(self, queries: np.ndarray, m: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (Q, m): the m largest inner products per query, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        m = min(m, len(self))
        if self._faiss is not None:
            scores, ids = self._faiss.search(queries, m)
            return scores, ids.astype(np.int64)
        all_scores = np.empty((len(queries), m), dtype=np.float32)
        all_ids = np.empty((len(queries), m), dtype=np.int64)
        for start in range(0, len(queries), chunk):
            sims = queries[start : start + chunk] @ self.vectors.T  # chunk × N: bounded memory
            part = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < sims.shape[1] else None
            if part is None:
                part = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
            picked = np.take_along_axis(sims, part, axis=1)
            order = np.lexsort((part, -picked), axis=1)  # by score, ties by id
            all_ids[start : start + chunk] = np.take_along_axis(part, order, axis=1)
            all_scores[start : start + chunk] = np.take_along_axis(picked, order, axis=1)
        return all_scores, all_ids


@dataclass
class NearestResult:
    """Per query its ``k`` nearest database items by exact SSIM: (index, ssim), best first."""

    neighbours: list[list[tuple[int, float]]]
    candidates: list[list[int]]  # per query the M candidates the index gave (database indices)
    backend: str
    descriptor: str
    pairs: int = 0  # exact SSIM pairs computed
    loads: int = 0  # images loaded (the descriptor pass and the batches)
    info: dict[str, Any] = field(default_factory=dict)


def nearest(
    database: ItemSource,
    queries: ItemSource | Sequence[int] | None = None,
    *,
    k: int = 10,
    candidates: int = 50,
    descriptor: str = "thumb",
    size: int | None = None,
    backend: str = "auto",
    metric: SsimMetric | None = None,
    max_images: int = 128,
    progress: Progress | None = None,
) -> NearestResult:
    """The ``k`` nearest ``database`` items by SSIM for each query, through the pre-filter.

    ``queries``: None (every database item, itself left out), a list of database indices (the same,
    for those items), or an item source of outside images. ``candidates`` is M, the candidates per
    query scored exactly; ``size`` the descriptor's size (default 32 for ``thumb``, 8 for
    ``phash``). ``progress(phase, done, total)`` is called for the phases ``describe`` and
    ``rerank``. Images must all have one size (refused, with the file's name, when not).
    """
    if k < 1 or candidates < 1:
        raise InputError(f"k and the number of candidates must be at least 1, not {k} and {candidates}")
    if max_images < 2:
        raise InputError(f"max_images must be at least 2, not {max_images}")
    metric = metric or SsimMetric()
    size = size or (32 if descriptor == "thumb" else 8)
    n = len(database)
    if n == 0:
        raise InputError("no images to search")
    shape: list[tuple[int, ...] | None] = [None]
    loads = [0]
    cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def load(source: ItemSource, i: int) -> np.ndarray:
        key = (id(source), i)
        arr = cache.get(key)
        if arr is not None:
            cache.move_to_end(key)
            return arr
        arr = load_checked(source, i, shape[0])
        shape[0] = shape[0] or arr.shape
        loads[0] += 1
        cache[key] = arr
        if len(cache) > max_images:
            cache.popitem(last=False)
        return arr

    external = queries is not None and not isinstance(queries, Sequence)
    vectors = np.empty((n, size * size), dtype=np.float32)
    for i in range(n):
        vectors[i] = describe(load(database, i), descriptor, size)
        if progress is not None:
            progress("describe", i + 1, n)
    if external:
        qsource: ItemSource = queries  # type: ignore[assignment]
        qvectors = np.stack([describe(load(qsource, q), descriptor, size) for q in range(len(qsource))])
        self_index = [-1] * len(qsource)
    else:
        qsource = database
        picked = list(range(n)) if queries is None else [int(q) for q in queries]  # type: ignore[union-attr]
        for q in picked:
            if not 0 <= q < n:
                raise InputError(f"query index {q} is outside the {n} database items")
        qvectors = vectors[picked]
        self_index = picked

    index = VectorIndex(vectors, backend)
    extra = 0 if external else 1
    _, ids = index.search(qvectors, candidates + extra)
    cand = [[int(j) for j in row if j != self_index[q] and j >= 0][:candidates] for q, row in enumerate(ids)]

    # Pool indices: database items 0..n-1, outside queries n..n+Q-1.
    def pool(q: int) -> int:
        return n + q if external else self_index[q]

    scores = _rerank(
        [(pool(q), cand[q]) for q in range(len(cand))],
        lambda p: load(database, p) if p < n else load(qsource, p - n),
        metric,
        max_images,
        progress,
    )
    neighbours = []
    for q, cs in enumerate(cand):
        scored = sorted(((scores[_pair(pool(q), c)], c) for c in cs), key=lambda t: (-t[0], t[1]))
        neighbours.append([(c, s) for s, c in scored[:k]])
    return NearestResult(
        neighbours, cand, index.backend, f"{descriptor}{size}", pairs=len(scores), loads=loads[0]
    )


def _pair(a: int, b: int) -> tuple[int, int]:
    return (a, b) if a < b else (b, a)


def _rerank(
    work: list[tuple[int, list[int]]],
    load: Callable[[int], np.ndarray],
    metric: SsimMetric,
    max_images: int,
    progress: Progress | None,
) -> dict[tuple[int, int], float]:
    """Exact SSIM of every (query, candidate) pair, each unordered pair once.

    Queries are taken in batches whose images (queries and candidates together) number at most
    ``max_images``; a batch grows from one query through the queries among its candidates (a
    breadth-first walk of the candidate graph), so that relatives, which share candidates, share a
    batch and their images are loaded once."""
    by_pool = {p: i for i, (p, _) in enumerate(work)}
    left = set(range(len(work)))
    scores: dict[tuple[int, int], float] = {}
    done = 0
    order = iter(range(len(work)))
    while left:
        start = next(q for q in order if q in left)
        batch, members, frontier = [], set(), [start]
        while frontier:
            q = frontier.pop(0)
            if q not in left:
                continue
            p, cs = work[q]
            need = {p, *cs} - members
            if batch and len(members) + len(need) > max_images:
                continue
            batch.append(q)
            left.discard(q)
            members |= need
            frontier += [by_pool[c] for c in cs if c in by_pool and by_pool[c] in left]
        pairs = sorted({_pair(work[q][0], c) for q in batch for c in work[q][1]} - scores.keys())
        if pairs:
            used = sorted({x for pair in pairs for x in pair})
            position = {p: i for i, p in enumerate(used)}
            # Items one at a time into the metric's own preparation; the batch is the memory bound.
            prepared = metric.prepare([load(p) for p in used])
            cells = [(position[a], position[b]) for a, b in pairs]
            sums = metric._sums(prepared, cells)
            for pair, total in zip(pairs, sums, strict=True):
                scores[pair] = float(total) / prepared[0].interior_size
        done += len(batch)
        if progress is not None:
            progress("rerank", done, len(work))
    return scores
