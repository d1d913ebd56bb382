"""The probe's host inside the WebUI process: checkpoints, probe images (one seed or a batch of
one checkpoint's seeds per ``process_images`` call), progress.

Constraints from the WebUI that shape this module (A1111 1.8-1.10 and Forge):

- ``copy(p)`` is shallow: each cell gets its own ``override_settings``, ``extra_generation_params``,
  ``comments`` and ``styles``. Checkpoints are switched with ``override_settings
  ['sd_model_checkpoint']`` (``reload_model_weights()`` is a no-op in Forge); ``process_images``
  restores the overridden options it knew and leaves the model loaded.
- ``process_images`` silently drops a checkpoint override it cannot resolve and renders with the
  loaded model instead: checkpoints are resolved here first, an unknown one is a failed cell.
- Forge loads lazily: nothing is loaded before the first generation.
- Batches: both WebUIs take a list in ``p.seed`` (``process_images_inner``: ``p.all_seeds = seed``)
  and draw each image's noise from its own seed (``rng.ImageRNG`` keeps one generator per seed),
  so an image of a batch is the image made alone, up to the kernels' batch-size rounding.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from copy import copy
from typing import Any

from cfgsim import __version__ as cfgsim_version
from cfgsim.checkpoints import (
    SAFETENSORS_SUFFIXES,
    detect_architecture,
    normalize_keys,
    read_safetensors_header,
)
from cfgsim.host import Checkpoint, CheckpointLoadError, Generated, ProbeInterrupted
from cfgsim.probe import error_text
from cfgsim.result import ProbeResult
from cfgsim.spec import ProbeSpec
from cfgsim.webui.condonly import ENV_KEY as COND_ONLY_KEY
from cfgsim.webui.condonly import PROBE_FLAG
from cfgsim.webui.context import WebUI
from cfgsim.webui.options import CHECKPOINT_OPTION, forced_overrides, known, recorded_values
from cfgsim.webui.settings import batch_size_setting

# The metadata environment's key for the batch size (recorded only: not part of the library key).
BATCH_ENV_KEY = "Seeds per batch"

_ARCH_CACHE: dict[tuple[str, int, float], str] = {}


def architecture_of(filename: str | None) -> str:
    """The architecture of a checkpoint file, before loading it: from a safetensors header's key
    names. "unknown" for other formats (a pickle cannot be inspected without loading it; the loaded
    model's flags tell afterwards) and for unreadable files: those are probed, never dropped
    silently. Cached per path, size, mtime."""
    if not filename or not filename.lower().endswith(SAFETENSORS_SUFFIXES):
        return "unknown"
    try:
        stat = os.stat(filename)
    except OSError:
        return "unknown"
    key = (filename, stat.st_size, stat.st_mtime)
    if key not in _ARCH_CACHE:
        try:
            _ARCH_CACHE[key] = detect_architecture(normalize_keys(read_safetensors_header(filename)))
        except CheckpointLoadError:
            _ARCH_CACHE[key] = "unknown"
    return _ARCH_CACHE[key]


def loaded_model_architecture(model: object) -> str | None:
    """The architecture of a loaded model from the flags both WebUIs set on it, None if it has none."""
    if model is None or not hasattr(model, "is_sdxl"):
        return None
    if getattr(model, "is_sdxl", False):
        return "sdxl"
    if getattr(model, "is_sd2", False):
        return "sd2"
    if getattr(model, "is_sd3", False):
        return "sd3"
    if getattr(model, "is_sd1", True):
        return "sd1"
    return "unknown"  # Forge sets no is_sd* flag on Flux and other newer families


def automatic_batch_size(devices: Any) -> int:
    """Seeds per batch when the setting is 0: 1 on the CPU (and wherever the WebUI's device is not
    known), on CUDA the standalone runner's rule (:func:`cfgsim.standalone.host.default_batch_size`:
    what fits in about half the free memory, at most 8). Never fails a run: 1 when it cannot tell."""
    device = str(getattr(devices, "device", None) or "cpu")
    if not device.startswith("cuda"):
        return 1
    from cfgsim.standalone.host import default_batch_size  # torch is imported inside, not here

    try:
        return max(1, int(default_batch_size(device)))
    except Exception:  # the batch size only saves time: never fail a run over it
        return 1


def probe_processing(
    p: Any, spec: ProbeSpec, seed: int | Sequence[int], checkpoint: str | None, *, opts: Any = None
) -> Any:
    """A copy of ``p`` with the probe enforced, whatever the txt2img UI holds.

    Everything that changes the pixels and that the probe pins is set here: prompt, negative
    prompt, sampler (+ schedule where the WebUI has one), steps (256 is above the UI slider: set in
    code), CFG, seed without variation or resize, size, one batch (``seed`` a list of several
    seeds: one batch of ``len(seed)`` images, each from its own seed), no hires fix, refiner, face
    restoration, tiling, styles; the forced options of :data:`cfgsim.webui.options.HOST_OPTIONS`
    (clip skip, token merging, A1111 1.8's schedule override) and the checkpoint go through
    ``override_settings``. Always-on scripts (ControlNet, ADetailer, Dynamic Prompts, ...) are
    detached from the copy: they change pixels. ``opts``: only options it knows are overridden
    (``opts.set()`` raises on keys a WebUI version does not have).
    """
    pc = copy(p)
    pc.prompt = spec.prompt
    pc.negative_prompt = spec.negative_prompt
    pc.styles = []
    pc.sampler_name = spec.sampler
    if hasattr(pc, "scheduler"):  # A1111 1.9+ and Forge choose the schedule separately
        pc.scheduler = spec.scheduler
    pc.steps = spec.effective_steps
    pc.cfg_scale = float(spec.cfg_scale)
    seeds = [int(s) for s in seed] if isinstance(seed, Sequence) else [int(seed)]
    # One seed stays a number (the WebUI's own form); several go as a list, one per image.
    pc.seed = seeds if len(seeds) > 1 else seeds[0]
    pc.subseed = -1
    pc.subseed_strength = 0.0
    pc.seed_resize_from_w = 0
    pc.seed_resize_from_h = 0
    pc.width, pc.height = spec.width, spec.height
    pc.batch_size = len(seeds)
    pc.n_iter = 1
    if len(seeds) > 1:  # what setup_prompts() makes from batch_size, set so that the copy agrees
        pc.all_prompts = [spec.prompt] * len(seeds)
        pc.all_negative_prompts = [spec.negative_prompt] * len(seeds)
    pc.enable_hr = False
    pc.refiner_checkpoint = None
    pc.refiner_switch_at = None
    pc.restore_faces = False
    pc.tiling = False
    pc.token_merging_ratio = 0.0
    pc.token_merging_ratio_hr = 0.0
    # Euler adds noise only with churn; DDIM only with eta: pin both to the deterministic samplers.
    pc.s_churn = 0.0
    pc.eta = 0.0
    if hasattr(pc, "firstpass_image"):
        pc.firstpass_image = None
    if hasattr(pc, "txt2img_upscale"):
        pc.txt2img_upscale = False
    pc.scripts = None
    # Marks the copy as the probe's: the cond-only hook (cfgsim.webui.condonly) touches only these.
    setattr(pc, PROBE_FLAG, True)
    # The copy is shallow: fresh containers, or cells would write into each other and into p.
    pc.extra_generation_params = {}
    pc.comments = {}
    pc.do_not_save_grid = True
    overrides = dict(getattr(p, "override_settings", None) or {})
    if opts is not None:
        overrides = {k: v for k, v in overrides.items() if known(opts, k)}
    overrides.update(forced_overrides(spec, opts))
    if checkpoint is not None:
        overrides[CHECKPOINT_OPTION] = checkpoint
    pc.override_settings = overrides
    pc.override_settings_restore_afterwards = True
    return pc


def forget_failed_forge_load(sd_models_mod: Any) -> None:
    """Work around Forge losing its model on a failed load.

    Forge unloads the current model, then fails to load the new one: ``model_data.sd_model`` is
    None but ``model_data.forge_hash`` still names the last good load, so the next generation that
    asks for that checkpoint (typically the user's own, restored after the probe) skips loading and
    fails on the missing model. Clearing the hash makes Forge load it again. A no-op elsewhere.
    """
    data = getattr(sd_models_mod, "model_data", None)
    if not callable(getattr(sd_models_mod, "forge_model_reload", None)) or data is None:
        return
    if getattr(data, "sd_model", None) is None and getattr(data, "forge_hash", ""):
        data.forge_hash = ""


class WebUIHost:
    """The probe's host inside the WebUI process (see :class:`cfgsim.host.Host`)."""

    name = "webui"

    def __init__(self, p: Any, webui: WebUI) -> None:
        self.p = p
        self.webui = webui
        self.sd_models = webui.sd_models
        self._infos: dict[str, Any] = {}
        # Which path skips the uncond pass at CFG 1 (cfgsim.webui.condonly mode), None: not said.
        self.cond_only: str | None = None
        self._batch_size: int | None = None

    @property
    def batch_size(self) -> int:
        """Seeds of one checkpoint per ``process_images`` call: the "Seeds per batch" setting (an
        API request's ``override_settings`` may set it), 0 = :func:`automatic_batch_size`. Decided
        once per run, at the first use (the run loop asks before the first image)."""
        if self._batch_size is None:
            wanted = batch_size_setting(self.webui.opts, self.p)
            self._batch_size = wanted if wanted > 0 else automatic_batch_size(self.webui.devices)
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = max(1, int(value))

    # -- checkpoints -------------------------------------------------------------------------------

    def _all_infos(self) -> list[Any]:
        return list(getattr(self.sd_models, "checkpoints_list", {}).values())

    def find_info(self, text: str) -> Any | None:
        """The CheckpointInfo for a title, name, file name or hash, exactly (no substring guess:
        probing a different model than the one asked for would be worse than failing)."""
        aliases = getattr(self.sd_models, "checkpoint_aliases", {}) or {}
        if text in aliases:
            return aliases[text]
        wanted = text.strip().lower()
        for info in self._all_infos():
            names = {
                getattr(info, attr, None)
                for attr in ("title", "name", "name_for_extra", "model_name", "short_title", "filename")
            }
            names.discard(None)
            if wanted in {str(n).lower() for n in names} or wanted == os.path.basename(info.filename).lower():
                return info
        return None

    def available_names(self) -> list[str]:
        """The installed checkpoints' names, for messages that say what could have been meant."""
        return sorted(str(getattr(info, "name", info)) for info in self._all_infos())

    def checkpoint_for(self, info: Any, label: str | None = None) -> Checkpoint:
        checkpoint = Checkpoint(
            name=info.name,
            label=label or getattr(info, "name_for_extra", None) or info.name,
            # Not the absolute path: the saved grid's metadata travels, the user's folders need not.
            file=None,
            model_hash=getattr(info, "hash", None),
            sha256=self.known_sha256(info),
            architecture=architecture_of(info.filename),
        )
        self._infos[checkpoint.name] = info
        return checkpoint

    def known_sha256(self, info: Any) -> str | None:
        """The full sha256 the WebUI already has for a checkpoint: on its info, or in the WebUI's
        own hash cache (``cache.json``; keyed "checkpoint/<name>", valid while the file's mtime
        holds). Never computed here: the WebUI hashes a checkpoint itself when it loads it."""
        sha = getattr(info, "sha256", None)
        if sha:
            return str(sha)
        from_cache = getattr(self.webui.hashes, "sha256_from_cache", None)
        if callable(from_cache):
            try:
                sha = from_cache(info.filename, f"checkpoint/{info.name}")
            except Exception:  # a damaged cache must not fail the run
                sha = None
        return str(sha) if sha else None

    def checkpoints(self) -> list[Checkpoint]:
        return [self.checkpoint_for(info) for info in self._all_infos()]

    def resolve(self, names: list[str]) -> list[Checkpoint]:
        """The user's selection, in order. A name that matches no installed checkpoint stays in the
        list (it becomes a failed cell, with the reason); short labels are used where unique."""
        found: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for text in names:
            info = self.find_info(text)
            key = info.filename if info is not None else text
            if key not in seen:  # the same file selected twice (by title and by name) runs once
                seen.add(key)
                found.append((text, info))
        short = [getattr(info, "name_for_extra", None) or text if info else text for text, info in found]
        out: list[Checkpoint] = []
        for (text, info), label in zip(found, short, strict=True):
            if info is None:
                out.append(Checkpoint(name=text, label=text, architecture="unknown"))
            else:
                # Two files with one base name in different folders: their names tell them apart.
                out.append(self.checkpoint_for(info, info.name if short.count(label) > 1 else label))
        return out

    def file_of(self, checkpoint: Checkpoint) -> str | None:
        """The checkpoint's file on this machine (not recorded in the metadata: see checkpoint_for)."""
        info = self._infos.get(checkpoint.name)
        return getattr(info, "filename", None) if info is not None else None

    def fill_hashes(self, result: ProbeResult) -> None:
        """After the run: the sha256 of checkpoints the WebUI hashed while loading them."""
        items = []
        for item in result.items:
            info = self._infos.get(item.name)
            missing = item.sha256 is None and info is not None
            items.append(dataclasses.replace(item, sha256=self.known_sha256(info)) if missing else item)
        result.items = items

    def loaded_model(self) -> Any:
        # model_data holds the model without triggering a load (A1111's shared.sd_model would).
        data = getattr(self.sd_models, "model_data", None)
        if data is not None:
            return getattr(data, "sd_model", None)
        return getattr(self.webui.shared, "sd_model", None)

    def loaded_info(self) -> Any | None:
        return getattr(self.loaded_model(), "sd_checkpoint_info", None)

    def current_checkpoint(self) -> str | None:
        info = self.loaded_info()
        if info is None:
            # Forge loads lazily: nothing is loaded before the first generation; the checkpoint
            # selected in the UI is what the next generation would load.
            selected = getattr(self.webui.opts, CHECKPOINT_OPTION, None)
            info = self.find_info(selected) if selected else None
        return getattr(info, "name", None)

    # -- generation --------------------------------------------------------------------------------

    def generate(self, checkpoint: Checkpoint, spec: Any, seed: int) -> Generated:
        """One probe image: the batch of one."""
        return self.generate_many(checkpoint, spec, [seed])[0]

    def generate_many(self, checkpoint: Checkpoint, spec: Any, seeds: Sequence[int]) -> list[Generated]:
        """Several seeds of one checkpoint in one ``process_images`` call (``batch_size`` = the number
        of seeds, one iteration, the seeds as a list): one image per seed, in the seeds' order, each
        with its own infotext. A grid the WebUI puts before the images is skipped. Raises like a
        single image: :class:`CheckpointLoadError` when the checkpoint cannot be loaded (or is not
        SD1), :class:`ProbeInterrupted` on an interrupt (the whole batch is discarded: its images
        are cut short), ``RuntimeError`` on a skip or a missing image."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            return []
        info = self._infos.get(checkpoint.name)
        if info is None:
            raise CheckpointLoadError(f"{checkpoint.name!r} is not among the installed checkpoints")
        if not os.path.exists(info.filename):
            raise CheckpointLoadError(f"file not found: {info.filename}")
        state = self.webui.state
        pc = probe_processing(self.p, spec, seeds, info.name, opts=self.webui.opts)
        try:
            processed = self.webui.processing.process_images(pc)
        except Exception as exc:
            if getattr(state, "interrupted", False):
                raise ProbeInterrupted() from exc
            loaded = self.loaded_info()
            if loaded is None or getattr(loaded, "filename", None) != info.filename:
                forget_failed_forge_load(self.sd_models)
                raise CheckpointLoadError(f"loading failed: {error_text(exc)}") from exc
            raise
        if getattr(state, "interrupted", False):
            # Sampling was cut short: the images are not probe images and are discarded.
            raise ProbeInterrupted()
        if getattr(state, "skipped", False):
            state.skipped = False
            raise RuntimeError("skipped by the user (the image is incomplete)")
        images = list(processed.images or [])
        if not images:
            if getattr(state, "stopping_generation", False):
                raise ProbeInterrupted()
            raise RuntimeError("the WebUI returned no image")
        arch = loaded_model_architecture(self.loaded_model())
        if arch not in (None, "sd1", "unknown"):
            # A pickle (.ckpt) cannot be inspected before loading: its architecture shows now.
            reason = Checkpoint(checkpoint.name, architecture=arch).probe_skip_reason
            raise CheckpointLoadError(reason or arch)
        return self._outputs(processed, images, seeds)

    def _outputs(self, processed: Any, images: list[Any], seeds: list[int]) -> list[Generated]:
        """The images of ``processed`` mapped to ``seeds``: after the grid (``index_of_first_image``,
        or whatever precedes the last ``len(seeds)`` images), with each image's own infotext."""
        first = int(getattr(processed, "index_of_first_image", 0) or 0)
        if len(images) - first != len(seeds):
            if len(images) < len(seeds):
                raise RuntimeError(f"the WebUI returned {len(images)} images for {len(seeds)} seeds")
            first = len(images) - len(seeds)  # a grid the index does not account for
        used = [int(s) for s in getattr(processed, "all_seeds", None) or [] if isinstance(s, int)]
        if len(used) == len(seeds) and used != seeds:
            raise RuntimeError(f"the WebUI used the seeds {used} for {seeds}")
        infotexts = list(getattr(processed, "infotexts", None) or [])
        if len(infotexts) == len(images):  # one per image, the grid's included
            texts = infotexts[first:]
        elif len(infotexts) == len(seeds):
            texts = infotexts
        else:
            texts = [getattr(processed, "info", "") or ""] * len(seeds)
        vae = getattr(processed, "sd_vae_name", None) or "from the checkpoint"
        return [
            Generated(image=images[first + k], infotext=texts[k] or "", settings={"VAE in use": vae})
            for k in range(len(seeds))
        ]

    def progress(self, done: int, total: int, job: str) -> None:
        state = self.webui.state
        state.job_count = total
        state.job = job
        # process_images calls nextjob() itself once per image; cells that made no image (failed,
        # skipped) still count, so catch the counter up rather than calling nextjob() per cell.
        while getattr(state, "job_no", 0) < done:
            state.nextjob()

    def interrupted(self) -> bool:
        state = self.webui.state
        return bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))

    def environment(self) -> dict[str, str]:
        """Everything that changes pixels and that the probe records but does not force."""
        env = {"WebUI": self.webui.name, "Version": self.webui.version()}
        env.update(recorded_values(self.webui.opts, getattr(self.p, "override_settings", None)))
        env["Precision"] = self.webui.precision()
        env["Always-on scripts"] = "off during the probe"
        if self.cond_only:
            env[COND_ONLY_KEY] = self.cond_only
        env["cfgsim"] = cfgsim_version
        return env
