"""Single-file checkpoints with torch: loading tensors safely, and describing a file for the runner.

The torch-free part (hashes, the safetensors header, key names, the architecture) lives in
:mod:`cfgsim.checkpoints`, which both hosts and the weights view use; its names are importable
from here too.

Only two ways into a file exist here, both unable to run code from it: ``.safetensors`` through its
JSON header and the ``safetensors`` library, and ``.ckpt`` (a pickle) only through
``torch.load(weights_only=True)``, whose unpickler accepts tensors and plain containers and refuses
everything else. A checkpoint that needs more than that is refused with the reason, never loaded.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cfgsim.checkpoints import (  # noqa: F401 (re-exported: the runner's and the weights view's names)
    _CLIP_OLD_LAYOUT,
    CHECKPOINT_SUFFIXES,
    CLIP_PREFIX,
    MAX_HEADER_BYTES,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    UNET_PREFIX,
    VAE_PREFIX,
    CheckpointFileError,
    check_checkpoint_path,
    detect_architecture,
    file_sha256,
    legacy_model_hash,
    normalize_key,
    normalize_keys,
    read_safetensors_header,
    sniff_file_type,
)
from cfgsim.host import Checkpoint, CheckpointLoadError, HashCache

if TYPE_CHECKING:
    import torch


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
