"""Cond-only sampling at CFG 1 in AUTOMATIC1111, only while a probe runs.

At CFG 1 the WebUI's combination ``uncond + (cond - uncond) · 1`` is ``cond``, yet A1111 (1.8 and
1.10, ``CFGDenoiser.forward`` in ``modules/sd_samplers_cfg_denoiser.py``) evaluates the UNet on the
uncond rows too: twice the work of the image. :class:`CondOnly` wraps ``CFGDenoiser.forward`` for
the duration of a probe run. For a processing object the probe made (it carries :data:`PROBE_FLAG`)
and only when it is safe, the denoiser's inner model is wrapped for that one call so that the rows
of the uncond half are not evaluated but filled with the output of their cond rows. The stock code
runs unchanged around it: the callbacks (``cfg_denoiser``, ``cfg_denoised``, ``cfg_after_cfg``) get
full, consistent tensors, and the combination gives ``c + (c - c) · 1 = c`` exactly.

How the rows are known (read in A1111 1.8 and 1.10): the stock forward builds ``x_in`` as the cond
rows (one per image when no prompt uses AND) followed by one uncond row per image, and hands it to
the inner model in row order — in one call (``batch_cond_uncond``), or one call per image batch, or
cond chunks then the uncond rows (conds of different lengths). A row ``r >= images`` is the uncond
row of image ``r - images``. It is filled only when its inputs (latent, sigma, ``c_concat``) are
those of its cond row, so a callback that changed the batch is evaluated the stock way.

Safe means: CFG scale exactly 1, no image CFG (edit models), every image one cond with weight 1 (no
AND, no prompt weight), SD1-style tensor conditioning (``c_crossattn`` + ``c_concat``). Anything
else takes the stock path. Forge needs none of this: its sampling function skips the uncond pass at
CFG 1 itself, and nothing is installed there.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cfgsim")

# Set on the probe's copies of ``p`` (see cfgsim.webui.host.probe_processing): only they are touched.
PROBE_FLAG = "cfgsim_probe"
# The key of the host environment (the result's metadata) that says which path ran.
ENV_KEY = "Cond-only"
MODE_HOOK, MODE_FORGE, MODE_OFF, MODE_UNAVAILABLE = "cfgsim", "Forge", "off", "off (not available)"


@dataclass
class Counts:
    """What the hook saw: UNet rows evaluated and rows filled (one row = one image's latent through
    the UNet once), denoiser calls (image-steps) and sampling runs (images) of probe processing."""

    rows: int = 0
    filled: int = 0
    image_steps: int = 0
    images: int = 0
    stock_calls: int = 0
    stock_reason: str = ""

    def per_image(self) -> float:
        return self.rows / self.images if self.images else 0.0

    def text(self) -> str:
        per = self.image_steps / self.images if self.images else 0
        line = (
            f"{self.rows} UNet evaluations for {self.images} images of {per:g} steps "
            f"({self.per_image():g} per image; {self.filled} uncond rows filled from cond rows)"
        )
        if self.stock_calls:
            line += f"; {self.stock_calls} calls on the stock path ({self.stock_reason})"
        return line


def unsafe_reason(denoiser: Any, cond: Any, cond_scale: Any, images: int) -> str:
    """Why one denoiser call must take the stock path, or "" when cond-only is exact."""
    try:
        if float(cond_scale) != 1.0:
            return f"CFG scale {cond_scale}"
    except (TypeError, ValueError):
        return "CFG scale is not a number"
    image_cfg = getattr(denoiser, "image_cfg_scale", None)
    if image_cfg is not None and float(image_cfg) != 1.0:
        return f"image CFG scale {image_cfg}"
    batch = getattr(cond, "batch", None)
    if not isinstance(batch, list) or len(batch) != images:
        return "conditioning of an unknown layout"
    for composable in batch:
        if not isinstance(composable, list) or len(composable) != 1:
            return "a prompt composed with AND"
        if float(getattr(composable[0], "weight", 1.0)) != 1.0:
            return "a weighted prompt"
    return ""


def _sd1_parts(cond: Any) -> tuple[Any, Any] | None:
    """(crossattn, concat) tensors of an SD1-style condition dict, None for anything else."""
    if not isinstance(cond, dict) or set(cond) != {"c_crossattn", "c_concat"}:
        return None
    crossattn, concat = cond["c_crossattn"], cond["c_concat"]
    if not (isinstance(crossattn, list) and isinstance(concat, list) and len(crossattn) == len(concat) == 1):
        return None
    return crossattn[0], concat[0]


class _Call:
    """One denoiser call: the inner model's calls, in row order. Fills uncond rows (module doc)."""

    def __init__(self, original: Any, images: int, counts: Counts) -> None:
        self.original = original
        self.images = images
        self.counts = counts
        self.next_row = 0
        self.cond_rows: dict[int, tuple[Any, Any, Any, Any]] = {}  # row → (x, sigma, concat, out)

    def __call__(self, x: Any, sigma: Any, **kwargs: Any) -> Any:
        import torch

        n, first = int(x.shape[0]), self.next_row
        self.next_row += n
        parts = _sd1_parts(kwargs.get("cond"))
        if parts is None or len(sigma.shape) != 1:
            self.counts.rows += n
            return self.original(x, sigma, **kwargs)
        crossattn, concat = parts
        # Local rows filled from a cond row: of this call (index) or of an earlier one (None).
        fill: dict[int, int | None] = {}
        for k in range(n):
            row = first + k
            source = row - self.images
            if source < 0:
                continue
            if first <= source < row:
                same = (x[source - first], sigma[source - first], concat[source - first])
            elif source in self.cond_rows:
                same = self.cond_rows[source][:3]
            else:
                continue
            if (
                torch.equal(x[k], same[0])
                and torch.equal(sigma[k], same[1])
                and torch.equal(concat[k], same[2])
            ):
                fill[k] = source - first if source >= first else None
        evaluate = [k for k in range(n) if k not in fill]
        out_rows: dict[int, Any] = {}
        if evaluate:
            if len(evaluate) == n:
                out = self.original(x, sigma, **kwargs)
            else:
                index = (
                    slice(evaluate[0], evaluate[-1] + 1)
                    if evaluate == list(range(evaluate[0], evaluate[-1] + 1))
                    else torch.tensor(evaluate, device=x.device)
                )
                sub = dict(kwargs, cond={"c_crossattn": [crossattn[index]], "c_concat": [concat[index]]})
                out = self.original(x[index], sigma[index], **sub)
            self.counts.rows += len(evaluate)
            for j, k in enumerate(evaluate):
                out_rows[k] = out[j : j + 1]
                if first + k < self.images:
                    self.cond_rows[first + k] = (x[k], sigma[k], concat[k], out[j])
            if not fill:
                return out
        self.counts.filled += len(fill)
        if evaluate and all(local is not None for local in fill.values()):
            # One batch (batch_cond_uncond): each row is a row of `out`, gathered in one operation.
            position = {k: j for j, k in enumerate(evaluate)}
            rows = [position[k] if k in position else position[fill[k]] for k in range(n)]  # type: ignore[index]
            return out.index_select(0, torch.tensor(rows, device=out.device))
        if not evaluate and all(local is None for local in fill.values()):
            # The uncond batch of its own: the stored cond outputs, in order.
            return torch.stack([self.cond_rows[first + k - self.images][3] for k in range(n)])
        for k, local in fill.items():
            source = first + k - self.images
            out_rows[k] = out_rows[local] if local is not None else self.cond_rows[source][3].unsqueeze(0)
        return torch.cat([out_rows[k] for k in range(n)])


