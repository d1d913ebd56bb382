"""Files: the grid's WebUI infotext and cfgsim JSON, written atomically and read back.

A saved grid carries two things:

- ``parameters``: the WebUI infotext of the probe (prompt, negative, Steps, Sampler, CFG scale,
  Seed, Size, Clip skip...) plus which items were compared. The WebUI's PNG Info tab shows it and
  "Send to txt2img" restores the probe settings from it.
- ``cfgsim``: the versioned JSON of :meth:`cfgsim.result.ProbeResult.to_dict` (items, hashes,
  scores, matrices), from which :func:`read_result` rebuilds the result.

PNG keeps both as text chunks. JPEG and WebP keep only the infotext, in the EXIF UserComment
exactly as the WebUI writes it (``piexif.helper.UserComment.dump(text, encoding="unicode")``:
``b"UNICODE\\0"`` followed by UTF-16-BE), so the JSON goes to a sidecar ``<stem>.cfgsim.json``.

Every file is written atomically: into a temporary file in the target's folder, then renamed
over the target, so a crash or a full disk never leaves half a grid and never damages the
previous one. Failures are :class:`cfgsim.errors.InputError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, PngImagePlugin

from cfgsim.errors import InputError
from cfgsim.result import SCHEMA, SCHEMA_VERSION, ProbeResult

PNG_INFOTEXT_KEY = "parameters"  # the chunk the WebUI reads
PNG_JSON_KEY = "cfgsim"
SIDECAR_SUFFIX = ".cfgsim.json"

EXIF_IFD = 0x8769  # the Exif sub-IFD pointer in IFD0
EXIF_USER_COMMENT = 0x9286
# The 8-byte character-code prefixes of an EXIF UserComment (EXIF 2.3, table 9).
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_UNDEFINED_PREFIX = b"\0" * 8

# Largest sides the encoders accept: beyond these Pillow fails with an unhelpful "encoder error".
_MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383}
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

# Fields every cfgsim document has; parse_json names the first one missing.
_REQUIRED: tuple[tuple[str, type], ...] = (
    ("spec", dict),
    ("items", list),
    ("rows", list),
    ("cells", list),
)

# Pillow refuses text chunks over 1 MB (a guard against decompression bombs); a result with many
# items and seeds carries bigger matrices, so our own chunk reader allows up to this.
_MAX_TEXT_CHUNK = 256 * 1024 * 1024
_PILLOW_MAX_INFLATED = 1024 * 1024 - 1024


class MetadataError(InputError):
    """A file's cfgsim metadata is missing, malformed, foreign, or from a newer cfgsim."""


# -- infotext and JSON --------------------------------------------------------------------------


def _hash_text(item: Any) -> str:
    return item.model_hash or (item.sha256[:10] if item.sha256 else "") or "unknown"


def grid_infotext(result: ProbeResult) -> str:
    """The grid's WebUI ``parameters``: the probe spec plus the compared items and the reference.

    ``Compared``/``Compared hashes``/``Reference`` are per-grid keys that
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


def to_json(result: ProbeResult) -> str:
    """The versioned JSON of ``result`` (compact, key order as written, UTF-8 text, no NaN)."""
    try:
        return json.dumps(
            result.to_dict(),
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


# -- atomic writing -----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    """The mode a plainly created file would get (0666 minus the umask); mkstemp makes 0600."""
    # Linux reports the umask in /proc; os.umask can only read it by setting it, which would
    # briefly change it for every thread of the process (the WebUI serves requests in threads).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """A binary file object that becomes ``path`` when the block ends without an exception.

    The temporary file lives in the target's folder (so the final rename stays on one file
    system and is atomic) and is removed on any failure; the previous file at ``path`` is then
    untouched. OS errors become :class:`InputError` naming the path and the reason.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{path}: cannot create the folder {folder} ({_reason(exc)})") from exc
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file name")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{path}: cannot write ({_reason(exc)})") from exc
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        try:
            mode = path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode()
            os.chmod(tmp, mode)
        except OSError:
            pass  # a file system without modes (FAT, some network shares): keep what mkstemp made
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write ({_reason(exc)})") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (all or nothing). Returns the path."""
    with _atomic_file(path) as handle:
        handle.write(data)
    return Path(path)


def _format_for(path: Path, fmt: str | None = None) -> str:
    if fmt:
        return fmt.upper()
    ext = path.suffix.lower()
    fmt = _FORMATS.get(ext) or Image.registered_extensions().get(ext)
    if fmt is None:
        raise InputError(
            f"{path}: unknown image format {ext or '(no extension)'!r} (use .png, .jpg or .webp)"
        )
    return fmt


def atomic_save_image(image: Image.Image, path: str | os.PathLike[str], **save_kwargs: Any) -> Path:
    """``image.save(path, **save_kwargs)``, atomically; the format comes from the extension unless
    ``format=`` is given. Encoder errors (an image too large for JPEG/WebP) become InputError."""
    path = Path(path)
    fmt = _format_for(path, save_kwargs.pop("format", None))
    limit = _MAX_SIDE.get(fmt)
    if limit is not None and max(image.size) > limit:
        raise InputError(
            f"{path}: {image.width}x{image.height} px is too large for {fmt} (at most {limit} px a side); "
            "save it as .png"
        )
    if fmt in ("JPEG", "WEBP") and image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    with _atomic_file(path) as handle:
        try:
            image.save(handle, format=fmt, **save_kwargs)
        except (ValueError, SyntaxError) as exc:
            raise InputError(f"{path}: cannot encode the image as {fmt} ({exc})") from exc
    return path


