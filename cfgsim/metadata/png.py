"""Image metadata codecs: PNG text chunks and the EXIF UserComment, read without decoding pixels.

The WebUI keeps infotext in the PNG ``parameters`` text chunk, and in JPEG/WebP in the EXIF
UserComment exactly as it writes it (``piexif.helper.UserComment.dump(text, encoding="unicode")``:
``b"UNICODE\\0"`` followed by UTF-16-BE).
"""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image

from cfgsim.errors import InputError
from cfgsim.metadata.atomic import _reason

EXIF_IFD = 0x8769  # the Exif sub-IFD pointer in IFD0
EXIF_USER_COMMENT = 0x9286
# The 8-byte character-code prefixes of an EXIF UserComment (EXIF 2.3, table 9).
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_UNDEFINED_PREFIX = b"\0" * 8

# Pillow refuses text chunks over 1 MB (a guard against decompression bombs); a result with many
# items and seeds carries bigger matrices, so our own chunk reader allows up to this.
_MAX_TEXT_CHUNK = 256 * 1024 * 1024


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