class CondOnly:
    """Context manager around a probe run: installs the cond-only hook where it applies (module doc).

    ``denoiser_class``: A1111's ``CFGDenoiser`` (None where it cannot be found); ``forge``: the WebUI
    is Forge (skips the uncond pass itself); ``enabled``: the user's setting. :attr:`mode` is what
    the metadata records; :attr:`counts` what the hook saw.
    """

    def __init__(self, denoiser_class: Any, *, forge: bool = False, enabled: bool = True) -> None:
        self.cls = denoiser_class
        self.counts = Counts()
        self.active = False
        self._original: Any = None
        self._had_own = False
        self._patched: Any = None
        if forge:
            self.mode = MODE_FORGE
        elif not enabled:
            self.mode = MODE_OFF
        elif denoiser_class is None or not callable(getattr(denoiser_class, "forward", None)):
            self.mode = MODE_UNAVAILABLE
        else:
            self.mode = MODE_HOOK

    @classmethod
    def for_module(cls, module: Any, *, forge: bool = False, enabled: bool = True) -> CondOnly:
        """From ``modules.sd_samplers_cfg_denoiser`` (or None)."""
        return cls(getattr(module, "CFGDenoiser", None), forge=forge, enabled=enabled)

    def __enter__(self) -> CondOnly:
        if self.mode != MODE_HOOK:
            return self
        self._had_own = "forward" in vars(self.cls)
        self._original = self.cls.forward
        self._patched = self._make_forward(self._original)
        self.cls.forward = self._patched
        self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.active:
            return
        self.active = False  # from now on the wrapper (if anyone still calls it) is a pass-through
        if vars(self.cls).get("forward") is self._patched:
            if self._had_own:
                self.cls.forward = self._original
            else:
                delattr(self.cls, "forward")
        else:
            log.warning(
                "cfgsim: CFGDenoiser.forward was replaced by someone else during the probe; "
                "leaving theirs in place (cfgsim's wrapper now only passes calls through)"
            )
        if self.counts.images:
            log.info("cfgsim: cond-only at CFG 1: %s", self.counts.text())

    def environment_value(self) -> str:
        """The metadata value after the run: the mode, and whether any step took the stock path."""
        if self.mode == MODE_HOOK and self.counts.stock_calls:
            return f"{MODE_HOOK} (stock path for {self.counts.stock_calls} calls: {self.counts.stock_reason})"
        return self.mode

    def _make_forward(self, original: Any) -> Any:
        signature = inspect.signature(original)
        hook = self

        def forward(denoiser: Any, *args: Any, **kwargs: Any) -> Any:
            if not hook.active or not getattr(getattr(denoiser, "p", None), PROBE_FLAG, False):
                return original(denoiser, *args, **kwargs)
            return hook._probe_forward(original, signature, denoiser, args, kwargs)

        forward.__wrapped__ = original  # type: ignore[attr-defined]
        forward.__doc__ = original.__doc__
        return forward

    def _probe_forward(self, original: Any, signature: Any, denoiser: Any, args: tuple, kwargs: dict) -> Any:
        counts = self.counts
        try:
            bound = signature.bind(denoiser, *args, **kwargs).arguments
            images = int(bound["x"].shape[0])
            reason = unsafe_reason(denoiser, bound.get("cond"), bound.get("cond_scale"), images)
        except (TypeError, KeyError, AttributeError) as exc:
            images, reason = 0, f"unexpected call ({exc})"
        inner = None
        if not reason:
            try:
                inner = denoiser.inner_model
            except Exception as exc:  # the stock forward will raise it again, where it belongs
                reason = f"no inner model ({type(exc).__name__})"
        if inner is not None and not callable(getattr(inner, "forward", None)):
            reason = "an inner model without forward()"
        if getattr(denoiser, "step", 1) == 0:
            counts.images += images
        counts.image_steps += images
        if reason:
            counts.stock_calls += 1
            if reason != counts.stock_reason:
                log.info("cfgsim: cond-only: stock CFG path (%s)", reason)
                counts.stock_reason = reason
            return original(denoiser, *args, **kwargs)
        own = vars(inner).get("forward")
        call = _Call(inner.forward, images, counts)
        inner.forward = call  # nn.Module.__call__ calls self.forward: this call's rows go through _Call
        try:
            return original(denoiser, *args, **kwargs)
        finally:
            if vars(inner).get("forward") is call:
                if own is None:
                    del inner.forward
                else:
                    inner.forward = own
