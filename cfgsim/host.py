"""The host interface: what the probe's run loop needs from whatever makes the images.

A host lists checkpoints, generates one probe image for (checkpoint, spec, seed), reports progress
and says when the user asked to stop. The WebUI script (in-process), the standalone diffusers
runner and the WebUI HTTP-API runner each implement it; the run loop in :mod:`cfgsim.probe` is
the same for all of them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image

    from cfgsim.spec import ProbeSpec

# Architectures the SD1 probe is defined for. "unknown" is probed: a host that cannot tell must not
# silently drop a checkpoint the user picked.
PROBE_ARCHITECTURES = frozenset({"sd1", "unknown"})

ARCHITECTURE_NAMES = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sd2-v": "SD 2.x (v-prediction)",
    "sdxl": "SDXL",
    "sdxl-refiner": "SDXL refiner",
    "sd3": "SD 3",
    "flux": "Flux",
    "unknown": "unknown architecture",
}


@dataclass(frozen=True)
class Checkpoint:
    """One model to probe, as the host knows it.

    ``name`` is the host's own handle (the WebUI's checkpoint title, a file path); ``label`` is
    what the grid shows. ``model_hash`` is the WebUI's legacy 8-hex hash (sha256 of 64 KiB at
    offset 1 MiB), ``sha256`` the full file hash when the host has it.
    """

    name: str
    label: str = ""
    file: str | None = None
    model_hash: str | None = None
    sha256: str | None = None
    architecture: str = "unknown"
    # Where the column comes from: "" (probed in this run, or taken from the probe library for a
    # selected checkpoint) or "library" (a checkpoint probed before and no longer selected).
    origin: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    @property
    def probe_skip_reason(self) -> str | None:
        """Why the SD1 probe does not run on this checkpoint, or None when it does."""
        if self.architecture in PROBE_ARCHITECTURES:
            return None
        kind = ARCHITECTURE_NAMES.get(self.architecture, self.architecture)
        return f"{kind} checkpoint: the probe is defined for SD 1.x models"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "label": self.label,
            "file": self.file,
            "model_hash": self.model_hash,
            "sha256": self.sha256,
            "architecture": self.architecture,
            **({"origin": self.origin} if self.origin else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Checkpoint:
        return cls(
            name=str(data["name"]),
            label=str(data.get("label") or data["name"]),
            file=_opt_str(data.get("file")),
            model_hash=_opt_str(data.get("model_hash")),
            sha256=_opt_str(data.get("sha256")),
            architecture=str(data.get("architecture") or "unknown"),
            origin=str(data.get("origin") or ""),
        )


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


@dataclass
class Generated:
    """One probe image and the host's infotext for it (the WebUI's per-image ``parameters``)."""

    image: Image.Image
    infotext: str = ""
    # Anything the host learnt while generating that changes pixels (VAE in use, RNG source...).
    settings: dict[str, str] = field(default_factory=dict)


class ProbeInterrupted(Exception):
    """Raised by a host's generate() when the user stopped the run during that image."""


@runtime_checkable
class Host(Protocol):
    """What the run loop needs from a host. See the module docstring."""

    name: str

    def checkpoints(self) -> Sequence[Checkpoint]:
        """Every checkpoint the host can probe (with hashes and architecture where known)."""
        ...

    def current_checkpoint(self) -> str | None:
        """The ``name`` of the checkpoint loaded now, so the run can start with it; None if none."""
        ...

    def generate(self, checkpoint: Checkpoint, spec: ProbeSpec, seed: int) -> Generated:
        """The probe image of ``checkpoint`` for ``seed``. Raises on failure; the message is shown."""
        ...

    def progress(self, done: int, total: int, job: str) -> None:
        """Called before each cell (``done`` cells finished, ``job`` names the next one)."""
        ...

    def interrupted(self) -> bool:
        """True once the user asked to stop: the run ends after the current image."""
        ...

    def environment(self) -> dict[str, str]:
        """Host settings that change pixels and that the probe records but does not force."""
        ...


class CheckpointLoadError(Exception):
    """Raised by a host's generate() when the checkpoint itself cannot be used (missing file, load
    error, wrong architecture): the run loop marks all of that checkpoint's cells failed at once
    instead of trying to load it again for every seed."""


