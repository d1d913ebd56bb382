"""Image metadata codecs: PNG text chunks and the EXIF UserComment, read without decoding pixels.

The WebUI keeps infotext in the PNG ``parameters`` text chunk, and in JPEG/WebP in the EXIF
UserComment exactly as it writes it (``piexif.helper.UserComment.dump(text, encoding="unicode")``:
``b"UNICODE\\0"`` followed by UTF-16-BE).

Reading is bounded: only the chunks cfgsim needs (:data:`WANTED_CHUNKS`) are read and inflated,
each up to its own limit, the first of each keyword only; every other chunk is skipped unread. A
damaged chunk that cfgsim needs (truncated, bad CRC, bad compression, malformed iTXt header, too
large) is an :class:`~cfgsim.errors.InputError` naming the file, the chunk and the reason. JPEG and
WebP EXIF is found by walking the file's segments/chunks, never by opening the image, so no
process-wide Pillow setting is touched (the WebUI serves requests in threads).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from cfgsim.errors import InputError
from cfgsim.metadata.atomic import _reason

EXIF_IFD = 0x8769  # the Exif sub-IFD pointer in IFD0
EXIF_USER_COMMENT = 0x9286
# The 8-byte character-code prefixes of an EXIF UserComment (EXIF 2.3, table 9).
_UNICODE_PREFIX = b"UNICODE\0"
_ASCII_PREFIX = b"ASCII\0\0\0"
_UNDEFINED_PREFIX = b"\0" * 8


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_INFOTEXT_KEY = "parameters"  # the chunk the WebUI reads
PNG_JSON_KEY = "cfgsim"
#: The text chunks cfgsim reads, with the most each may hold once inflated. The JSON limit is
#: Pillow's own limit on all the text of a PNG (``MAX_TEXT_MEMORY``): a larger one would not open
#: in the WebUI either; infotext is a line of parameters.
WANTED_CHUNKS: dict[str, int] = {PNG_INFOTEXT_KEY: 1 << 20, PNG_JSON_KEY: 64 << 20}
_TEXT_KINDS = (b"tEXt", b"zTXt", b"iTXt")
_MAX_KEYWORD = 79  # PNG keywords are 1-79 bytes
_MAX_EXIF = 1 << 20  # a JPEG APP1 segment holds at most 64 KiB; WebP's EXIF chunk is not limited


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


def png_texts(path: str | Path, wanted: Mapping[str, int] = WANTED_CHUNKS) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of a PNG file whose keyword is in ``wanted``, each at most
    ``wanted[keyword]`` characters long once inflated; read without decoding any pixels.

    Pillow's reader decodes the whole image to reach chunks stored after the pixel data and refuses
    grids above its decompression-bomb limit, so the chunks are walked here directly. Only the first
    chunk of each wanted keyword counts; the walk stops once all are found or at IEND (a file cut
    short after a complete chunk keeps what was read).
    """
    path = Path(path)
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_SIGNATURE:
                raise InputError(f"{path}: not a PNG file")
            while len(found) < len(wanted):
                head = f.read(8)
                if len(head) < 8:
                    break
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    break
                if kind not in _TEXT_KINDS:
                    f.seek(length + 4, io.SEEK_CUR)
                    continue
                prefix = f.read(min(length, _MAX_KEYWORD + 1))
                keyword, nul, _ = prefix.partition(b"\0")
                name = keyword.decode("latin-1")
                if not nul or name not in wanted or name in found:
                    f.seek(length - len(prefix) + 4, io.SEEK_CUR)
                    continue
                found[name] = _read_text_chunk(
                    f, path, kind, name=name, prefix=prefix, length=length, limit=wanted[name]
                )
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from exc
    return found


def _read_text_chunk(
    f: BinaryIO, path: Path, kind: bytes, *, name: str, prefix: bytes, length: int, limit: int
) -> str:
    what = f"{path}: the {name!r} {kind.decode()} chunk"
    if length > limit + len(prefix) + 8:  # compressed text is never much longer than the text
        raise InputError(f"{what} holds {length} bytes, more than cfgsim reads ({limit})")
    data = prefix + f.read(length - len(prefix))
    crc = f.read(4)
    if len(data) < length or len(crc) < 4:
        raise InputError(f"{what} is cut short (the file is truncated)")
    if zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
        raise InputError(f"{what} is damaged (CRC mismatch)")
    try:
        return _text_value(kind, data[len(name) + 1 :], limit)
    except ValueError as exc:  # UnicodeDecodeError included
        raise InputError(f"{what} is malformed ({exc})") from None


