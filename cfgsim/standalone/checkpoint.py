"""Single-file checkpoints: safe reading, the WebUI's hashes, and the architecture from key names.

Only two ways into a file exist here, both unable to run code from it: ``.safetensors`` through its
JSON header and the ``safetensors`` library, and ``.ckpt`` (a pickle) only through
``torch.load(weights_only=True)``, whose unpickler accepts tensors and plain containers and refuses
everything else. A checkpoint that needs more than that is refused with the reason, never loaded.

Hashing and key inspection of ``.safetensors`` files need no torch: the header is plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, HashCache

if TYPE_CHECKING:
    import torch

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


def read_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's (normalised) name and shape. ``.ckpt`` files are loaded (memory-mapped) for it."""
    p = Path(path)
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        return normalize_keys(read_safetensors_header(p))  # type: ignore[return-value]
    state = load_state_dict(p)
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def describe_checkpoint(
    path: str | os.PathLike[str], *, full_hash: bool = True, hash_cache: HashCache | None = None
) -> Checkpoint:
    """A :class:`Checkpoint` for a file: label = file stem, both hashes, architecture from its keys.

    Both hashes come from one read of the file, cached by path + size + mtime
    (:class:`cfgsim.host.HashCache`, by default in the user's cache folder), so an unchanged
    multi-GB checkpoint is not read again on the next run. ``full_hash=False``: the legacy hash only.
    A file whose content cannot be read is still described (architecture ``unknown``): the run loop
    then reports the reason on its cells when :meth:`generate` fails to load it.
    """
    p = check_checkpoint_path(path)
    if full_hash:
        hashes = (hash_cache if hash_cache is not None else HashCache()).hashes(p)
        legacy, sha256 = hashes.legacy, hashes.sha256
    else:
        legacy, sha256 = legacy_model_hash(p), None
    try:
        architecture = detect_architecture(read_shapes(p))
    except CheckpointLoadError:
        architecture = "unknown"
    return Checkpoint(
        name=str(p),
        label=p.stem,
        file=str(p.resolve()),
        model_hash=legacy,
        sha256=sha256,
        architecture=architecture,
    )


def load_state_dict(
    path: str | os.PathLike[str], *, keys: Iterable[str] | None = None, prefixes: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (names normalised), optionally only ``keys`` / those under ``prefixes``.

    ``.safetensors`` reads only the requested tensors. ``.ckpt`` goes through
    ``torch.load(weights_only=True)``: a pickle that needs any other object (code, a class of a
    training framework) is refused with :class:`CheckpointFileError`.
    """
    import torch

    p = Path(path)
    wanted = set(keys) if keys is not None else None
    prefixes = tuple(prefixes)

    def keep(key: str) -> bool:
        if wanted is None and not prefixes:
            return True
        return (wanted is not None and key in wanted) or (bool(prefixes) and key.startswith(prefixes))

    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError, safe_open

        read_safetensors_header(p)  # a clear message for files that are not safetensors at all
        out: dict[str, torch.Tensor] = {}
        try:
            with safe_open(str(p), framework="pt", device="cpu") as file:
                for raw in file.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    key = normalize_key(raw)
                    if keep(key):
                        out[key] = file.get_tensor(raw)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise CheckpointFileError(f"{p}: damaged safetensors file ({exc})") from exc
        return out

    state = _torch_load_weights_only(p)
    if not isinstance(state, Mapping):
        raise CheckpointFileError(f"{p}: not a checkpoint (the pickle holds a {type(state).__name__})")
    tensors = normalize_keys(state)
    return {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and keep(k)}


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


def _torch_load_weights_only(path: Path) -> object:
    import pickle
    import zipfile

    import torch

    actual = sniff_file_type(path)
    if actual is not None:
        raise CheckpointFileError(f"{path}: not a checkpoint: the file is {actual}")
    try:
        try:
            # mmap keeps a 4 GB file's tensors on disk until they are used (zip-format files only).
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses globals it does not know: the file wants to build objects (or run
        # code) while loading. Say which, and what to do, without trying anything less safe.
        first = str(exc).strip().splitlines()
        detail = next((line for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise CheckpointFileError(
            f"{path}: refused: this .ckpt needs more than tensors to load (a pickle that can run code"
            f"{'; ' + detail.strip() if detail else ''}). Convert it to .safetensors with a tool you trust."
        ) from exc
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, RuntimeError, struct.error) as exc:
        raise CheckpointFileError(f"{path}: not a readable .ckpt file ({type(exc).__name__}: {exc})") from exc
