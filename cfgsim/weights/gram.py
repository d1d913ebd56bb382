"""One streaming pass over N checkpoints: per-block Gram matrices and component fingerprints.

For every tensor name, the same rows are read from every file that has it (a slice at a time, so
memory is bounded by the slice budget, not by N × the model size), and the N×N matrix of dot
products is added to that tensor's block. From the Gram matrix G of a block, every pair's cosine
``G_ab / sqrt(G_aa G_bb)`` and distance ``||a − b||² = G_aa + G_bb − 2 G_ab`` follow, and so does a
merge recipe (:mod:`cfgsim.weights.recipe`): all pairs cost one read of each file.

Precision: each slice is converted to float32 and split into sub-chunks of :data:`SUB` values,
whose dot products (float32, BLAS) are summed in float64 — the relative error of a block's Gram
entry stays near float32's unit roundoff (≈ 6e-8) however large the block. With ``base`` given the
Gram of the differences from the base is accumulated as well, from the differences themselves
(no cancellation), which is what separates two fine-tunes of one base.

Fingerprints: per component, sha256 over (canonical name, canonical shape, CRC-32 of the values
rounded to float16) in name order — the same for fp32 / fp16 copies, any key layout, EMA pruned
or not, any metadata or file name. The exact fingerprint uses each tensor's values at their own
precision (float16 when they are exactly representable there, so an fp16 file and its fp32 upcast
are "identical").
"""

from __future__ import annotations

import hashlib
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cfgsim.weights.keys import COMPONENTS, FLOAT_DTYPES, Entry
from cfgsim.weights.source import REOPEN_BYTES, Source

#: Values per sub-chunk whose dot product is taken in float32 before the float64 sum.
SUB = 4096
#: Working memory of the pass (slices of all files, their float32 copies, the differences).
DEFAULT_BUDGET = 192 * 1024 * 1024
_BYTES_PER_VALUE = 14  # stored (≤ 4) + float32 copy (4) + difference (4) + float16 for the CRC (2)

Progress = Callable[[int, int, str], None]