# -- checkpoint hashes ------------------------------------------------------------------------------

# The WebUI's legacy "Model hash" reads 64 KiB at offset 1 MiB (``sd_models.model_hash``).
LEGACY_HASH_OFFSET = 0x100000
LEGACY_HASH_LENGTH = 0x10000


@dataclass(frozen=True)
class FileHashes:
    """A checkpoint file's two hashes: the WebUI's legacy 8-hex ``Model hash`` and the full sha256
    (whose first 10 hex digits are the WebUI's ``shorthash``)."""

    legacy: str
    sha256: str


def file_hashes(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> FileHashes:
    """Both hashes of a file in one read (a multi-GB checkpoint is read once, not once per hash).

    Files shorter than 1 MiB get the legacy hash of the empty string, exactly as the WebUI's
    seek-then-read does.
    """
    full = hashlib.sha256()
    legacy_bytes = bytearray()
    position = 0
    start, stop = LEGACY_HASH_OFFSET, LEGACY_HASH_OFFSET + LEGACY_HASH_LENGTH
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            full.update(chunk)
            end = position + len(chunk)
            if end > start and position < stop:
                legacy_bytes += chunk[max(start - position, 0) : min(stop, end) - position]
            position = end
    return FileHashes(hashlib.sha256(bytes(legacy_bytes)).hexdigest()[:8], full.hexdigest())


def cache_folder() -> str:
    """cfgsim's cache folder: ``$CFGSIM_CACHE_DIR``, else ``$XDG_CACHE_HOME/cfgsim``, else
    ``~/.cache/cfgsim`` (the checkpoint hash cache and the command line's probe library)."""
    if os.environ.get("CFGSIM_CACHE_DIR"):
        return os.path.expanduser(os.environ["CFGSIM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cfgsim")


def default_hash_cache_path() -> str:
    """``hashes.json`` in :func:`cache_folder`."""
    return os.path.join(cache_folder(), "hashes.json")


class HashCache:
    """Checkpoint hashes cached by absolute path, size and modification time, in a small JSON file.

    Hashing a checkpoint means reading all of it (2-7 GB); the cache makes that once per file
    version instead of once per run. An entry is used only while the file's size and mtime (ns)
    are unchanged. The file is rewritten atomically (temporary name, then rename); an unreadable
    or damaged cache file is treated as empty, and a cache that cannot be written only costs the
    next run a re-hash. ``path=None``: in memory only.
    """

    VERSION = 1

    def __init__(self, path: str | os.PathLike[str] | None = "") -> None:
        self.path = default_hash_cache_path() if path == "" else (None if path is None else os.fspath(path))
        self._entries: dict[str, dict[str, object]] | None = None

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            self._entries = {}
            if self.path is not None:
                try:
                    with open(self.path, encoding="utf-8") as file:
                        data = json.load(file)
                    if isinstance(data, dict) and data.get("version") == self.VERSION:
                        entries = data.get("files")
                        if isinstance(entries, dict):
                            self._entries = {k: v for k, v in entries.items() if isinstance(v, dict)}
                except (OSError, ValueError):
                    pass
        return self._entries

    def hashes(self, path: str | os.PathLike[str]) -> FileHashes:
        """The file's hashes: from the cache while the file is unchanged, else computed (one read)."""
        key = os.path.abspath(os.fspath(path))
        stat = os.stat(key)
        entries = self._load()
        entry = entries.get(key)
        if (
            entry is not None
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("legacy"), str)
        ):
            return FileHashes(str(entry["legacy"]), str(entry["sha256"]))
        hashes = file_hashes(key)
        entries[key] = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": hashes.sha256,
            "legacy": hashes.legacy,
        }
        self._save()
        return hashes

    def _save(self) -> None:
        if self.path is None:
            return
        text = json.dumps({"version": self.VERSION, "files": self._entries}, indent=1, sort_keys=True)
        folder = os.path.dirname(self.path) or "."
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".hashes-", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    file.write(text)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            pass  # a read-only cache folder: hashes are recomputed next time, nothing else changes
