"""Files: the grid's WebUI infotext and cfgsim JSON, written atomically and read back.

A saved grid carries two things:

- ``parameters``: the WebUI infotext of the probe (prompt, negative, Steps, Sampler, CFG scale,
  Seed, Size, Clip skip...) plus which items were compared. The WebUI's PNG Info tab shows it and
  "Send to txt2img" restores the probe settings from it.
- ``cfgsim``: the versioned JSON of :meth:`cfgsim.result.ProbeResult.to_dict` (items, hashes,
  scores, matrices), from which :func:`read_result` rebuilds the result.

One job per module: :mod:`.atomic` (all-or-nothing writes), :mod:`.png` (PNG text chunks and
the EXIF UserComment, bounded reading), :mod:`.schema` (the JSON document and the infotext),
:mod:`.store` (a grid file with its metadata: save and read back).
"""

from __future__ import annotations

from cfgsim.metadata.atomic import atomic_save_image, atomic_write_bytes
from cfgsim.metadata.png import (
    EXIF_IFD,
    EXIF_USER_COMMENT,
    PNG_SIGNATURE,
    WANTED_CHUNKS,
    exif_with_infotext,
    png_texts,
    read_user_comment,
    user_comment,
)
from cfgsim.metadata.schema import MetadataError, grid_infotext, parse_json, result_from_document, to_json
from cfgsim.metadata.store import (
    PNG_INFOTEXT_KEY,
    PNG_JSON_KEY,
    SIDECAR_SUFFIX,
    read_metadata,
    read_result,
    save_grid,
    sidecar_path,
)

__all__ = [
    "EXIF_IFD",
    "EXIF_USER_COMMENT",
    "PNG_INFOTEXT_KEY",
    "PNG_JSON_KEY",
    "PNG_SIGNATURE",
    "SIDECAR_SUFFIX",
    "WANTED_CHUNKS",
    "MetadataError",
    "atomic_save_image",
    "atomic_write_bytes",
    "exif_with_infotext",
    "grid_infotext",
    "parse_json",
    "png_texts",
    "read_metadata",
    "read_result",
    "read_user_comment",
    "result_from_document",
    "save_grid",
    "sidecar_path",
    "to_json",
    "user_comment",
]