# -- grids --------------------------------------------------------------------------------------


def user_comment(text: str) -> bytes:
    """An EXIF UserComment the way the WebUI writes infotext (piexif's ``encoding="unicode"``)."""
    return _UNICODE_PREFIX + text.encode("utf-16-be")


def read_user_comment(data: bytes | str) -> str:
    """Text of an EXIF UserComment (unicode, ASCII or undefined code), as the WebUI reads it."""
    if isinstance(data, str):
        return data
    prefix, body = data[:8], data[8:]
    if prefix == _UNICODE_PREFIX:
        return body.decode("utf-16-be", errors="replace")
    if prefix in (_ASCII_PREFIX, _UNDEFINED_PREFIX):
        return body.decode("ascii", errors="replace").rstrip("\0")
    return data.decode("utf-8", errors="ignore")


def exif_with_infotext(text: str) -> bytes:
    """An APP1 EXIF block holding ``text`` as the Exif IFD's UserComment, byte for byte what
    ``piexif.dump({"Exif": {UserComment: ...}})`` gives the WebUI.

    Built by hand: Pillow's ``Image.Exif`` writes an unknown bytes tag as BYTE, which piexif
    reads as a tuple of ints and the WebUI's PNG Info then fails on; UserComment must be
    UNDEFINED (type 7).
    """
    comment = user_comment(text)
    # Big-endian TIFF: header, IFD0 with one entry (the Exif IFD pointer), the Exif IFD with one
    # entry (UserComment, pointing at the data after it), the data.
    ifd0 = 8
    exif_ifd = ifd0 + 2 + 12 + 4
    data_at = exif_ifd + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", EXIF_IFD, 4, 1, exif_ifd) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", EXIF_USER_COMMENT, 7, len(comment), data_at)
    tiff += struct.pack(">I", 0) + comment
    return b"Exif\x00\x00" + tiff


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
    payload = to_json(result)
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


# -- reading ------------------------------------------------------------------------------------


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_texts(path: Path) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file, read without decoding any pixels.

    Pillow's reader decodes the whole image to reach chunks stored after the pixel data, refuses
    grids above its decompression-bomb limit and text chunks over 1 MB; a big probe grid hits all
    three, so the chunks are walked here directly.
    """
    texts: dict[str, str] = {}
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise InputError(f"{path}: not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                break  # truncated after the last complete chunk: keep what was read
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"tEXt", b"zTXt", b"iTXt"):
                if length > _MAX_TEXT_CHUNK:
                    raise InputError(f"{path}: a {kind.decode()} chunk of {length} bytes is too large")
                data = f.read(length)
                f.seek(4, os.SEEK_CUR)  # CRC
                with contextlib.suppress(ValueError, zlib.error, UnicodeDecodeError):
                    key, value = _png_text(kind, data)
                    texts.setdefault(key, value)
            elif kind == b"IEND":
                break
            else:
                f.seek(length + 4, os.SEEK_CUR)
    return texts


def _png_text(kind: bytes, data: bytes) -> tuple[str, str]:
    key, _, rest = data.partition(b"\0")
    name = key.decode("latin-1")
    if kind == b"tEXt":
        return name, rest.decode("latin-1")
    if kind == b"zTXt":  # compression method byte, then zlib data
        return name, _inflate(rest[1:]).decode("latin-1")
    # iTXt: compression flag, method, language tag \0, translated keyword \0, text (UTF-8)
    flag, rest = rest[0], rest[2:]
    _, _, rest = rest.partition(b"\0")
    _, _, rest = rest.partition(b"\0")
    return name, (_inflate(rest) if flag else rest).decode("utf-8")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, _MAX_TEXT_CHUNK)
    if inflater.unconsumed_tail:
        raise ValueError("decompressed text too large")
    return out


def _exif_infotext(path: Path) -> str | None:
    """The infotext in a JPEG/WebP's EXIF UserComment (or a GIF comment), as the WebUI reads it."""
    try:
        with warnings.catch_warnings():
            # Only the header is read, never the pixels: the decompression-bomb size guard (which
            # a big grid trips) does not apply.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                image = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = old
        with image:
            exif = image.getexif()
            comment = image.info.get("comment")
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InputError(f"{path}: cannot read the image ({_reason(exc)})") from exc
    if exif:
        value = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        if value:
            return read_user_comment(value) or None
    if isinstance(comment, bytes):  # GIF
        return comment.decode("utf-8", errors="ignore") or None
    return None


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
        try:
            texts = _png_texts(path)
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({_reason(exc)})") from exc
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
            try:
                data = sidecar.read_bytes()
            except OSError as exc:
                raise InputError(f"{sidecar}: cannot read ({_reason(exc)})") from exc
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
    try:
        return ProbeResult.from_dict(payload)
    except InputError as exc:
        raise MetadataError(f"{path}: the cfgsim metadata holds an invalid probe spec ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise MetadataError(f"{path}: the cfgsim metadata is damaged ({type(exc).__name__}: {exc})") from exc
