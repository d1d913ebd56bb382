"""cfgsim: the CFG 1.0 similarity probe.

Run every checkpoint under one fixed probe that shows the model's own prior (empty prompt, CFG 1 =
no guidance, one fixed seed), then compare the pictures: checkpoints of one lineage turn the same
noise into similar pictures. This package is the library under the WebUI extension; it never
imports the WebUI (``modules``), gradio or ``launch``.

The public API (stable names, documented in the README's "Python API")::

    import cfgsim
    result = cfgsim.compare_images({"a": [...], "b": [...]})   # images over seeds → verdict
    result = cfgsim.probe_checkpoints(["a.safetensors", "b.safetensors"], spec=cfgsim.ProbeSpec())
    matrix = cfgsim.similarity_matrix([img1, img2, img3], "ssim")
    result = cfgsim.read_result("grid.png")
    cfgsim.save_result(result, "out/")

Importing ``cfgsim`` loads none of it (and no torch): each name is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {
    "compare_images": "cfgsim.api",
    "probe_checkpoints": "cfgsim.api",
    "similarity_matrix": "cfgsim.api",
    "read_result": "cfgsim.api",
    "render_result": "cfgsim.api",
    "save_result": "cfgsim.api",
    "ProbeSpec": "cfgsim.spec",
    "ProbeResult": "cfgsim.result",
    "Lineage": "cfgsim.lineage",
    "CfgsimError": "cfgsim.errors",
    "InputError": "cfgsim.errors",
}

__all__ = [
    "CfgsimError",
    "InputError",
    "Lineage",
    "ProbeResult",
    "ProbeSpec",
    "__version__",
    "compare_images",
    "probe_checkpoints",
    "read_result",
    "render_result",
    "save_result",
    "similarity_matrix",
]

if TYPE_CHECKING:
    from cfgsim.api import (
        compare_images,
        probe_checkpoints,
        read_result,
        render_result,
        save_result,
        similarity_matrix,
    )
    from cfgsim.errors import CfgsimError, InputError
    from cfgsim.lineage import Lineage
    from cfgsim.result import ProbeResult
    from cfgsim.spec import ProbeSpec


def __getattr__(name: str) -> Any:
    # PEP 562: the API is imported lazily, so ``import cfgsim.spec`` inside the WebUI stays cheap and
    # cfgsim's own modules can import ``cfgsim.__version__`` without an import cycle.
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cfgsim' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