@dataclass
class GramPass:
    """What one pass produced. Indices refer to the sources in the order given."""

    labels: list[str]
    blocks: dict[str, str] = field(default_factory=dict)  # block → component, in model order
    gram: dict[str, np.ndarray] = field(default_factory=dict)  # block → N×N (NaN: not compared)
    delta: dict[str, np.ndarray] = field(default_factory=dict)  # block → N×N of differences from base
    base: int | None = None
    fingerprint: dict[tuple[int, str], str] = field(default_factory=dict)  # (item, component) → hex
    exact: dict[tuple[int, str], str] = field(default_factory=dict)
    group: dict[tuple[int, str], int] = field(default_factory=dict)  # same number: comparable
    dtypes: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    bytes_read: int = 0
    seconds: float = 0.0

    def component_blocks(self, component: str) -> list[str]:
        return [b for b, c in self.blocks.items() if c == component]

    def component_gram(self, component: str, *, delta: bool = False) -> np.ndarray | None:
        """The sum of a component's block Grams (NaN where the pair was not compared)."""
        source = self.delta if delta else self.gram
        mats = [source[b] for b in self.component_blocks(component) if b in source]
        return None if not mats else np.sum(mats, axis=0)

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
    """Read every file once and return the per-block Gram matrices and the fingerprints.

    Files are compared per component, and only with files whose component has the same tensors
    (names and shapes): an SD 1.x and an SDXL checkpoint share the VAE and the CLIP ViT-L text
    encoder, not the UNet. ``progress(done_bytes, total_bytes, what)`` is called after each tensor.
    """
    import torch

    started = time.perf_counter()
    n_all = len(sources)
    out = GramPass(labels=[s.label for s in sources], base=base)
    for s in sources:
        s.set_reopen_bytes(REOPEN_BYTES // max(1, n_all))
    total = sum(e.numel * FLOAT_DTYPES[e.dtype] for s in sources for e in s.entries.values())
    done = 0
    from cfgsim.weights.keys import block_sort_key

    all_blocks: dict[str, str] = {}
    for component in COMPONENTS:
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(sources):
            entries = s.component_entries(component)
            if entries:
                groups.setdefault(_signature(entries), []).append(i)
                out.dtypes[(i, component)] = s.dtypes(component)
        for number, idx in enumerate(groups.values()):
            for i in idx:
                out.group[(i, component)] = number
            hashes = {i: (hashlib.sha256(), hashlib.sha256()) for i in idx}
            b = idx.index(base) if base is not None and base in idx else None
            ix = np.ix_(idx, idx)
            touched: set[str] = set()
            for name_entry in sources[idx[0]].component_entries(component):
                entries = [sources[i].entries[name_entry.name] for i in idx]
                block = name_entry.block
                all_blocks[block] = component
                if block not in touched:
                    touched.add(block)
                    for target in (out.gram, out.delta) if b is not None else (out.gram,):
                        mat = target.setdefault(block, np.full((n_all, n_all), np.nan))
                        mat[ix] = 0.0
                tensor_hashes = [_TensorHash(e.dtype) for e in entries]
                g, d = _accumulate(sources, idx, entries, tensor_hashes, b, budget, torch)
                out.gram[block][ix] += g
                if d is not None:
                    out.delta[block][ix] += d
                for i, e, th in zip(idx, entries, tensor_hashes, strict=True):
                    line = f"{e.name} {e.shape} "
                    hashes[i][0].update(f"{line}{th.crc16:08x}\n".encode())
                    hashes[i][1].update(f"{line}{th.exact()}\n".encode())
                    done += e.numel * FLOAT_DTYPES[e.dtype]
                if progress is not None:
                    progress(done, total, f"{component} {block}")
            for i in idx:
                out.fingerprint[(i, component)] = hashes[i][0].hexdigest()[:16]
                out.exact[(i, component)] = hashes[i][1].hexdigest()[:16]
    for s in sources:
        s.close()
    out.blocks = {b: all_blocks[b] for b in sorted(all_blocks, key=block_sort_key)}
    out.bytes_read = done
    out.seconds = time.perf_counter() - started
    return out


def _accumulate(sources, idx, entries, hashes, b, budget, torch):  # noqa: PLR0917 (one pass's state)
    """One tensor's contribution to the Gram (and the delta Gram) of the files ``idx``."""
    n = len(idx)
    first = entries[0]
    rows = first.shape[0] if first.shape else 1
    per_row = max(1, first.numel // max(1, rows))
    values = max(SUB, budget // (_BYTES_PER_VALUE * n))
    step = max(1, values // per_row)
    g = np.zeros((n, n))
    d = np.zeros((n, n)) if b is not None else None
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        parts = [sources[i].read(e, start, stop) for i, e in zip(idx, entries, strict=True)]
        length = parts[0].numel()
        for p, e in zip(parts, entries, strict=True):
            if p.numel() != length:
                raise ValueError(f"{e.name}: {p.numel()} values where {length} were expected")
        full, tail = divmod(length, SUB)
        m = full + (1 if tail else 0)
        y = torch.empty((m, n, SUB), dtype=torch.float32)
        if tail:
            y[-1].zero_()
        for k, (p, th) in enumerate(zip(parts, hashes, strict=True)):
            th.update(p)
            if full:
                y[:full, k, :].copy_(p[: full * SUB].view(full, SUB))
            if tail:
                y[full, k, :tail].copy_(p[full * SUB :])
        del parts
        g += torch.bmm(y, y.transpose(1, 2)).sum(0, dtype=torch.float64).numpy()
        if d is not None:
            y -= y[:, b : b + 1, :].clone()
            d += torch.bmm(y, y.transpose(1, 2)).sum(0, dtype=torch.float64).numpy()
    return g, d


def cosine(gram: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair from a Gram matrix (NaN for a zero vector or a pair not compared)."""
    diag = np.sqrt(np.clip(np.diag(gram), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = gram / np.outer(diag, diag)
    c[~np.isfinite(c)] = np.nan
    return np.clip(c, -1.0, 1.0)


def distance(gram: np.ndarray) -> np.ndarray:
    """||a − b|| of every pair from a Gram matrix."""
    diag = np.diag(gram)
    sq = diag[:, None] + diag[None, :] - 2.0 * gram
    return np.sqrt(np.clip(sq, 0.0, None))


def relative_l2(gram: np.ndarray) -> np.ndarray:
    """||a − b|| / sqrt((||a||² + ||b||²) / 2): 0 = identical, √2 for orthogonal weights of equal norm."""
    diag = np.diag(gram)
    denom = np.sqrt(np.clip((diag[:, None] + diag[None, :]) / 2.0, 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = distance(gram) / denom
    r[~np.isfinite(r)] = np.nan
    return r


def finite(x: float) -> bool:
    return x is not None and math.isfinite(x)
