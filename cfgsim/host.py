"""The host interface: what the probe's run loop needs from whatever makes the images.

A host lists checkpoints, generates one probe image for (checkpoint, spec, seed), reports progress
and says when the user asked to stop. The WebUI script (in-process), the standalone diffusers
runner and the WebUI HTTP-API runner each implement it; the run loop in :mod:`cfgsim.probe` is
the same for all of them.
"""

from __future__ import annotations

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