def _text_value(kind: bytes, body: bytes, limit: int) -> str:
    """The text of a chunk after its keyword and NUL; ValueError saying what is wrong."""
    if kind == b"tEXt":
        text = body.decode("latin-1")
    elif kind == b"zTXt":  # compression method byte (0: zlib), then the compressed text
        if not body or body[0] != 0:
            raise ValueError("unknown compression method" if body else "no compression method")
        text = _inflate(body[1:], limit).decode("latin-1")
    else:  # iTXt: compression flag, method, language tag NUL, translated keyword NUL, UTF-8 text
        if len(body) < 2:
            raise ValueError("no compression flag and method")
        flag, method, rest = body[0], body[1], body[2:]
        if flag not in (0, 1) or (flag and method != 0):
            raise ValueError(f"unknown compression (flag {flag}, method {method})")
        _, nul, rest = rest.partition(b"\0")
        if not nul:
            raise ValueError("no language tag")
        _, nul, rest = rest.partition(b"\0")
        if not nul:
            raise ValueError("no translated keyword")
        raw = _inflate(rest, limit) if flag else rest
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text at byte {exc.start}") from None
    if len(text) > limit:
        raise ValueError(f"longer than cfgsim reads ({limit} characters)")
    return text


def _inflate(data: bytes, limit: int) -> bytes:
    """zlib ``data`` inflated to at most ``limit`` bytes (never more in memory)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit)
        if inflater.unconsumed_tail:
            raise ValueError(f"inflates to more than {limit} bytes")
        if not inflater.eof:
            raise ValueError("the compressed text is cut short")
    except zlib.error as exc:
        raise ValueError(f"bad compressed data: {exc}") from None
    return out


def _jpeg_exif(f: BinaryIO) -> bytes | None:
    """The APP1 Exif segment of a JPEG (``f`` just after its SOI marker), or None."""
    while True:
        marker = f.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        code = marker[1]
        if code == 0xFF:  # fill byte
            f.seek(-1, io.SEEK_CUR)
            continue
        if code in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: metadata comes before
            return None
        size = f.read(2)
        if len(size) < 2:
            return None
        length = struct.unpack(">H", size)[0] - 2
        if length < 0:
            return None
        if code == 0xE1:
            data = f.read(length)
            if data.startswith(b"Exif\0\0"):
                return data
        else:
            f.seek(length, io.SEEK_CUR)


def _webp_exif(f: BinaryIO) -> bytes | None:
    """The EXIF chunk of a WebP (``f`` just after its 12-byte RIFF header), or None."""
    while True:
        head = f.read(8)
        if len(head) < 8:
            return None
        kind, length = head[:4], struct.unpack("<I", head[4:])[0]
        if kind == b"EXIF":
            if length > _MAX_EXIF:
                raise ValueError(f"an EXIF chunk of {length} bytes is larger than cfgsim reads")
            return f.read(length)
        f.seek(length + (length & 1), io.SEEK_CUR)


def _comment_from_exif(data: bytes) -> str | None:
    exif = Image.Exif()
    exif.load(data)
    value = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    return (read_user_comment(value) or None) if value else None


def _exif_infotext(path: Path) -> str | None:
    """The infotext in a JPEG/WebP's EXIF UserComment (or a GIF comment), as the WebUI reads it."""
    try:
        with open(path, "rb") as f:
            start = f.read(12)
            if start[:2] == b"\xff\xd8":
                f.seek(2)
                data = _jpeg_exif(f)
            elif start[:4] == b"RIFF" and start[8:12] == b"WEBP":
                data = _webp_exif(f)
            else:
                return _other_comment(path)
        return _comment_from_exif(data) if data else None
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from exc
    except (ValueError, SyntaxError, struct.error, KeyError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: the EXIF data is malformed ({_reason(exc)})") from exc


def _other_comment(path: Path) -> str | None:
    """A GIF's comment (or another format's EXIF), through Pillow; only its header is read.

    Pillow's pixel limit applies (a decompression bomb is refused): changing it, or the warning
    filters, would change them for every thread of the process."""
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            comment = image.info.get("comment")
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path}: cannot read the image ({exc})") from exc
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        raise InputError(f"{path}: cannot read the image ({_reason(exc)})") from exc
    value = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT) if exif else None
    if value:
        return read_user_comment(value) or None
    if isinstance(comment, bytes):  # GIF
        return comment.decode("utf-8", errors="ignore") or None
    return None
