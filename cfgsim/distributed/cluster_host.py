"""``ClusterHost``: the driver's side of a standalone run whose images are made on Ray nodes.

It is a :class:`~cfgsim.standalone.host.StandaloneHost` that describes the checkpoints (hashes,
architecture: the driver reads the files), records the settings the nodes use, drives the progress
bar and carries the user's Ctrl-C, but never loads a model itself: its ``device`` is the *nodes'*
device (``cuda`` on a GPU cluster, even when the driver has no GPU) and its ``batch_size`` may be
None (each node's own default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cfgsim.errors import InputError
from cfgsim.standalone.host import StandaloneHost
from cfgsim.standalone.noise import RNG_SOURCES


class ClusterHost(StandaloneHost):
    """See the module docstring. ``device``: ``cpu`` or ``cuda`` (the nodes'); the rest as for
    :class:`StandaloneHost`."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        device: str,
        rng: str = "cpu",
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise InputError(f"--device {device!r}: use cpu or cuda")
        if rng not in RNG_SOURCES:
            raise InputError(f"--rng {rng!r}: unknown source (known: {', '.join(RNG_SOURCES)})")
        if rng == "gpu" and device != "cuda":
            raise InputError("--rng gpu draws the noise on the CUDA device: use --device cuda, or --rng nv")
        if batch_size is not None and batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be at least 1")
        # The base class checks the device against *this* machine: build it for the CPU, then say
        # what the nodes use.
        super().__init__(paths, device="cpu", rng="cpu", batch_size=batch_size or 1, **kwargs)
        self.device = device
        self.rng = rng
        self.node_batch_size = batch_size
