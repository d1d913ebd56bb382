"""Atomic file writing: into a temporary file in the target's folder, then renamed over it.

A crash or a full disk never leaves half a file and never damages the previous one. Failures are
:class:`cfgsim.errors.InputError` naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from PIL import Image

from cfgsim.errors import InputError

# Largest sides the encoders accept: beyond these Pillow fails with an unhelpful "encoder error".
_MAX_SIDE = {"JPEG": 65_500, "WEBP": 16_383}
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


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
