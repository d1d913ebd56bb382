"""One streaming pass over N checkpoints: per-block Gram matrices and component fingerprints.

For every tensor name, the same rows are read from every file that has it (a slice at a time, so
memory is bounded by the slice budget, not by N × the model size), and the N×N matrix of inner
products is added to that tensor's block. From a block's matrices every pair's cosine and distance
follow, and so does a merge recipe (:mod:`cfgsim.weights.recipe`): all pairs cost one read of each file.

What is accumulated is the Gram matrix of [x₀, x₁ − x₀, …] with x₀ the group's anchor (the base
when given, else the first file): the plain inner products follow from it, and so do the inner
products of the differences from x₀, in which related models' small differences are not swamped
by their large common part. Each slice is converted to float32 and split into sub-chunks of
:data:`SUB` values whose products (float32, one batched BLAS call) are summed in float64.

Fingerprints: per component, sha256 over (canonical name, canonical shape, CRC-32 of the values
rounded to float16) in name order — the same for fp32 / fp16 copies, any key layout, EMA pruned
or not, any metadata or file name. The exact fingerprint uses each tensor's values at their own
precision (float16 when they are exactly representable there, so an fp16 file and its fp32 upcast
are "identical").
"""

from __future__ import annotations

import hashlib
import math
import mmap
import queue
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cfgsim.weights.keys import COMPONENTS, FLOAT_DTYPES, Entry
from cfgsim.weights.source import DIRECT_BLOCK, Source, direct_size

#: Values per sub-chunk whose dot products are taken in float32 (BLAS) before the float64 sum.
SUB = 65536
#: Working memory of the pass (slices of all files, their float32 copies, the differences).
DEFAULT_BUDGET = 192 * 1024 * 1024
#: Slabs (one slice of every file as stored): one being read, one waiting for the CRCs, one
#: being CRC'd, the rest waiting for (or in) the products.
SLABS = 6
# Per value: the slabs (≤ 4 bytes each), the float32 copy (4) and the float16 copy for the CRC (2).
_BYTES_PER_VALUE = 4 * SLABS + 4 + 2

Progress = Callable[[int, int, str], None]


