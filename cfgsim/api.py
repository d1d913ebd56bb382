"""The public Python API: compare images, probe checkpoints, read and save results.

Everything a script needs is re-exported from :mod:`cfgsim` (``import cfgsim``); the names here are
stable. Images may be given as file paths, PIL images or ``uint8`` arrays of shape (H, W, 3).

>>> import numpy as np, cfgsim
>>> rng = np.random.default_rng(0)
>>> a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
>>> b = a.copy(); b[:8] = 0
>>> m = cfgsim.similarity_matrix([a, b, a])
>>> m.shape, float(m[0, 2])
((3, 3), 1.0)
>>> result = cfgsim.compare_images({"a": [a, a], "b": [b, b], "c": [a, b]}, replicates=200)
>>> result.lineage.relative_of(0).nearest_label
'c'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
from PIL import Image

from cfgsim import lineage as _lineage
from cfgsim.errors import InputError

if TYPE_CHECKING:
    from cfgsim.result import ProbeResult
    from cfgsim.spec import ProbeSpec

#: What an image argument may be: a file path, a PIL image, or a uint8 (H, W, 3) / (H, W) array.
ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]  # noqa: UP007 (a runtime alias on 3.10)

__all__ = [
    "ImageLike",
    "compare_images",
    "probe_checkpoints",
    "read_result",
    "render_result",
    "save_result",
    "similarity_matrix",
]


def _as_image(image: ImageLike, what: str) -> Image.Image | np.ndarray:
    from cfgsim.imageio import load_image, to_array

    if isinstance(image, (str, os.PathLike)):
        return load_image(Path(image))
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return to_array(image)
    raise InputError(
        f"{what}: expected a file path, a PIL image or a uint8 array, not {type(image).__name__}"
    )


def similarity_matrix(images: Sequence[ImageLike], metric: str = "ssim", **options: Any) -> np.ndarray:
    """The N×N similarity matrix of ``images`` under ``metric`` (1.0 means identical).

    ``options`` are the metric's keyword options (e.g. ``model=`` for ``clip``). Images of different
    sizes are brought to the smallest size first (as :func:`compare_images` does).
    """
    from cfgsim.imageio import common_size
    from cfgsim.metrics import get_metric

    if len(images) < 1:
        raise InputError("similarity_matrix: no images given")
    arrays, _policy = common_size([_as_image(img, f"image {k}") for k, img in enumerate(images)])
    m = get_metric(metric, **options)
    load = getattr(m, "load", None)
    if callable(load):
        load()
    return m.matrix(m.prepare(arrays))


def compare_images(
    images: Sequence[ImageLike] | Mapping[str, Sequence[ImageLike] | Mapping[int, ImageLike]],
    *,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] | str = ("ssim",),
    reference: int | str | ImageLike | None = None,
    alpha: float = _lineage.DEFAULT_ALPHA,
    replicates: int = _lineage.DEFAULT_REPLICATES,
    margin: float = _lineage.DEFAULT_MARGIN,
) -> ProbeResult:
    """Compare images and return the full result (scores, lineage verdict, tree).

    ``images`` is either a sequence (one image per item, one seed) or a mapping from item label to
    that item's images over seeds: a sequence (paired by position) or a ``{seed: image}`` mapping
    (paired by seed; seeds that not every item has are left out). ``reference`` is an item's index
    or label, or an external image. The first metric drives the lineage section.
    """
    from cfgsim.compare import build_metrics, compare, load_metrics
    from cfgsim.host import Checkpoint
    from cfgsim.result import Cell, ProbeResult, Reference
    from cfgsim.spec import ProbeSpec

    if isinstance(images, Mapping):
        names = [str(k) for k in images]
        per_item: list[dict[int, ImageLike]] = []
        for name, value in images.items():
            if isinstance(value, Mapping):
                per_item.append({int(k): v for k, v in value.items()})
            elif isinstance(value, (str, os.PathLike, Image.Image, np.ndarray)):
                per_item.append({0: value})
            else:
                per_item.append(dict(enumerate(value)))
            if not per_item[-1]:
                raise InputError(f"item {name!r}: no images")
        rows = sorted(set.intersection(*(set(d) for d in per_item)))
        if not rows:
            raise InputError("compare_images: no seed is present for every item")
        by_seed = any(isinstance(v, Mapping) for v in images.values())
    else:
        names = [f"image {k}" for k in range(len(images))]
        per_item = [{0: img} for img in images]
        rows, by_seed = [0], False
    if labels is not None:
        if len(labels) != len(names):
            raise InputError(f"labels: {len(labels)} labels for {len(names)} items")
        names = [str(x) for x in labels]
    if len(names) < 2:
        raise InputError(f"compare_images: a similarity matrix needs at least two items ({len(names)} given)")
    if len(set(names)) != len(names):
        raise InputError("labels: every item needs its own label")
    metric_objs = build_metrics(metrics)
    load_metrics(metric_objs)

    ref = Reference()
    if isinstance(reference, bool):
        raise InputError("reference: an item index or label, or an image")
    if isinstance(reference, int):
        if not 0 <= reference < len(names):
            raise InputError(f"reference: item {reference} is not one of the {len(names)} items")
        ref = Reference("item", reference, names[reference])
    elif isinstance(reference, str) and reference in names:
        ref = Reference("item", names.index(reference), reference)
    elif reference is not None:
        image = _as_image(reference, "reference")
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
        label = Path(reference).stem if isinstance(reference, (str, os.PathLike)) else "reference"
        ref = Reference(
            "image", None, label, str(reference) if isinstance(reference, (str, os.PathLike)) else None, pil
        )

    cells = []
    for r, seed in enumerate(rows):
        for i, item in enumerate(per_item):
            image = _as_image(item[seed], f"{names[i]} image {seed}")
            pil = image if isinstance(image, Image.Image) else Image.fromarray(image)
            source = item[seed]
            file = str(source) if isinstance(source, (str, os.PathLike)) else None
            cells.append(Cell(item=i, row=r, image=pil, file=file))
    result = ProbeResult(
        spec=ProbeSpec(),
        items=[Checkpoint(name=n, label=n) for n in names],
        rows=list(rows) if by_seed else list(range(len(rows))),
        row_axis="Seed" if by_seed else ("Image" if len(rows) > 1 else ""),
        cells=cells,
        reference=ref,
        host="python",
    )
    result.environment["spec"] = "not known: images given from Python"
    return compare(result, metric_objs, alpha=alpha, replicates=replicates, margin=margin)


def probe_checkpoints(
    checkpoints: Sequence[str | os.PathLike[str]],
    *,
    spec: ProbeSpec | None = None,
    metrics: Sequence[str] | str = ("ssim",),
    reference: int | None = None,
    config_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    rng: str = "cpu",
    alpha: float = _lineage.DEFAULT_ALPHA,
    replicates: int = _lineage.DEFAULT_REPLICATES,
    margin: float = _lineage.DEFAULT_MARGIN,
    library: str | os.PathLike[str] | bool | Any = None,
    with_library: bool = False,
) -> ProbeResult:
    """Probe SD 1.x single-file checkpoints with the standalone runner and compare the images.

    ``spec`` defaults to the probe (empty prompt, Euler 256 steps, CFG 1, seed 1337, 512x512, clip
    skip 2); pass ``ProbeSpec(seeds=range(1, 9))`` for eight seeds. Needs the ``standalone`` extra
    (torch, diffusers) and the SD 1.x configuration folder (``config_dir``) when offline. Real
    weights only: a file that is not a checkpoint raises an error naming it.

    ``library``: the probe library (:mod:`cfgsim.library`) — a folder, ``True`` for the default
    folder (as the command line uses), or a :class:`cfgsim.library.ProbeLibrary`. Unlike the command
    line, the Python API uses **no library unless one is given** (the default ``None``). Images it
    holds for the same checkpoint content, settings and seed are taken from it, new ones are stored.
    ``with_library``: also compare every checkpoint it holds under the same settings ("(library)").
    """
    from cfgsim.compare import build_metrics
    from cfgsim.probe import run_probe
    from cfgsim.result import Reference
    from cfgsim.spec import ProbeSpec

    try:
        from cfgsim.standalone.checkpoint import check_checkpoint_path
        from cfgsim.standalone.host import StandaloneHost
        from cfgsim.standalone.pipeline import check_spec
    except ImportError as exc:
        raise InputError(
            f"probe_checkpoints needs the standalone extra: pip install 'cfgsim[standalone]' ({exc})"
        ) from None
    spec = spec or ProbeSpec()
    check_spec(spec)
    if library is None or library is False:
        probe_library = None
    elif hasattr(library, "lookup"):
        probe_library = library
    else:
        from cfgsim.library import open_library

        probe_library = open_library(None if library is True else library)
    if with_library and probe_library is None:
        raise InputError("with_library: needs a library (library=True or a folder)")
    paths = [check_checkpoint_path(p) for p in checkpoints]
    host = StandaloneHost(paths, config_dir=config_dir, device=device, rng=rng, quiet=True)
    ref = Reference()
    if reference is not None:
        if not 0 <= reference < len(paths):
            raise InputError(f"reference: checkpoint {reference} is not one of the {len(paths)} given")
        ref = Reference("item", reference, host.checkpoints()[reference].label)
    return run_probe(
        host,
        host.checkpoints(),
        spec,
        metrics=build_metrics(metrics),
        reference=ref,
        lineage_options={"alpha": alpha, "replicates": replicates, "margin": margin},
        library=probe_library,
        with_library=with_library,
    )


def read_result(path: str | os.PathLike[str]) -> ProbeResult:
    """The result stored in a cfgsim grid (PNG chunk, or the JSON beside a JPEG/WebP) or a JSON file."""
    from cfgsim.metadata import parse_json
    from cfgsim.metadata import read_result as _read_grid
    from cfgsim.result import ProbeResult

    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
        return ProbeResult.from_dict(parse_json(text, source=str(p)))
    return _read_grid(p)


def render_result(result: ProbeResult, *, overlays: bool = True) -> dict[str, Image.Image]:
    """The pictures of a result: ``grid``, ``tree`` (with a lineage) and ``heatmap-<metric>``."""
    from cfgsim.render import render_all

    return dict(render_all(result, overlays=overlays))


def save_result(
    result: ProbeResult, out_dir: str | os.PathLike[str], *, overlays: bool = True
) -> dict[str, Path]:
    """Write the grid (with its metadata), tree, heatmaps, ``result.json``, ``scores.csv`` and the
    cell images into ``out_dir``; returns ``{kind: path}``."""
    from cfgsim.output import write_outputs

    return write_outputs(result, out_dir, overlays=overlays)
