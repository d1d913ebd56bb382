"""What runs on a Ray node: one checkpoint's job, from a small picklable description to PNG bytes.

Nothing here imports Ray. :func:`run_node_job` is the body of the Ray task (see
:mod:`cfgsim.distributed.ray_executor`); it is a plain generator, so it can be tried without a
cluster. It builds its own :class:`~cfgsim.standalone.host.StandaloneHost` from a :class:`NodeSpec`
(no model is ever pickled), checks that the checkpoint file on the node is the one the driver
described, then makes the job's seeds in batches and *yields* one message per batch as soon as the
batch is made:

``{"kind": "env", ...}``
    first: the node's name and its host environment (device, precision, runner versions), which the
    driver compares with its own.
``{"kind": "done", "rows": [...], "png": [...], "infotexts": [...], "settings": [...]}``
    a finished batch: images as PNG bytes (lossless, so the driver gets the very pixels).
``{"kind": "failed", "rows": [...], "error": "...", "load": bool}``
    cells that failed for good: a checkpoint that cannot be loaded here (``load``: all the rest of
    the job, at once, never retried), or one batch that failed (the next batch still runs, as in
    :func:`cfgsim.probe.run_job`).
``{"kind": "interrupted", "rows": [...]}``
    the task was interrupted (Ray's cancel, Ctrl-C reaching a local worker): these cells were not made.

Exceptions of the types in :attr:`NodeSpec.retry_exceptions` (transient: a lost connection, a CUDA
out-of-memory on a shared card) are *not* caught: they end the task, and Ray runs it again.
"""

from __future__ import annotations

import io
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from cfgsim.host import Checkpoint
    from cfgsim.spec import ProbeSpec

Message = dict[str, Any]


@dataclass(frozen=True)
class NodeSpec:
    """How a node builds its runner: everything a :class:`StandaloneHost` needs but the files' list.

    ``config_dir``: the configuration folder the driver resolved; a node that has no such folder
    uses its own Hugging Face cache (as ``cfgsim probe`` without ``--config-dir`` does).
    ``device``: ``cpu`` or ``cuda`` (Ray gives a GPU task its own card as ``cuda``). ``batch_size``:
    seeds per batch, None for the node's default (1 on the CPU, what fits on its GPU). ``threads``:
    torch threads on a CPU node (None: torch's default). ``host_factory``: builds the node's host
    instead of :class:`StandaloneHost` (tests, custom runners; must be picklable). ``check_files``:
    check each checkpoint file on the node first (:func:`check_file_here`).
    """

    config_dir: str | None = None
    device: str = "cpu"
    rng: str = "cpu"
    batch_size: int | None = None
    threads: int | None = None
    retry_exceptions: tuple[type[BaseException], ...] = ()
    host_factory: Callable[[NodeSpec], Any] | None = None
    check_files: bool = True

    def build_host(self) -> Any:
        """The node's host: ``host_factory(self)``, else a :class:`StandaloneHost` with no files."""
        if self.host_factory is not None:
            return self.host_factory(self)
        from cfgsim.standalone.configs import load_config_dir, resolve_config
        from cfgsim.standalone.host import StandaloneHost

        if self.config_dir and Path(self.config_dir).is_dir():
            config = load_config_dir(self.config_dir)
        else:
            config = resolve_config(None)
        return StandaloneHost(
            [], config=config, device=self.device, rng=self.rng, quiet=True, batch_size=self.batch_size
        )


def png_bytes(image: Image.Image) -> bytes:
    """The image as PNG (lossless; fast compression: the bytes only travel)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def from_png(data: bytes) -> Image.Image:
    """The image back from :func:`png_bytes`, fully read (no file handle left open)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def node_name() -> str:
    return socket.gethostname()


def check_file_here(checkpoint: Checkpoint) -> str | None:
    """Why this node cannot use the checkpoint's file, or None: the file must be at the driver's path
    and be the same file (its legacy hash, 64 KiB read, equal to the one the driver computed)."""
    from cfgsim.checkpoints import legacy_model_hash

    path = checkpoint.file or checkpoint.name
    if not os.path.isfile(path):
        return f"{path}: no such file on node {node_name()} (nodes read checkpoints at the driver's path)"
    if checkpoint.model_hash:
        try:
            here = legacy_model_hash(path)
        except OSError as exc:
            return f"{path}: cannot be read on node {node_name()} ({exc})"
        if here != checkpoint.model_hash:
            return (
                f"{path} on node {node_name()} is not the driver's file (model hash {here}, driver's "
                f"{checkpoint.model_hash}): per-node copies must be identical"
            )
    return None


def run_node_job(
    node: NodeSpec, spec: ProbeSpec, checkpoint: Checkpoint, rows: Sequence[int], seeds: Sequence[int]
) -> Iterator[Message]:
    """One checkpoint's seeds on this node, one message per batch (see the module docstring)."""
    from cfgsim.host import CheckpointLoadError, ProbeInterrupted
    from cfgsim.probe import error_text, host_batch_size, make_images

    # Everything the runner needs is local: a hub lookup must fail at once, not wait on the network.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    rows, seeds = list(rows), list(seeds)
    if node.threads:
        import torch

        torch.set_num_threads(node.threads)
    try:
        host = node.build_host()
        environment = dict(host.environment())
    except node.retry_exceptions:
        raise
    except Exception as exc:  # no runner on this node (no configuration, no CUDA): the job fails
        yield {"kind": "env", "node": node_name(), "environment": {}}
        yield {"kind": "failed", "rows": rows, "error": error_text(exc), "load": True}
        return
    yield {"kind": "env", "node": node_name(), "environment": environment}
    problem = check_file_here(checkpoint) if node.check_files else None
    if problem:
        yield {"kind": "failed", "rows": rows, "error": f"CheckpointLoadError: {problem}", "load": True}
        return
    batch = host_batch_size(host)
    for start in range(0, len(rows), batch):
        batch_rows, batch_seeds = rows[start : start + batch], seeds[start : start + batch]
        try:
            made = make_images(host, checkpoint, spec, batch_seeds)
        except CheckpointLoadError as exc:  # the file itself: fail the rest of the job, never retry
            yield {"kind": "failed", "rows": rows[start:], "error": error_text(exc), "load": True}
            return
        except ProbeInterrupted:  # Ray's cancel, or Ctrl-C reaching a local worker: stop here
            yield {"kind": "interrupted", "rows": rows[start:]}
            return
        except node.retry_exceptions:
            raise  # transient: Ray runs the task again; messages the driver already has are dropped
        except Exception as exc:  # this batch's cells fail; the next batch still runs
            yield {"kind": "failed", "rows": batch_rows, "error": error_text(exc), "load": False}
            continue
        yield {
            "kind": "done",
            "rows": batch_rows,
            "png": [png_bytes(g.image) for g in made],
            "infotexts": [g.infotext for g in made],
            "settings": [dict(g.settings) for g in made],
        }
