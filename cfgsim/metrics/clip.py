"""CLIP similarity: cosine similarity of open_clip image embeddings.

Where SSIM compares pixels, CLIP compares what the images show (subject, style, composition), so it
still separates lineages when pixel alignment is lost (different samplers, A1111 vs Forge rounding,
low step counts). The score is the cosine as it is: 1.0 for identical embeddings, but unrelated
images typically score well above 0 too (CLIP embeddings share a large common component), so
compare scores with each other rather than reading them against 0.

The model is open_clip's ``ViT-B-32`` with the ``laion2b_s34b_b79k`` weights by default. Nothing is
loaded on import: the weights are loaded on first use (:meth:`ClipMetric.load` or
:meth:`ClipMetric.prepare`) through open_clip's own download cache, or from a local file given as
``pretrained``. When they cannot be had, :class:`cfgsim.errors.ModelLoadError` says how to provide
them; there is never a silent fallback to an untrained model.

A local weights file is read without executing any code from it: ``.safetensors`` through the
safetensors library, anything else through ``torch.load(weights_only=True)`` (tensors and plain
containers only). open_clip's own file loader is not used for it: the open_clip the WebUIs pin
(2.20) unpickles with a plain ``torch.load``, which runs whatever a pickle says.

Inside a long-lived process (the WebUI) loaded models can be kept between runs: ``cache=True``
keeps the model in a process-wide cache keyed by (model, pretrained, device), and ``lazy=True``
makes :meth:`ClipMetric.load` only check that the model can be had, deferring the weights (and
the GPU memory) to the first :meth:`ClipMetric.prepare` — after the probe images are made.
:func:`release_cached_models` frees them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cfgsim.errors import InputError, ModelLoadError
from cfgsim.metrics.base import Metric, check_images

__all__ = ["ClipMetric", "load_weights_file", "release_cached_models"]

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"

_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".ckpt")

_HOW_TO_PROVIDE = (
    "open_clip downloads the weights on first use into its cache, so run once with network access, "
    "or pass a local weights file with the clip 'pretrained' option (--clip-pretrained FILE)"
)


# (model name, pretrained, device) → (model, preprocess), for ClipMetric(cache=True).
_CACHE: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def release_cached_models() -> int:
    """Drop every cached CLIP model (and return the CUDA memory it held); returns how many."""
    count = len(_CACHE)
    _CACHE.clear()
    if count:
        import gc

        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
    return count


def cached_model_count() -> int:
    return len(_CACHE)


def load_weights_file(path: str) -> dict[str, Any]:
    """A CLIP state dict from a local file, never executing code from it.

    ``.safetensors`` via safetensors; other files via ``torch.load(weights_only=True)``, which
    refuses pickles that need anything beyond tensors and plain containers. A checkpoint that wraps
    its weights (``{"state_dict": ...}``) or was saved from DataParallel (``module.`` prefixes) is
    unwrapped the way open_clip does.
    """
    import torch

    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            data: Any = load_file(path, device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as exc:
        raise ModelLoadError(f"clip: cannot read {path!r}: {exc}; install safetensors") from None
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"clip: the weights file {path!r} is not plain weights: it needs code to load, which is "
            f"refused ({str(exc).splitlines()[0] if str(exc) else 'unsafe pickle'}); convert it to "
            ".safetensors or save only its state_dict"
        ) from None
    except Exception as exc:  # damaged files raise RuntimeError, EOFError, OSError, SafetensorError
        raise ModelLoadError(f"clip: cannot read the weights file {path!r}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise ModelLoadError(f"clip: the weights file {path!r} holds no state dict")
    if next(iter(data)).startswith("module."):
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def _hub_host() -> str:
    try:
        from huggingface_hub import constants

        endpoint = str(getattr(constants, "ENDPOINT", "") or "https://huggingface.co")
    except ImportError:
        endpoint = "https://huggingface.co"
    return endpoint.split("://", 1)[-1].split("/", 1)[0] or "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub answers a TCP connection within ``timeout`` seconds (a name that does
    not resolve fails at once). Honours ``HF_HUB_OFFLINE``/``HF_ENDPOINT``."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host, _, port = _hub_host().partition(":")
    try:
        socket.create_connection((host, int(port or 443)), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub reads its offline switch at call time: set it while loading without network,
    so a weights file that is not in the cache fails at once instead of after its retries."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    before = getattr(constants, "HF_HUB_OFFLINE", False)
    if offline:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _quiet_root_errors() -> Iterator[None]:
    """open_clip logs a failed download on the root logger before raising it; the raised error
    (turned into one clear message) is enough."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.sep in pretrained
        or (os.altsep is not None and os.altsep in pretrained)
        or pretrained.lower().endswith(_WEIGHT_SUFFIXES)
        or os.path.exists(pretrained)
    )


