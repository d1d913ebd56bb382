"""The standalone runner on a Ray cluster: ``cfgsim probe --executor ray [--ray-address ADDR]``.

:class:`~cfgsim.distributed.ray_executor.RayExecutor` is an :class:`~cfgsim.probe.Executor`: each
checkpoint's job becomes one Ray task (one GPU per task on a GPU cluster, else CPUs), whose cells
stream back to the driver as they are made; the driver's sink writes the probe library and the
outputs, so the library lives with the driver only. The driver's host is a
:class:`~cfgsim.distributed.cluster_host.ClusterHost`: it describes the checkpoints but loads none.

**Model paths.** Every node reads each checkpoint at the path the driver was given (absolute), and
the configuration folder likewise (a node without it uses its own Hugging Face cache). Either the
models live on a file system shared by all nodes and the driver (NFS and the like: nothing to do),
or each node holds its own copy at the same absolute path. The driver reads the files too (it hashes
them); a node checks that its copy is the same file (the WebUI's legacy hash, 64 KiB read) and
fails that checkpoint's cells when it is missing or differs. Every node needs cfgsim with its
``standalone`` extra (and ray), in the versions of the driver: a node whose runner versions,
device or precision differ is reported, since its images may differ.

Ray is optional (``pip install 'cfgsim[ray]'``): it is imported only when a run uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cfgsim.errors import InputError

if TYPE_CHECKING:
    from cfgsim.distributed.cluster_host import ClusterHost
    from cfgsim.distributed.node import NodeSpec
    from cfgsim.distributed.ray_executor import RayExecutor

RAY_EXTRA = "pip install 'cfgsim[ray]'"

__all__ = ["RAY_EXTRA", "ClusterHost", "NodeSpec", "RayExecutor", "require_ray"]


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--executor ray needs Ray, which is not installed here: {RAY_EXTRA}") from exc
    return ray


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from cfgsim.distributed.ray_executor import RayExecutor

        return RayExecutor
    if name == "ClusterHost":
        from cfgsim.distributed.cluster_host import ClusterHost

        return ClusterHost
    if name == "NodeSpec":
        from cfgsim.distributed.node import NodeSpec

        return NodeSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
