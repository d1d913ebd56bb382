"""The result's versioned JSON document and the grid's WebUI infotext."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from cfgsim.errors import InputError
from cfgsim.result import SCHEMA, SCHEMA_VERSION, ProbeResult

# Fields every cfgsim document has; parse_json names the first one missing.
_REQUIRED: tuple[tuple[str, type], ...] = (
    ("spec", dict),
    ("items", list),
    ("rows", list),
    ("cells", list),
)


class MetadataError(InputError):
    """A file's cfgsim metadata is missing, malformed, foreign, or from a newer cfgsim."""


# -- infotext and JSON --------------------------------------------------------------------------


def _hash_text(item: Any) -> str:
    # The sha256-based short hash the WebUI's cells write; the legacy 8-hex hash (64 KiB at 1 MiB)
    # collides (every file under 1 MiB gets e3b0c442), so it is used only where no sha256 is known.
    return (item.sha256[:10] if item.sha256 else "") or item.model_hash or "unknown"


def grid_infotext(result: ProbeResult) -> str:
    """The grid's WebUI ``parameters``: the probe spec plus the compared items and the reference.

    ``Compared``/``Compared hashes``/``Reference``/``Lineage`` are per-grid keys that
    :meth:`cfgsim.spec.ProbeSpec.from_infotext` leaves out of the spec, so the infotext reads back
    to the same spec (and "Send to txt2img" restores the probe settings).
    """
    extra: dict[str, object] = {}
    if result.items:
        extra["Compared"] = ", ".join(result.labels)
        if any(item.model_hash or item.sha256 for item in result.items):
            extra["Compared hashes"] = ", ".join(_hash_text(item) for item in result.items)
    if result.reference.kind in ("item", "image") and result.reference.label:
        extra["Reference"] = result.reference.label
    if result.lineage is not None and result.lineage.summary():
        # One line for PNG Info: each item's nearest relative and band (the JSON has the rest).
        seeds = len(result.lineage.rows_used)
        head = f"{result.lineage.metric.upper()}, {seeds} seed{'s' if seeds != 1 else ''}"
        extra["Lineage"] = f"{head}: {result.lineage.summary()}"
    return str(result.spec.to_infotext(extra=extra))


def _json_default(value: object) -> object:
    """JSON for the non-JSON values a result may hold (numpy scalars and arrays, paths, tuples)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(result: ProbeResult, *, grid_layout: dict[str, Any] | None = None) -> str:
    """The versioned JSON of ``result`` (compact, key order as written, UTF-8 text, no NaN);
    ``grid_layout``: the layout of the grid saved with it, when the result does not hold it."""
    document = result.to_dict()
    if grid_layout is not None:
        document["grid_layout"] = grid_layout
    try:
        return json.dumps(
            document,
            sort_keys=False,
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
            default=_json_default,
        )
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"the result cannot be written as cfgsim metadata ({exc})") from exc


def parse_json(text: str | bytes, *, source: str = "cfgsim metadata") -> dict[str, Any]:
    """The cfgsim document in ``text``, checked: JSON, ours, a schema version we read, complete.

    ``source`` names where the text came from (a file) in the error messages.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MetadataError(
                f"{source}: the cfgsim metadata is not valid JSON (not UTF-8: {exc})"
            ) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(
            f"{source}: the cfgsim metadata is not valid JSON "
            f"({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from exc
    except RecursionError as exc:
        raise MetadataError(f"{source}: the cfgsim metadata is not valid JSON (nested too deeply)") from exc
    if not isinstance(data, dict):
        raise MetadataError(f"{source}: is not cfgsim metadata (a JSON {type(data).__name__}, not an object)")
    schema = data.get("schema")
    if schema is None:
        raise MetadataError(f"{source}: is not cfgsim metadata (no 'schema' field)")
    if schema != SCHEMA:
        raise MetadataError(f"{source}: is not cfgsim metadata (schema {schema!r}, expected {SCHEMA!r})")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise MetadataError(f"{source}: cfgsim metadata with an invalid 'schema_version' ({version!r})")
    if version > SCHEMA_VERSION:
        raise MetadataError(
            f"{source}: was written by a newer cfgsim (schema {version}, this reads up to {SCHEMA_VERSION}): "
            "upgrade cfgsim"
        )
    for name, kind in _REQUIRED:
        if name not in data:
            raise MetadataError(f"{source}: the cfgsim metadata has no '{name}' field")
        if not isinstance(data[name], kind):
            raise MetadataError(
                f"{source}: the cfgsim metadata's '{name}' is a {type(data[name]).__name__}, "
                f"not a {kind.__name__}"
            )
    for k, item in enumerate(data["items"]):
        if not isinstance(item, dict) or "name" not in item:
            raise MetadataError(f"{source}: the cfgsim metadata's 'items[{k}]' has no 'name'")
    n_items, n_rows = len(data["items"]), len(data["rows"])
    for k, cell in enumerate(data["cells"]):
        if not isinstance(cell, dict):
            raise MetadataError(f"{source}: the cfgsim metadata's 'cells[{k}]' is not an object")
        for key, limit in (("item", n_items), ("row", n_rows)):
            value = cell.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MetadataError(
                    f"{source}: the cfgsim metadata's 'cells[{k}].{key}' is missing or not a number"
                )
            if not 0 <= value < limit:
                raise MetadataError(
                    f"{source}: the cfgsim metadata's 'cells[{k}].{key}' ({value}) is out of range"
                )
    scores = data.get("scores", {})
    if not isinstance(scores, dict):
        raise MetadataError(f"{source}: the cfgsim metadata's 'scores' is not an object")
    for name, entry in scores.items():
        if not isinstance(entry, dict) or "metric" not in entry:
            raise MetadataError(f"{source}: the cfgsim metadata's 'scores.{name}' has no 'metric'")
    return data


def result_from_document(payload: dict[str, Any], *, source: str = "cfgsim metadata") -> ProbeResult:
    """The :class:`ProbeResult` of a document checked by :func:`parse_json`; whatever is wrong
    inside it (a spec field of the wrong type, a damaged matrix) is a :class:`MetadataError` that
    names ``source`` and the reason."""
    try:
        return ProbeResult.from_dict(payload)
    except InputError as exc:
        raise MetadataError(f"{source}: the cfgsim metadata holds an invalid probe spec ({exc})") from exc
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
        raise MetadataError(
            f"{source}: the cfgsim metadata is damaged ({type(exc).__name__}: {exc})"
        ) from exc