class ClipMetric(Metric):
    """Cosine similarity of CLIP image embeddings (open_clip).

    Options: ``model`` (open_clip architecture name), ``pretrained`` (an open_clip tag, or a path to
    a local weights file), ``device`` (default: CUDA when available, else CPU), ``batch_size``.
    Tests and embedders may inject an already built model with ``model_obj`` and its image
    transform with ``preprocess``; it is put in eval mode. ``cache`` and ``lazy``: see the module
    docstring.
    """

    name = "clip"
    label = "CLIP"
    description = (
        "cosine similarity of CLIP image embeddings: higher is more similar, -1..1, 1 = identical; "
        "unrelated images also score well above 0, so compare relatively"
    )
    same_size = False

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        pretrained: str = DEFAULT_PRETRAINED,
        device: str | None = None,
        batch_size: int = 16,
        model_obj: Any = None,
        preprocess: Any = None,
        cache: bool = False,
        lazy: bool = False,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"clip: batch_size must be at least 1, not {batch_size!r}")
        if (model_obj is None) != (preprocess is None):
            raise InputError("clip: pass model_obj and preprocess together")
        self.model_name = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self._model = model_obj
        self._preprocess = preprocess
        self._injected = model_obj is not None
        self.cache = cache
        self.lazy = lazy

    def settings(self) -> dict[str, Any]:
        if self._injected:
            return {"model": type(self._model).__name__, "pretrained": None}
        return {"model": self.model_name, "pretrained": self.pretrained}

    def _describe(self) -> str:
        return f"open_clip model {self.model_name!r} with pretrained weights {self.pretrained!r}"

    def load(self) -> None:
        """Load the model now (with ``lazy``: only check it can be had); raises
        :class:`~cfgsim.errors.ModelLoadError` when it cannot."""
        if self._model is not None:
            if self._injected:
                self._model.eval()
            return
        open_clip, torch = self._check()
        if not self.lazy:
            self._load_now(open_clip, torch)

    def _check(self) -> tuple[Any, Any]:
        """open_clip and torch, after checking what can be checked without loading weights."""
        pretrained = self.pretrained
        if _looks_like_path(pretrained) and not os.path.isfile(pretrained):
            raise ModelLoadError(
                f"clip: the weights file {pretrained!r} for open_clip model {self.model_name!r} "
                f"does not exist; {_HOW_TO_PROVIDE}"
            )
        try:
            # open-clip-torch 2.20 (the WebUI's pin) imports a deprecated timm module, which prints a
            # FutureWarning on every run: library noise, not a message for the user.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                warnings.simplefilter("ignore", DeprecationWarning)
                import open_clip
                import torch
        except ImportError as exc:
            raise ModelLoadError(
                f"clip: the clip metric needs torch and open-clip-torch ({exc}); "
                "install them with: pip install open-clip-torch"
            ) from None
        list_models = getattr(open_clip, "list_models", None)
        if callable(list_models) and self.model_name not in list_models():
            raise ModelLoadError(f"clip: open_clip has no model {self.model_name!r}; {_HOW_TO_PROVIDE}")
        list_tags = getattr(open_clip, "list_pretrained_tags_by_model", None)
        if not _looks_like_path(pretrained) and callable(list_tags):
            tags = list(list_tags(self.model_name))

            def clean(tag: str) -> str:  # how open_clip compares tags
                return tag.lower().replace("-", "_")

            if tags and clean(pretrained) not in {clean(t) for t in tags}:
                raise ModelLoadError(
                    f"clip: open_clip has no pretrained weights {pretrained!r} for model "
                    f"{self.model_name!r} (known: {', '.join(tags)}); {_HOW_TO_PROVIDE}"
                )
        return open_clip, torch

    def _load_now(self, open_clip: Any, torch: Any) -> None:
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        key = (self.model_name, self.pretrained, device)
        if self.cache and key in _CACHE:
            self.device = device
            self._model, self._preprocess = _CACHE[key]
            return
        pretrained = self.pretrained
        try:
            if _looks_like_path(pretrained):
                # Built without weights, then filled from the file by cfgsim's safe reader.
                model, _, preprocess = open_clip.create_model_and_transforms(
                    self.model_name, pretrained=None, device="cpu"
                )
                state = load_weights_file(pretrained)
                try:
                    model.load_state_dict(state, strict=True)
                except (RuntimeError, ValueError) as exc:
                    raise ModelLoadError(
                        f"clip: the weights in {pretrained!r} do not fit open_clip model "
                        f"{self.model_name!r}: {str(exc).splitlines()[0]}"
                    ) from None
                model = model.to(device)
            else:
                offline = not hub_reachable()
                try:
                    with _hub_offline(offline), _quiet_root_errors():
                        model, _, preprocess = open_clip.create_model_and_transforms(
                            self.model_name, pretrained=pretrained, device=device
                        )
                except Exception:
                    if offline:
                        # One message, at once: the hub's download retries would take a minute and
                        # print the same error three times to say the same thing.
                        raise ModelLoadError(
                            f"clip: the weights {pretrained!r} of open_clip model {self.model_name!r} are "
                            f"not in the local cache and {_hub_host()} cannot be reached (no network); "
                            f"{_HOW_TO_PROVIDE}"
                        ) from None
                    raise
        except ModelLoadError:
            raise
        except Exception as exc:  # open_clip raises RuntimeError, OSError, HTTP errors
            raise ModelLoadError(f"clip: cannot load {self._describe()}: {exc}. {_HOW_TO_PROVIDE}") from exc
        model.eval()
        self.device = device
        self._model, self._preprocess = model, preprocess
        if self.cache:
            _CACHE[key] = (model, preprocess)

    def prepare(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Unit-length float64 embeddings, one per image, computed in batches."""
        arrays = check_images(images, metric=self.name, same_size=False)
        if self._model is None:
            self._load_now(*self._check())
        else:
            self.load()
        import torch

        model, preprocess = self._model, self._preprocess
        device = self.device
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else "cpu"
        out: list[np.ndarray] = []
        with torch.no_grad():
            for start in range(0, len(arrays), self.batch_size):
                batch = arrays[start : start + self.batch_size]
                pixels = torch.stack([preprocess(Image.fromarray(arr)) for arr in batch]).to(device)
                features = model.encode_image(pixels).detach().to("cpu", torch.float64).numpy()
                norms = np.linalg.norm(features, axis=1, keepdims=True)
                out.extend(features / np.where(norms > 0, norms, 1.0))
        return out

    def score(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.clip(np.dot(a, b), -1.0, 1.0))

    def matrix(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        n = len(prepared)
        if n == 0:
            return np.eye(0)
        embeddings = np.stack(prepared)
        out = np.clip(embeddings @ embeddings.T, -1.0, 1.0)
        out = (out + out.T) / 2  # exactly symmetric whatever the BLAS summation order
        np.fill_diagonal(out, 1.0)
        return out
