"""Checkpoint files without torch: the WebUI's hashes, the safetensors header, key names, the
architecture, and what a file that should be a checkpoint really is.

Both hosts use these (the WebUI adapter to skip non-SD1 checkpoints before loading them, the
standalone runner to describe its files), and the weights view: nothing here imports torch or
reads more of a file than its header (or, for the hashes, its bytes). Loading tensors is
:mod:`cfgsim.standalone.checkpoint`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from cfgsim.errors import InputError
from cfgsim.host import CheckpointLoadError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# A safetensors header is JSON with one small entry per tensor; real SD checkpoints have ~1-2 MB.
# Anything far larger is a damaged or hostile file, refused before it is read into memory.
MAX_HEADER_BYTES = 100 * 1024 * 1024

# Key prefixes of the original (ldm/CompVis) SD 1.x single-file layout.
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# Old SD 1.x files keep the CLIP text model without its "text_model." level; the WebUI renames
# these three prefixes on load (sd_models.checkpoint_dict_replacements_sd1), so do we.
_CLIP_OLD_LAYOUT = {
    "cond_stage_model.transformer.embeddings.": CLIP_PREFIX + "embeddings.",
    "cond_stage_model.transformer.encoder.": CLIP_PREFIX + "encoder.",
    "cond_stage_model.transformer.final_layer_norm.": CLIP_PREFIX + "final_layer_norm.",
}


class CheckpointFileError(CheckpointLoadError):
    """The file cannot be read as a checkpoint (damaged, wrong format, unsafe pickle)."""


# -- hashes --------------------------------------------------------------------------------------


def legacy_model_hash(path: str | os.PathLike[str]) -> str:
    """The WebUI's old 8-hex "Model hash": sha256 of the 64 KiB at offset 1 MiB (``sd_models.model_hash``).

    Files shorter than 1 MiB hash the empty string, exactly as the WebUI's seek-then-read does.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        file.seek(0x100000)
        digest.update(file.read(0x10000))
    return digest.hexdigest()[:8]


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """The full sha256 of a file (the WebUI's ``shorthash`` is its first 10 hex digits)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# -- keys and shapes -----------------------------------------------------------------------------


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a ``.safetensors`` header, without torch and without the data."""
    name = os.fspath(path)
    actual = sniff_file_type(path)
    if actual is not None:
        raise CheckpointFileError(f"{name}: not a checkpoint: the file is {actual}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            raw_len = file.read(8)
            if len(raw_len) < 8:
                raise CheckpointFileError(f"{name}: not a safetensors file (shorter than its header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len < 2 or header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointFileError(f"{name}: not a safetensors file (header length {header_len})")
            header = json.loads(file.read(header_len))
    except OSError as exc:
        raise CheckpointFileError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFileError(f"{name}: not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointFileError(f"{name}: not a safetensors file (header is not a JSON object)")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise CheckpointFileError(f"{name}: damaged safetensors header (entry {key!r})")
        shapes[key] = tuple(int(n) for n in entry["shape"])
    return shapes


def normalize_keys(state: Mapping[str, object]) -> dict[str, object]:
    """The checkpoint's tensors under the names the WebUI uses after loading.

    Unwraps a Lightning-style ``{"state_dict": {...}}`` and renames the old CLIP layout (see
    ``_CLIP_OLD_LAYOUT``); everything else is kept as it is.
    """
    inner = state.get("state_dict") if isinstance(state, Mapping) else None
    if isinstance(inner, Mapping):
        state = inner
    return {normalize_key(key): value for key, value in state.items() if isinstance(key, str)}


def normalize_key(key: str) -> str:
    """One tensor name as the WebUI uses it after loading (the old CLIP layout renamed)."""
    for old, new in _CLIP_OLD_LAYOUT.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def detect_architecture(shapes: Mapping[str, Iterable[int]]) -> str:
    """``sd1``, ``sd2``, ``sdxl``, ``sdxl-refiner``, ``sd3``, ``flux`` or ``unknown`` from key names.

    The same tests as the WebUI's ``sd_models_config.guess_model_config_from_state_dict``: SDXL has
    two text encoders under ``conditioner.embedders.*`` (the refiner only the OpenCLIP one, width
    1280; an SGM-format SD 2.1 Turbo has width 1024 there); SD 2.x has an OpenCLIP text encoder under
    ``cond_stage_model.model.*`` (context width 1024); SD 1.x has the HF CLIP text model under
    ``cond_stage_model.transformer.*`` beside an ldm UNet. SD 2.x v-prediction cannot be told from
    key names alone (the WebUI runs the UNet once); both kinds are reported as ``sd2``.
    """
    keys = set(shapes)
    if "conditioner.embedders.1.model.ln_final.weight" in keys:
        return "sdxl"
    if "conditioner.embedders.0.model.ln_final.weight" in keys:
        width = tuple(shapes["conditioner.embedders.0.model.ln_final.weight"])
        return "sd2" if width == (1024,) else "sdxl-refiner"
    if any(k.startswith(("double_blocks.", UNET_PREFIX + "double_blocks.")) for k in keys):
        return "flux"
    if any(k.startswith(UNET_PREFIX + "joint_blocks.") for k in keys):
        return "sd3"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    has_unet = UNET_PREFIX + "input_blocks.0.0.weight" in keys
    has_clip = any(k.startswith("cond_stage_model.transformer.") for k in keys)
    if has_unet and has_clip:
        return "sd1"
    return "unknown"


# -- loading -------------------------------------------------------------------------------------


def check_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path if it names a readable checkpoint file; an :class:`InputError` otherwise.

    Run before a probe starts, so that a typo fails in a second with one clear line instead of
    becoming a failed grid column after the other models ran.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a folder, not a checkpoint file")
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise InputError(f"{p}: not a checkpoint file (expected {', '.join(CHECKPOINT_SUFFIXES)})")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: cannot be read (permission denied)")
    return p


# What a file that should be a checkpoint often really is: its first bytes → a name for the user.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"version https://git-lfs", "a Git LFS pointer (the real file was never downloaded)"),
    (b"<!DOCTYPE", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
)


def sniff_file_type(path: str | os.PathLike[str]) -> str | None:
    """What a file is by its first bytes, when it is something that is clearly not a checkpoint."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, name in _MAGIC:
        if head.lower().startswith(magic.lower()) if magic.startswith(b"<") else head.startswith(magic):
            return name
    if head.lstrip()[:1] in (b"{", b"[") and b"\x00" not in head:
        return "a JSON or text file"
    return None