@dataclass
class GramPass:
    """What one pass produced. Indices refer to the sources in the order given.

    Per block two N×N matrices (NaN where a pair was not compared): ``gram``, the plain inner
    products ⟨a, b⟩, and ``anchored``, the inner products of the differences from the group's
    anchor (the base when given, else the group's first file): ⟨a − o, b − o⟩. Distances and
    recipes come from ``anchored`` — they are the same from any origin, and differences of related
    models are small, so nothing large cancels; norms come from ``gram``.
    """

    labels: list[str]
    blocks: dict[str, str] = field(default_factory=dict)  # block → component, in model order
    gram: dict[str, np.ndarray] = field(default_factory=dict)
    anchored: dict[str, np.ndarray] = field(default_factory=dict)
    base: int | None = None
    anchors: dict[tuple[str, int], int] = field(default_factory=dict)  # (component, group) → item
    fingerprint: dict[tuple[int, str], str] = field(default_factory=dict)  # (item, component) → hex
    exact: dict[tuple[int, str], str] = field(default_factory=dict)
    group: dict[tuple[int, str], int] = field(default_factory=dict)  # same number: comparable
    dtypes: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0

    def component_blocks(self, component: str) -> list[str]:
        return [b for b, c in self.blocks.items() if c == component]

    def _sum(self, source: dict[str, np.ndarray], blocks: Sequence[str]) -> np.ndarray | None:
        mats = [source[b] for b in blocks if b in source]
        return None if not mats else np.sum(mats, axis=0)

    def component_gram(self, component: str, *, anchored: bool = False) -> np.ndarray | None:
        """The sum of a component's block matrices (NaN where the pair was not compared)."""
        return self._sum(self.anchored if anchored else self.gram, self.component_blocks(component))

    def stats(self, blocks: Sequence[str], *, delta: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """(cosine, relative L2) N×N over ``blocks`` together; ``delta``: of the differences from the base."""
        if delta:
            k = self._sum(self.delta_blocks(), blocks)
            return None if k is None else (cosine(k), relative_l2(k, k))
        g, k = self._sum(self.gram, blocks), self._sum(self.anchored, blocks)
        return None if g is None or k is None else (cosine(g, k), relative_l2(g, k))

    def delta_blocks(self) -> dict[str, np.ndarray]:
        """Per block, the inner products of the differences from the base (NaN outside its groups)."""
        if self.base is None:
            return {}
        out = {}
        for block, k in self.anchored.items():
            component = self.blocks[block]
            keep = np.array(
                [
                    self.anchors.get((component, self.group.get((i, component), -1))) == self.base
                    for i in range(len(self.labels))
                ]
            )
            if keep.any():
                out[block] = np.where(np.outer(keep, keep), k, np.nan)
        return out

    def comparable(self, a: int, b: int, component: str) -> bool:
        ga, gb = self.group.get((a, component)), self.group.get((b, component))
        return ga is not None and ga == gb


def _signature(entries: Sequence[Entry]) -> str:
    h = hashlib.sha1()
    for e in entries:
        h.update(f"{e.name} {e.shape}\n".encode())
    return h.hexdigest()


class _TensorHash:
    """CRC-32 of one tensor's values at float16 precision and at their stored precision."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.crc16 = 0
        self.crc_raw = 0
        self.lossless = True

    def update(self, t) -> None:
        import torch

        if t.dtype == torch.float16:
            self.crc16 = zlib.crc32(t.view(torch.int16).numpy(), self.crc16)
            return
        t16 = t.to(torch.float16)
        self.crc16 = zlib.crc32(t16.view(torch.int16).numpy(), self.crc16)
        if self.lossless and not bool(torch.equal(t16.to(t.dtype), t)):
            self.lossless = False
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        self.crc_raw = zlib.crc32(t.view(ints).numpy(), self.crc_raw)

    def exact(self) -> str:
        if self.dtype == "F16" or self.lossless:
            return f"{self.crc16:08x}"
        return f"{self.dtype}:{self.crc_raw:08x}"


def gram_pass(
    sources: Sequence[Source],
    *,
    base: int | None = None,
    budget: int = DEFAULT_BUDGET,
    progress: Progress | None = None,
) -> GramPass:
    """Read every file once and return the per-block matrices and the fingerprints.

    Files are compared per component, and only with files whose component has the same tensors
    (names and shapes): an SD 1.x and an SDXL checkpoint share the VAE and the CLIP ViT-L text
    encoder, not the UNet. ``progress(done_bytes, total_bytes, what)`` is called after each tensor.
    """
    import torch

    # One intra-op thread: the pass is memory-bound and its operations are small; on this project's
    # shared 2-core machine two threads made it 4-5x slower (OpenMP threads waiting on each other
    # while other processes hold the cores). The second core goes to the reader thread instead.
    # torch's setting is process-wide: restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _gram_pass(sources, base=base, budget=budget, progress=progress)
    finally:
        torch.set_num_threads(threads)
        for s in sources:  # also when ``progress`` raised to stop the pass (the WebUI's interrupt)
            s.close()


@dataclass
class _Task:
    """One tensor, read from the files ``idx`` (the group's anchor first), in row slices."""

    component: str
    block: str
    idx: list[int]
    entries: list[Entry]
    slices: list[tuple[int, int]]
    hashes: dict[int, tuple]  # the group's (fingerprint, exact) sha256 objects by file


def _slices(entries: Sequence[Entry], n: int, budget: int) -> list[tuple[int, int]]:
    first = entries[0]
    rows = first.shape[0] if first.shape else 1
    per_row = max(1, first.numel // max(1, rows))
    values = max(SUB, budget // (_BYTES_PER_VALUE * n))
    step = max(1, values // per_row)
    return [(start, min(rows, start + step)) for start in range(0, rows, step)]


def _plan(sources: Sequence[Source], base: int | None, out: GramPass, budget: int) -> list[_Task]:
    """The pass's tensors in reading order; fills in ``out``'s groups, anchors and zeroed matrices."""
    n_all = len(sources)
    tasks = []
    for component in COMPONENTS:
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(sources):
            entries = s.component_entries(component)
            if entries:
                groups.setdefault(_signature(entries), []).append(i)
                out.dtypes[(i, component)] = s.dtypes(component)
        for number, members in enumerate(groups.values()):
            # The anchor (the base when it is in the group) goes first: row 0 of every slice.
            idx = [base] + [i for i in members if i != base] if base in members else members
            out.anchors[(component, number)] = idx[0]
            for i in idx:
                out.group[(i, component)] = number
            hashes = {i: (hashlib.sha256(), hashlib.sha256()) for i in idx}
            ix = np.ix_(idx, idx)
            for name_entry in sources[idx[0]].component_entries(component):
                entries = [sources[i].entries[name_entry.name] for i in idx]
                block = name_entry.block
                out.blocks.setdefault(block, component)
                for target in (out.gram, out.anchored):
                    target.setdefault(block, np.full((n_all, n_all), np.nan))[ix] = 0.0
                tasks.append(
                    _Task(component, block, idx, entries, _slices(entries, len(idx), budget), hashes)
                )
    return tasks


_DONE = object()


def _slice_bytes(entries: Sequence[Entry], start: int, stop: int) -> list[int]:
    """Each file's room in a slab for rows ``start:stop`` (whole O_DIRECT blocks, one spare)."""
    out = []
    for e in entries:
        rows = e.shape[0] if e.shape else 1
        per_row = e.numel // max(1, rows)
        out.append(direct_size((min(stop, rows) - start) * per_row * FLOAT_DTYPES[e.dtype]))
    return out


def _padded(task: _Task) -> int:
    """Values per file of the task's largest (first) slice, rounded up to whole sub-chunks."""
    e = task.entries[0]
    start, stop = task.slices[0]
    rows = e.shape[0] if e.shape else 1
    length = (min(stop, rows) - start) * (e.numel // max(1, rows))
    return -(-length // SUB) * SUB


class _Buffers:
    """The pass's memory, allocated once and reused (fresh large buffers cost a page fault per
    4 KiB, which measured more than all the arithmetic): ``slabs``, each one slice of every file
    as stored, cycling between the reader (free → filled) and the products (filled → free); and
    the float32 matrix of the products."""

    def __init__(self, tasks: Sequence[_Task], count: int) -> None:
        import torch

        slab = max((sum(_slice_bytes(t.entries, *t.slices[0])) for t in tasks), default=0)
        values = max((_padded(t) * len(t.idx) for t in tasks), default=0)
        self.free: queue.Queue = queue.Queue()
        for _ in range(count):
            # Page-aligned (an anonymous map), as O_DIRECT reads need.
            self.free.put(np.frombuffer(mmap.mmap(-1, max(slab, DIRECT_BLOCK)), dtype=np.uint8))
        self.y = torch.empty(max(values, SUB), dtype=torch.float32)


def _wait(stop: threading.Event, call):
    """``call()`` (a queue's get or put with a timeout) again until it succeeds or ``stop`` is set."""
    while not stop.is_set():
        try:
            return call()
        except (queue.Full, queue.Empty):
            continue
    return None


def _reader(sources, tasks, buffers: _Buffers, q: queue.Queue, stop: threading.Event) -> None:
    """Background thread: every slice of every task, read from each file into a free slab, into ``q``.

    File reads release the GIL, so this runs beside the other stages; it does nothing but read, so
    that the disk is never kept waiting by computation (the files' read-ahead hints aside, a read
    is issued only when the previous one returned). An error is handed on, not raised.
    """
    try:
        for task in tasks:
            tensor_hashes = [_TensorHash(e.dtype) for e in task.entries]
            for start, stop_row in task.slices:
                slab = _wait(stop, lambda: buffers.free.get(timeout=0.1))
                if slab is None:
                    return
                parts, offset = [], 0
                sizes = _slice_bytes(task.entries, start, stop_row)
                for i, e, size in zip(task.idx, task.entries, sizes, strict=True):
                    parts.append(sources[i].read(e, start, stop_row, out=slab[offset : offset + size]))
                    offset += size
                length = parts[0].numel()
                for p, e in zip(parts, task.entries, strict=True):
                    if p.numel() != length:
                        raise ValueError(f"{e.name}: {p.numel()} values where {length} were expected")
                item = (parts, tensor_hashes, slab)
                if _wait(stop, lambda item=item: q.put(item, timeout=0.1) or True) is None:
                    return
                del parts, item
        _wait(stop, lambda: q.put(_DONE, timeout=0.1) or True)
    except BaseException as exc:  # handed to the main thread, which raises it
        _wait(stop, lambda exc=exc: q.put(exc, timeout=0.1) or True)


def _hasher(q_in: queue.Queue, q_out: queue.Queue, stop: threading.Event) -> None:
    """Background thread: the CRCs of each slice (zlib and torch release the GIL), passed on."""
    while True:
        item = _wait(stop, lambda: q_in.get(timeout=0.1))
        if item is None:
            return
        if item is not _DONE and not isinstance(item, BaseException):
            try:
                parts, tensor_hashes, _slab = item
                for p, th in zip(parts, tensor_hashes, strict=True):
                    th.update(p)
            except BaseException as exc:  # handed to the main thread, which raises it
                item = exc
        if _wait(stop, lambda item=item: q_out.put(item, timeout=0.1) or True) is None:
            return
        if item is _DONE or isinstance(item, BaseException):
            return


def _gram_pass(
    sources: Sequence[Source], *, base: int | None, budget: int, progress: Progress | None
) -> GramPass:
    import torch

    from cfgsim.weights.keys import block_sort_key

    started = time.perf_counter()
    out = GramPass(labels=[s.label for s in sources], base=base)
    total = sum(e.numel * FLOAT_DTYPES[e.dtype] for s in sources for e in s.entries.values())
    tasks = _plan(sources, base, out, budget)
    buffers = _Buffers(tasks, SLABS)
    read: queue.Queue = queue.Queue(maxsize=1)
    q: queue.Queue = queue.Queue(maxsize=SLABS - 4)
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_reader,
            args=(sources, tasks, buffers, read, stop),
            name="cfgsim-weights-reader",
            daemon=True,
        ),
        threading.Thread(target=_hasher, args=(read, q, stop), name="cfgsim-weights-hasher", daemon=True),
    ]
    for thread in threads:
        thread.start()
    done = 0
    try:
        for task in tasks:
            h = torch.zeros((len(task.idx), len(task.idx)), dtype=torch.float64)
            tensor_hashes = None
            for _ in task.slices:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                parts, tensor_hashes, slab = item
                h += _product(parts, buffers.y)
                del parts, item
                buffers.free.put(slab)
            _add(out, task, h.numpy())
            for i, e, th in zip(task.idx, task.entries, tensor_hashes or (), strict=True):
                line = f"{e.name} {e.shape} "
                task.hashes[i][0].update(f"{line}{th.crc16:08x}\n".encode())
                task.hashes[i][1].update(f"{line}{th.exact()}\n".encode())
                done += e.numel * FLOAT_DTYPES[e.dtype]
            if progress is not None:
                progress(done, total, f"{task.component} {task.block}")
        item = q.get()
        if isinstance(item, BaseException):
            raise item
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    for task in tasks:
        for i in task.idx:
            out.fingerprint[(i, task.component)] = task.hashes[i][0].hexdigest()[:16]
            out.exact[(i, task.component)] = task.hashes[i][1].hexdigest()[:16]
    for s in sources:
        s.close()
    out.blocks = {b: out.blocks[b] for b in sorted(out.blocks, key=block_sort_key)}
    out.bytes_read = done
    out.seconds = time.perf_counter() - started
    return out


def _add(out: GramPass, task: _Task, h: np.ndarray) -> None:
    """Add one tensor's Gram matrix of [x0, x1 − x0, …] to its block's two matrices."""
    # ⟨xi, xj⟩ = h00 + h0i + h0j + hij (i, j ≥ 1).
    g = h + h[0:1, :] + h[:, 0:1] + h[0, 0]
    g[0, :] = h[0, :] + h[0, 0]
    g[:, 0] = h[:, 0] + h[0, 0]
    g[0, 0] = h[0, 0]
    k = h.copy()
    k[0, :] = 0.0
    k[:, 0] = 0.0
    ix = np.ix_(task.idx, task.idx)
    out.gram[task.block][ix] += g
    out.anchored[task.block][ix] += k


def _product(parts, scratch):
    """The Gram matrix of [x0, x1 − x0, …, xn − x0] of one slice (float64 torch n×n).

    ``scratch``: a float32 buffer of at least ⌈length / SUB⌉ · SUB · n values, reused.
    """
    import torch

    n = len(parts)
    length = parts[0].numel()
    # Layout (sub-chunks, files, values): one batched product gives every sub-chunk's n×n
    # Gram in float32, summed in float64. (A loop of torch.mm per sub-chunk measured 10x slower.)
    sub = min(SUB, 1 << max(10, (length - 1).bit_length()))
    full, tail = divmod(length, sub)
    chunks = full + (1 if tail else 0)
    y = scratch[: chunks * n * sub].view(chunks, n, sub)
    for row, p in enumerate(parts):
        if full:
            y[:full, row, :].copy_(p[: full * sub].view(full, sub))
        if tail:
            y[full, row, :tail].copy_(p[full * sub :])
    if tail:
        y[full, :, tail:].zero_()
    if n > 1:
        y[:, 1:, :] -= y[:, 0:1, :]
    return torch.bmm(y, y.transpose(1, 2)).sum(0, dtype=torch.float64)


def cosine(gram: np.ndarray, anchored: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of every pair (NaN for a zero vector or a pair not compared).

    With ``anchored`` (inner products of differences from a common origin) the cosine is taken as
    1 − (d² − (|a| − |b|)²) / (2|a||b|), d from ``anchored``: near 1 this keeps the precision that
    ⟨a, b⟩ / (|a||b|) loses to rounding.
    """
    norm = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        if anchored is None:
            c = gram / np.outer(norm, norm)
        else:
            d2 = _distance2(anchored)
            c = 1.0 - (d2 - (norm[:, None] - norm[None, :]) ** 2) / (2.0 * np.outer(norm, norm))
    c[~np.isfinite(c)] = np.nan
    return np.clip(c, -1.0, 1.0)


def _distance2(anchored: np.ndarray) -> np.ndarray:
    diag = np.diag(anchored)
    return np.clip(diag[:, None] + diag[None, :] - 2.0 * anchored, 0.0, None)


def relative_l2(gram: np.ndarray, anchored: np.ndarray) -> np.ndarray:
    """||a − b|| / sqrt((||a||² + ||b||²) / 2): 0 = identical, √2 for orthogonal weights of equal norm."""
    diag = np.diag(gram)
    denom = np.sqrt(np.clip((diag[:, None] + diag[None, :]) / 2.0, 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(_distance2(anchored)) / denom
    r[~np.isfinite(r)] = np.nan
    return r


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
