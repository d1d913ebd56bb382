"""A grid file with its metadata: saved atomically, read back without decoding pixels.

PNG keeps the infotext and the JSON as text chunks. JPEG and WebP keep only the infotext (EXIF),
so the JSON goes to a sidecar ``<stem>.cfgsim.json``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from cfgsim.errors import InputError
from cfgsim.metadata.atomic import _format_for, _reason, atomic_save_image, atomic_write_bytes
from cfgsim.metadata.png import (
    PNG_INFOTEXT_KEY,
    PNG_JSON_KEY,
    PNG_SIGNATURE,
    WANTED_CHUNKS,
    _exif_infotext,
    exif_with_infotext,
    png_texts,
)
from cfgsim.metadata.schema import MetadataError, grid_infotext, parse_json, result_from_document, to_json
from cfgsim.result import ProbeResult

SIDECAR_SUFFIX = ".cfgsim.json"
_PILLOW_MAX_INFLATED = 1024 * 1024 - 1024


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """Where the JSON of a JPEG/WebP grid goes: ``grid.jpg`` → ``grid.cfgsim.json``."""
    path = Path(path)
    return path.with_name(path.stem + SIDECAR_SUFFIX)


def save_grid(
    image: Image.Image,
    path: str | os.PathLike[str],
    result: ProbeResult,
    *,
    extra_chunks: Mapping[str, str] | None = None,
    quality: int = 92,
) -> list[Path]:
    """Save a grid with its metadata; returns the paths written.

    PNG: text chunks ``parameters`` (:func:`grid_infotext`), ``cfgsim`` (:func:`to_json`) and
    ``extra_chunks``. JPEG/WebP: the infotext in EXIF (as the WebUI writes it) and the JSON in
    :func:`sidecar_path` (``extra_chunks`` have no place there and are left out). Each file is
    written atomically; the pair is not (a failure writing the sidecar leaves the new image).
    """
    path = Path(path)
    fmt = _format_for(path)
    infotext = grid_infotext(result)
    # render_grid leaves the grid's cell boxes on the image: they go with the result.
    layout = image.info.get("cfgsim_grid_layout")
    payload = to_json(result, grid_layout=layout if isinstance(layout, dict) else None)
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in (extra_chunks or {}).items():
            if key not in (PNG_INFOTEXT_KEY, PNG_JSON_KEY):
                info.add_text(key, str(value))
        info.add_text(PNG_INFOTEXT_KEY, infotext)
        # Compressed (zTXt/iTXt) the matrices shrink ~5x, but Pillow (so the WebUI) refuses to
        # open a PNG whose compressed text inflates beyond 1 MiB: bigger documents stay plain.
        size = len(payload.encode("utf-8"))
        info.add_text(PNG_JSON_KEY, payload, zip=4096 < size < _PILLOW_MAX_INFLATED)
        return [atomic_save_image(image, path, format="PNG", pnginfo=info)]
    if fmt not in ("JPEG", "WEBP"):
        raise InputError(f"{path}: a grid is saved as .png, .jpg or .webp, not {path.suffix!r}")
    exif = exif_with_infotext(infotext)
    written = [atomic_save_image(image, path, format=fmt, exif=exif, quality=quality)]
    written.append(atomic_write_bytes(sidecar_path(path), payload.encode("utf-8")))
    return written


def read_metadata(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any] | None]:
    """(infotext, cfgsim document) of an image file; either is None when the file has none.

    The infotext comes from the PNG ``parameters`` chunk or the EXIF UserComment; the document
    from the PNG ``cfgsim`` chunk or the sidecar ``<stem>.cfgsim.json``, and is checked by
    :func:`parse_json` (a damaged one raises :class:`MetadataError`).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            is_png = f.read(8) == PNG_SIGNATURE
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from exc

    raw: str | None = None
    if is_png:
        texts = png_texts(path)
        infotext = texts.get(PNG_INFOTEXT_KEY) or None
        raw = texts.get(PNG_JSON_KEY)
    else:
        infotext = _exif_infotext(path)

    payload = None
    if raw is not None:
        payload = parse_json(raw, source=str(path))
    else:
        sidecar = sidecar_path(path)
        if sidecar.is_file():
            limit = WANTED_CHUNKS[PNG_JSON_KEY]
            try:
                with open(sidecar, "rb") as f:
                    data = f.read(limit + 1)
            except OSError as exc:
                raise InputError(f"{sidecar}: cannot read ({_reason(exc)})") from exc
            if len(data) > limit:
                raise MetadataError(f"{sidecar}: is larger than cfgsim reads ({limit} bytes)")
            payload = parse_json(data, source=str(sidecar))
    return infotext, payload


def read_result(path: str | os.PathLike[str]) -> ProbeResult:
    """The :class:`ProbeResult` stored with a grid (scores and matrices; no cell images)."""
    path = Path(path)
    _, payload = read_metadata(path)
    if payload is None:
        raise MetadataError(
            f"{path}: has no cfgsim metadata (no '{PNG_JSON_KEY}' PNG chunk and no {sidecar_path(path).name})"
        )
    return result_from_document(payload, source=str(path))
