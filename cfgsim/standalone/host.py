"""``StandaloneHost``: the :class:`cfgsim.host.Host` of the standalone runner (files in, images out).

The run loop (:func:`cfgsim.probe.run_probe`) asks it for one image per (checkpoint, seed); it keeps
the last checkpoint loaded, so all seeds of one checkpoint share one load. A checkpoint that cannot
be loaded raises :class:`~cfgsim.host.CheckpointLoadError` (its column fails with the reason and the
run goes on); Ctrl-C during an image ends the run after it with what was done.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cfgsim import __version__
from cfgsim.errors import InputError
from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, ProbeInterrupted
from cfgsim.standalone.checkpoint import describe_checkpoint
from cfgsim.standalone.configs import ModelConfig, resolve_config
from cfgsim.standalone.noise import RNG_LABELS, RNG_SOURCES

if TYPE_CHECKING:
    from cfgsim.spec import ProbeSpec
    from cfgsim.standalone.pipeline import SD1Models

HOST_NAME = "standalone"


def default_device() -> str:
    """``cuda`` when torch sees a CUDA device, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_batch_size(device: str) -> int:
    """Seeds per batch when the user sets none: 1 on the CPU (a batch saves nothing there but the
    per-call overhead, and costs memory), on CUDA as many 512x512 SD 1.x images as fit in about
    half the free memory (~1.2 GB each at fp16, UNet activations and the VAE decode), at most 8."""
    if not device.startswith("cuda"):
        return 1
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(max(1, min(8, (free * 0.5) // (1.2 * 2**30))))


class StandaloneHost:
    """Probe SD 1.x single-file checkpoints with diffusers (see the module docstring).

    ``paths`` are checkpoint files (checked at once: a missing file is an :class:`InputError`);
    ``config_dir`` the diffusers-layout configuration folder (else the Hugging Face cache); ``rng``
    the noise source (``cpu``, ``nv``, ``gpu``); ``quiet`` turns the progress bars off.
    """

    name = HOST_NAME

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        config_dir: str | os.PathLike[str] | None = None,
        config: ModelConfig | None = None,
        device: str | None = None,
        rng: str = "cpu",
        quiet: bool = False,
        full_hash: bool = True,
        batch_size: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> None:
        if rng not in RNG_SOURCES:
            raise InputError(f"--rng {rng!r}: unknown source (known: {', '.join(RNG_SOURCES)})")
        self.device = device or default_device()
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(f"--device {self.device!r}: use cpu or cuda")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise InputError("--device cuda: torch sees no CUDA device here; use --device cpu")
        if rng == "gpu" and not self.device.startswith("cuda"):
            raise InputError("--rng gpu draws the noise on the CUDA device: use --device cuda, or --rng nv")
        self.rng = rng
        self.quiet = quiet
        if batch_size is not None and batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be at least 1")
        self.batch_size = batch_size or default_batch_size(self.device)
        self.config = config or resolve_config(config_dir)
        self._checkpoints = [describe_checkpoint(p, full_hash=full_hash) for p in paths]
        if labels is not None:
            if len(labels) != len(self._checkpoints):
                raise InputError(f"labels: {len(labels)} labels for {len(self._checkpoints)} checkpoints")
            self._checkpoints = [
                dataclasses.replace(c, label=label)
                for c, label in zip(self._checkpoints, labels, strict=True)
            ]
        self._loaded: tuple[str, SD1Models] | None = None
        self._tokenizer: Any = None
        self._interrupted = False
        self._cell_bar: Any = None
        self._step_bar: Any = None

    # -- Host interface ---------------------------------------------------------------------------

    def checkpoints(self) -> Sequence[Checkpoint]:
        return list(self._checkpoints)

    def current_checkpoint(self) -> str | None:
        return self._loaded[0] if self._loaded else None

    def generate(self, checkpoint: Checkpoint, spec: ProbeSpec, seed: int) -> Generated:
        return self.generate_many(checkpoint, spec, [seed])[0]

    def generate_many(self, checkpoint: Checkpoint, spec: ProbeSpec, seeds: Sequence[int]) -> list[Generated]:
        """Several seeds of one checkpoint as one batch (see :func:`pipeline.generate_batch`)."""
        from cfgsim.standalone.pipeline import generate_batch

        try:
            models = self._models(checkpoint)
            images = generate_batch(models, spec, seeds, rng=self.rng, callback=self._step)
        except KeyboardInterrupt:
            # Ctrl-C ends the run after this batch; what was done is still compared and written.
            self._interrupted = True
            raise ProbeInterrupted() from None
        finally:
            self._close_step_bar()
        return [
            Generated(image=image, infotext=self.infotext(checkpoint, spec, seed), settings={})
            for image, seed in zip(images, seeds, strict=True)
        ]

    def progress(self, done: int, total: int, job: str) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self._cell_bar is None:
            self._cell_bar = tqdm(total=total, desc="probe", unit="image", position=0, dynamic_ncols=True)
        self._cell_bar.n = done
        self._cell_bar.set_postfix_str(job, refresh=True)
        if done >= total:
            self._cell_bar.close()
            self._cell_bar = None

    def interrupted(self) -> bool:
        return self._interrupted

    def environment(self) -> dict[str, str]:
        import diffusers
        import torch
        import transformers

        return {
            "randn_source": RNG_LABELS[self.rng],
            "device": self.device,
            "precision": "fp16" if self.device.startswith("cuda") else "fp32",
            "config": self.config.source,
            "runner": f"cfgsim {__version__} standalone (torch {torch.__version__}, diffusers "
            f"{diffusers.__version__}, transformers {transformers.__version__})",
        }

    # -- helpers ----------------------------------------------------------------------------------

    def infotext(self, checkpoint: Checkpoint, spec: ProbeSpec, seed: int) -> str:
        """The WebUI-style parameters of one image (what the WebUI would write for it)."""
        extra: dict[str, object] = {"Model hash": checkpoint.model_hash, "Model": checkpoint.label}
        if self.rng != "gpu":
            extra["RNG"] = RNG_LABELS[self.rng]  # the WebUI writes RNG only for a non-default source
        extra["Version"] = f"cfgsim {__version__} standalone"
        return str(spec.replace(seeds=(seed,)).to_infotext(extra))

    def _models(self, checkpoint: Checkpoint) -> SD1Models:
        from cfgsim.standalone.pipeline import load_models, load_tokenizer

        if self._loaded and self._loaded[0] == checkpoint.name:
            return self._loaded[1]
        self._loaded = None  # free the previous model before loading the next
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config)
        path = Path(checkpoint.file or checkpoint.name)
        try:
            models = load_models(path, self.config, tokenizer=self._tokenizer, device=self.device)
        except (OSError, RuntimeError) as exc:
            raise CheckpointLoadError(f"{path.name}: {exc}") from exc
        self._loaded = (checkpoint.name, models)
        return models

    def _step(self, done: int, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if self._step_bar is None:
            self._step_bar = tqdm(
                total=total, desc="steps", unit="step", position=1, leave=False, dynamic_ncols=True
            )
        self._step_bar.update(done - self._step_bar.n)

    def _close_step_bar(self) -> None:
        if self._step_bar is not None:
            self._step_bar.close()
            self._step_bar = None
