"""A fake WebUI, per test: just the parts of ``modules`` (and gradio) that scripts/cfgsim_probe.py touches.

Every fake module is a ``types.ModuleType`` put into ``sys.modules`` with ``monkeypatch.setitem``,
so it disappears after the test; the script is then loaded from its file under a fresh module name.
The fakes behave like A1111 1.8 where the script depends on it:

- ``processing.process_images`` applies ``p.override_settings`` to ``opts`` (dropping a checkpoint
  override it cannot resolve, loading the checkpoint it names), restores the options afterwards
  but leaves the model loaded, calls ``state.nextjob()``, and returns a ``Processed`` with one
  deterministic image per (checkpoint family, seed, settings). It records every ``p`` it got.
- ``images.save_image`` writes a real file: PNG text chunks = ``existing_info`` + ``parameters``.
- ``sd_models`` has ``CheckpointInfo``-like objects over real (tiny) ``.safetensors`` files whose
  headers say SD1 or SDXL.

``webui(forge=True)`` gives the Forge variant: lazy loading (nothing loaded at start),
``forge_model_reload`` instead of a working ``reload_model_weights``, and ``p.scheduler``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
import struct
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cfgsim_probe.py"

# Checkpoint name → (family, architecture). One family = one lineage: same picture per seed.
FAMILIES = {"base": 1, "tuned": 1, "merge": 1, "other": 2, "xl": 3, "broken": 4, "pickled": 5}
ARCHITECTURES = {"xl": "sdxl"}

# The probe as the ground truth defines it: the fake makes the family's picture only under it, so a
# setting the script forgot to force shows up as a different picture.
PROBE = {"prompt": "", "sampler_name": "Euler", "cfg_scale": 1.0, "clip": 2, "width": 512, "height": 512}

_counter = itertools.count()


# -- gradio ----------------------------------------------------------------------------------------


def update(**kwargs: Any) -> dict[str, Any]:
    return {"__type__": "update", **kwargs}


class Component:
    """A gradio component: keeps its constructor arguments and event handlers, renders nothing."""

    # Arguments both gradio 3.41 and 4.40 accept on every component, plus the WebUI's tooltip patch.
    COMMON: ClassVar[set[str]] = {
        "label",
        "value",
        "elem_id",
        "elem_classes",
        "visible",
        "interactive",
        "tooltip",
    }
    ALLOWED: ClassVar[set[str]] = set()
    # Set by a test to collect every component made (layout ones included).
    registry: ClassVar[list[Component] | None] = None

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - self.COMMON - self.ALLOWED
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected arguments {sorted(unknown)}")
        self.kwargs = kwargs
        self.value = kwargs.get("value")
        self.label = kwargs.get("label")
        self.elem_id = kwargs.get("elem_id")
        self.events: list[tuple[str, Callable, list, list]] = []
        if Component.registry is not None:
            Component.registry.append(self)

    def _event(self, name: str) -> Callable:
        def register(fn: Callable, inputs: list | None = None, outputs: list | None = None, **_: Any) -> None:
            self.events.append((name, fn, list(inputs or []), list(outputs or [])))

        return register

    def __getattr__(self, name: str) -> Any:
        if name in ("change", "click", "upload", "select", "input", "clear"):
            return self._event(name)
        raise AttributeError(name)


class Dropdown(Component):
    ALLOWED: ClassVar[set[str]] = {"choices", "multiselect", "type", "allow_custom_value"}


class Textbox(Component):
    ALLOWED: ClassVar[set[str]] = {"lines", "placeholder"}


class ImageComponent(Component):
    ALLOWED: ClassVar[set[str]] = {"type", "image_mode", "height"}


class CheckboxGroup(Component):
    ALLOWED: ClassVar[set[str]] = {"choices"}


class Checkbox(Component):
    pass


class Slider(Component):
    ALLOWED: ClassVar[set[str]] = {"minimum", "maximum", "step"}


class HTML(Component):
    pass


class Button(Component):
    ALLOWED: ClassVar[set[str]] = {"variant"}


class Layout(Component):
    ALLOWED: ClassVar[set[str]] = {"variant", "open"}

    def __enter__(self) -> Layout:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def fake_gradio() -> types.ModuleType:
    gr = types.ModuleType("gradio")
    gr.Dropdown, gr.Textbox, gr.Image, gr.CheckboxGroup = Dropdown, Textbox, ImageComponent, CheckboxGroup
    gr.Checkbox, gr.Slider, gr.HTML, gr.Button = Checkbox, Slider, HTML, Button
    gr.Group = gr.Row = gr.Column = gr.Accordion = Layout
    gr.Radio = type("Radio", (Component,), {"ALLOWED": {"choices"}})
    gr.update = update
    gr.Blocks = Layout
    return gr


# -- checkpoints -----------------------------------------------------------------------------------


def write_safetensors(path: Path, architecture: str) -> None:
    """A tiny but valid .safetensors file whose key names say ``architecture``."""
    if architecture == "sdxl":
        keys = [
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.ln_final.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
        ]
    else:
        keys = [
            "cond_stage_model.transformer.text_model.final_layer_norm.weight",
            "model.diffusion_model.input_blocks.0.0.weight",
            "first_stage_model.decoder.conv_in.weight",
        ]
    # Values differ per file (seeded by its name), so the files' weights are really different.
    seed = int(hashlib.sha256(path.name.encode()).hexdigest()[:8], 16)
    values = [((seed >> (4 * i)) % 97 + 1) / 10 for i in range(len(keys))]
    header = {
        k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)
    }
    # Padded past 1 MiB + 64 KiB so the legacy hash (64 KiB at offset 1 MiB) sees content per file;
    # the padding is a tensor of its own, so the file stays valid for safetensors' strict reader.
    padding = hashlib.sha256(path.name.encode()).digest() * 40000
    start = 4 * len(keys)
    header["cfgsim_test_padding"] = {
        "dtype": "U8",
        "shape": [len(padding)],
        "data_offsets": [start, start + len(padding)],
    }
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data to 8 bytes
    body = struct.pack(f"<{len(values)}f", *values) + padding
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


class CheckpointInfo:
    """Like A1111's sd_models.CheckpointInfo: name, title with short hash, aliases.

    ``hashed=False`` is a checkpoint the WebUI has never hashed (no entry in its hash cache): no
    sha256 until :meth:`calculate_shorthash`, which the WebUI calls when it loads the checkpoint.
    """

    def __init__(self, filename: Path, models_dir: Path, *, hashed: bool = True) -> None:
        self.filename = str(filename)
        self.name = os.path.relpath(filename, models_dir)
        self.name_for_extra = filename.stem
        self.model_name = filename.stem.replace("/", "_")
        with open(filename, "rb") as file:
            file.seek(0x100000)
            self.hash = hashlib.sha256(file.read(0x10000)).hexdigest()[:8]
        self.sha256 = None
        self.shorthash = None
        self.title = self.name
        self.short_title = self.name_for_extra
        self.ids = [self.hash, self.model_name, self.name, self.name_for_extra, f"{self.name} [{self.hash}]"]
        if hashed:
            self.calculate_shorthash()

    def calculate_shorthash(self) -> str:
        if self.sha256 is None:
            self.sha256 = hashlib.sha256(Path(self.filename).read_bytes()).hexdigest()
            self.shorthash = self.sha256[:10]
            self.title = f"{self.name} [{self.shorthash}]"
            self.short_title = f"{self.name_for_extra} [{self.shorthash}]"
            self.ids += [self.title, self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]"]
        return self.shorthash


class FakeModel:
    def __init__(self, info: CheckpointInfo, architecture: str) -> None:
        self.sd_checkpoint_info = info
        self.sd_model_hash = info.shorthash
        self.is_sdxl = architecture == "sdxl"
        self.is_sd2 = architecture == "sd2"
        self.is_sd1 = architecture == "sd1"


class FakeInitialModel:
    """Forge's placeholder before the first generation: no checkpoint info."""


# -- options and state -----------------------------------------------------------------------------


class OptionInfo:
    def __init__(
        self,
        default: Any = None,
        label: str = "",
        component: Any = None,
        component_args: Any = None,
        onchange: Any = None,
        section: Any = None,
        **kwargs: Any,
    ) -> None:
        self.default, self.label, self.component, self.component_args = (
            default,
            label,
            component,
            component_args,
        )
        self.section = section
        self.kwargs = kwargs


class Options:
    """A1111's Options: values in ``data``, attribute access, defaults from ``data_labels``."""

    def __init__(self, data: dict[str, Any]) -> None:
        object.__setattr__(self, "data", dict(data))
        object.__setattr__(self, "data_labels", {k: OptionInfo(v) for k, v in data.items()})

    def __getattr__(self, item: str) -> Any:
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def set(self, key: str, value: Any, is_api: bool = False, run_callbacks: bool = True) -> bool:
        _ = self.data_labels[key]  # like A1111: KeyError for an option it does not have
        self.data[key] = value
        return True

    def add_option(self, key: str, info: OptionInfo) -> None:
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)


class State:
    def __init__(self) -> None:
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.job_timestamp = "20240302000000"
        self.jobs: list[tuple[int, int, str]] = []

    def nextjob(self) -> None:
        self.job_no += 1


OPTIONS = {
    "sd_model_checkpoint": "",
    "CLIP_stop_at_last_layers": 1,
    "token_merging_ratio": 0.3,
    "token_merging_ratio_hr": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "randn_source": "CPU",
    "emphasis": "Original",
    "sd_noise_schedule": "Default",
    "sgm_noise_multiplier": False,
    "always_discard_next_to_last_sigma": False,
    "s_min_uncond": 0.0,
    "sd_vae": "Automatic",
    "grid_save": True,
    "grid_format": "png",
    "grid_extended_filename": False,
    "enable_pnginfo": True,
    "return_grid": True,
    "samples_save": True,
    "outdir_txt2img_grids": "",
}


# -- processing ------------------------------------------------------------------------------------


class Processing:
    """The fields of StableDiffusionProcessingTxt2Img the script reads or writes."""

    def __init__(self, **kwargs: Any) -> None:
        self.prompt = "a cat"
        self.negative_prompt = "ugly"
        self.styles = ["my style"]
        self.seed = -1
        self.subseed = 99
        self.subseed_strength = 0.5
        self.seed_resize_from_w = 256
        self.seed_resize_from_h = 256
        self.sampler_name = "DPM++ 2M"
        self.batch_size = 4
        self.n_iter = 3
        self.steps = 20
        self.cfg_scale = 7.0
        self.width = 768
        self.height = 640
        self.restore_faces = True
        self.tiling = True
        self.do_not_save_samples = False
        self.do_not_save_grid = False
        self.extra_generation_params = {"Lora hashes": "x"}
        self.override_settings = {"CLIP_stop_at_last_layers": 1}
        self.override_settings_restore_afterwards = True
        self.comments = {}
        self.enable_hr = True
        self.refiner_checkpoint = "refiner.safetensors"
        self.refiner_switch_at = 0.8
        self.token_merging_ratio = 0.5
        self.token_merging_ratio_hr = 0.5
        self.s_churn = 0.4
        self.eta = 0.7
        self.scripts = object()
        self.outpath_grids = None
        self.outpath_samples = None
        self.sd_model_name = None
        self.sd_model_hash = None
        self.sd_vae_name = None
        self.sd_vae_hash = None
        self.all_prompts = None
        self.all_seeds = None
        for key, value in kwargs.items():
            setattr(self, key, value)


class Processed:
    """A1111 1.8's Processed, reduced to what the script and the API read (js() included)."""

    def __init__(
        self,
        p: Any,
        images_list: list,
        seed: int = -1,
        info: str = "",
        subseed: Any = None,
        all_prompts: Any = None,
        all_negative_prompts: Any = None,
        all_seeds: Any = None,
        all_subseeds: Any = None,
        index_of_first_image: int = 0,
        infotexts: Any = None,
        comments: str = "",
    ) -> None:
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.info = info
        self.comments = "".join(f"{comment}\n" for comment in p.comments)
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.sd_model_name = p.sd_model_name
        self.sd_vae_name = p.sd_vae_name
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or [seed]
        self.all_subseeds = all_subseeds or [-1]
        self.infotexts = infotexts or [info]

    def js(self) -> str:
        return json.dumps(
            {
                "prompt": self.all_prompts[0],
                "all_prompts": self.all_prompts,
                "seed": self.seed,
                "all_seeds": self.all_seeds,
                "width": self.width,
                "height": self.height,
                "sampler_name": self.sampler_name,
                "cfg_scale": self.cfg_scale,
                "steps": self.steps,
                "extra_generation_params": self.extra_generation_params,
                "index_of_first_image": self.index_of_first_image,
                "infotexts": self.infotexts,
            }
        )


def family_picture(family: int, seed: int, variant: int, size: tuple[int, int]) -> Image.Image:
    """Blocks of colour from (family, seed), smoothly upscaled; ``variant`` != 0 changes them."""
    rng = np.random.default_rng(family * 1_000_003 + seed * 7 + variant * 13)
    small = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize(size, Image.Resampling.BICUBIC)


@dataclass
class FakeWebUI:
    """The fake WebUI of one test, and the knobs tests turn."""

    root: Path
    forge: bool = False
    modules: dict[str, types.ModuleType] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    reloads: list[str] = field(default_factory=list)
    fail_load: set[str] = field(default_factory=set)
    fail_cell: set[tuple[str, int]] = field(default_factory=set)
    on_call: Callable[[int, Any], None] | None = None
    saved: list[tuple[str, bool, Any]] = field(default_factory=list)
    script: Any = None

    @property
    def opts(self) -> Options:
        return self.modules["modules.shared"].opts

    @property
    def state(self) -> State:
        return self.modules["modules.shared"].state

    @property
    def sd_models(self) -> types.ModuleType:
        return self.modules["modules.sd_models"]

    def info(self, stem: str) -> CheckpointInfo:
        return next(i for i in self.sd_models.checkpoints_list.values() if i.name_for_extra == stem)

    def loaded(self) -> str | None:
        info = getattr(self.sd_models.model_data.sd_model, "sd_checkpoint_info", None)
        return info.name_for_extra if info else None

    def load(self, info: CheckpointInfo) -> None:
        """Load a checkpoint like A1111: on failure the previous model stays and the error propagates."""
        if info.name_for_extra in self.fail_load:
            raise RuntimeError(f"Error loading {info.filename}: invalid load key")
        self.loads.append(info.name_for_extra)
        info.calculate_shorthash()  # A1111's load_model and Forge's forge_model_reload hash it
        for alias in info.ids:
            self.sd_models.checkpoint_aliases.setdefault(alias, info)
        arch = ARCHITECTURES.get(info.name_for_extra, "sd1")
        self.sd_models.model_data.sd_model = FakeModel(info, arch)
        if not self.forge:  # A1111's load_model writes the loaded checkpoint's title into opts.data
            self.opts.data["sd_model_checkpoint"] = info.title

    def process_images(self, p: Any) -> Processed:
        opts = self.opts
        index = len(self.received)
        stored = {k: opts.data[k] for k in p.override_settings if k in opts.data}
        try:
            wanted = p.override_settings.get("sd_model_checkpoint")
            if self.sd_models.checkpoint_aliases.get(wanted) is None:
                p.override_settings.pop("sd_model_checkpoint", None)
            self.set_config(p.override_settings)
            selected = self.sd_models.checkpoint_aliases.get(opts.sd_model_checkpoint)
            if self.forge:
                self.sd_models.forge_model_reload()
            else:
                current = getattr(self.sd_models.model_data.sd_model, "sd_checkpoint_info", None)
                if selected is not None and selected is not current:
                    self.load(selected)
            info = self.sd_models.model_data.sd_model.sd_checkpoint_info
            self.received.append(
                {
                    "p": p,
                    "checkpoint": info.name_for_extra,
                    "options": dict(opts.data),
                    "override_settings": p.override_settings,
                }
            )
            if self.on_call is not None:
                self.on_call(index, p)
            seeds = list(p.seed) if isinstance(p.seed, list) else [p.seed]  # a list: one image per seed
            if any((info.name_for_extra, seed) in self.fail_cell for seed in seeds):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            images = [self.picture(info.name_for_extra, p, opts, seed) for seed in seeds]
            self.state.nextjob()
            p.sd_model_name, p.sd_vae_name = info.name_for_extra, None
            infotexts = [
                f"Negative prompt: {p.negative_prompt}\nSteps: {p.steps}, Sampler: {p.sampler_name}, "
                f"CFG scale: {p.cfg_scale:g}, Seed: {seed}, Size: {p.width}x{p.height}, "
                f"Model hash: {info.hash}, Model: {info.name_for_extra}, "
                f"Clip skip: {opts.CLIP_stop_at_last_layers}"
                for seed in seeds
            ]
            return Processed(p, images, seeds[0], infotexts[0], all_seeds=seeds, infotexts=infotexts)
        finally:
            if self.forge:
                self.set_config(stored)  # Forge restores through set_config as well
            else:
                for key, value in stored.items():
                    opts.data[key] = value

    def set_config(self, values: dict[str, Any]) -> None:
        """A1111: ``opts.set`` per key. Forge (modules/sysinfo.set_config): the checkpoint goes
        through ``main_entry.checkpoint_change``, which refreshes the loading parameters."""
        opts = self.opts
        refresh = False
        for key, value in values.items():
            if self.forge and value == opts.data.get(key):
                continue
            if self.forge and key == "sd_model_checkpoint":
                main_entry = self.modules["modules_forge.main_entry"]
                refresh = main_entry.checkpoint_change(value, refresh=False) or refresh
            else:
                opts.set(key, value, is_api=True, run_callbacks=False)
        if refresh:
            self.modules["modules_forge.main_entry"].refresh_model_loading_parameters()

    def context(self) -> Any:
        """The fakes as :class:`cfgsim.webui.WebUI`, for tests of cfgsim.webui without the script."""
        from cfgsim.webui import WebUI

        return WebUI(
            shared=self.modules["modules.shared"],
            sd_models=self.sd_models,
            processing=self.modules["modules.processing"],
            images=self.modules["modules.images"],
            hashes=self.modules["modules.hashes"],
            forge_main_entry=self.modules.get("modules_forge.main_entry"),
            forge_version=self.modules.get("modules_forge.forge_version"),
        )

    def picture(self, name: str, p: Any, opts: Options, seed: int | None = None) -> Image.Image:
        family = FAMILIES.get(name, 9)
        settings = {
            "prompt": p.prompt,
            "sampler_name": p.sampler_name,
            "cfg_scale": p.cfg_scale,
            "clip": opts.CLIP_stop_at_last_layers,
            "width": p.width,
            "height": p.height,
        }
        variant = 0 if settings == PROBE else 1 + sum(settings[k] != PROBE[k] for k in PROBE)
        image = family_picture(
            family, p.seed if seed is None else seed, variant, (p.width // 8, p.height // 8)
        )
        if name == "tuned":  # a fine-tune: the family's picture, slightly changed
            arr = np.asarray(image).astype(int)
            arr[::3, ::3] = 255 - arr[::3, ::3]
            image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        return image

    def save_image(
        self,
        image: Image.Image,
        path: str,
        basename: str,
        seed: Any = None,
        prompt: Any = None,
        extension: str = "png",
        info: Any = None,
        short_filename: bool = False,
        no_prompt: bool = False,
        grid: bool = False,
        pnginfo_section_name: str = "parameters",
        p: Any = None,
        existing_info: Any = None,
        forced_filename: Any = None,
        suffix: str = "",
        save_to_dirs: Any = None,
    ) -> tuple[str, None]:
        """Like modules.images.save_image: numbered name in ``path``; PNG text = existing_info + info."""
        os.makedirs(path, exist_ok=True)
        number = len([n for n in os.listdir(path) if n.startswith(basename)])
        fullfn = os.path.join(path, f"{basename}-{number:04}.{extension}")
        if extension.lower() == "png":
            pnginfo = None
            if self.opts.enable_pnginfo:
                chunks = dict(existing_info or {})
                chunks[pnginfo_section_name] = info
                pnginfo = PngImagePlugin.PngInfo()
                for key, value in chunks.items():
                    pnginfo.add_text(key, str(value))
            image.save(fullfn, format="PNG", pnginfo=pnginfo)
        else:
            image.convert("RGB").save(
                fullfn, format={"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}[extension]
            )
        self.saved.append((fullfn, grid, p))
        return fullfn, None

    def load_script(self) -> types.ModuleType:
        """Load scripts/cfgsim_probe.py under a fresh module name (the WebUI executes the file)."""
        name = f"cfgsim_probe_under_test_{next(_counter)}"
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def build_webui(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    forge: bool = False,
    checkpoints: tuple[str, ...] = ("base", "tuned", "other", "xl"),
    loaded: str | None = "base",
    unhashed: tuple[str, ...] = (),
) -> FakeWebUI:
    web = FakeWebUI(root=root, forge=forge)
    models_dir = root / "models" / "Stable-diffusion"
    models_dir.mkdir(parents=True)
    for stem in checkpoints:
        write_safetensors(models_dir / f"{stem}.safetensors", ARCHITECTURES.get(stem, "sd1"))

    modules_pkg = types.ModuleType("modules")
    modules_pkg.__path__ = []  # a package, so "from modules import x" looks at attributes first

    shared = types.ModuleType("modules.shared")
    shared.opts = Options(OPTIONS)
    shared.state = State()
    shared.cmd_opts = types.SimpleNamespace(
        no_half=False, no_half_vae=True, upcast_sampling=False, precision="autocast"
    )
    shared.OptionInfo = OptionInfo

    sd_models = types.ModuleType("modules.sd_models")
    sd_models.checkpoints_list = {}
    sd_models.checkpoint_aliases = {}
    for stem in checkpoints:
        info = CheckpointInfo(models_dir / f"{stem}.safetensors", models_dir, hashed=stem not in unhashed)
        sd_models.checkpoints_list[info.title] = info
        for alias in info.ids:
            sd_models.checkpoint_aliases[alias] = info
    sd_models.model_data = types.SimpleNamespace(
        sd_model=FakeInitialModel() if forge else None, forge_hash="", forge_loading_parameters={}
    )

    def select_checkpoint() -> CheckpointInfo:
        """Like sd_models.select_checkpoint: the option's checkpoint, else the first one."""
        found = sd_models.checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
        return found or next(iter(sd_models.checkpoints_list.values()))

    sd_models.select_checkpoint = select_checkpoint
    sd_models.checkpoint_tiles = lambda use_short=False: [
        (i.short_title if use_short else (i.name if forge else i.title))
        for i in sd_models.checkpoints_list.values()
    ]
    sd_models.list_models = lambda: None

    def reload_model_weights(sd_model: Any = None, info: Any = None, forced_reload: bool = False) -> None:
        if forge:
            return  # a no-op in Forge
        selected = info or sd_models.select_checkpoint()  # like A1111's reload_model_weights
        web.reloads.append(selected.name_for_extra)
        if getattr(sd_models.model_data.sd_model, "sd_checkpoint_info", None) is not selected:
            web.load(selected)

    sd_models.reload_model_weights = reload_model_weights
    if forge:

        def forge_model_reload() -> tuple[Any, bool]:
            """Like Forge's sd_models.forge_model_reload: loads what ``forge_loading_parameters``
            name, and nothing while they print like the last load's (``forge_hash``); a failed load
            leaves no model and the old hash behind (Forge's own behaviour)."""
            data = sd_models.model_data
            current_hash = str(data.forge_loading_parameters)
            if data.forge_hash == current_hash:
                if data.sd_model is None:
                    raise AttributeError("'NoneType' object has no attribute 'sd_checkpoint_info'")
                return data.sd_model, False
            selected = data.forge_loading_parameters["checkpoint_info"]
            web.reloads.append(selected.name_for_extra)
            data.sd_model = None  # Forge unloads the old model first
            web.load(selected)
            data.forge_hash = current_hash
            return data.sd_model, True

        sd_models.forge_model_reload = forge_model_reload

    processing = types.ModuleType("modules.processing")
    processing.process_images = web.process_images
    processing.Processed = Processed
    processing.StableDiffusionProcessingTxt2Img = Processing
    # What both WebUIs write as "Version:" (launch.git_tag(); Forge prefixes its own version).
    processing.program_version = lambda: "f2.0.1v1.10.1-1.10.1" if forge else "v1.8.0-RC"

    hashes = types.ModuleType("modules.hashes")
    hashes.cache = {}  # the WebUI's cache.json "hashes" section: title → {sha256, mtime}

    def sha256_from_cache(filename: str, title: str, use_addnet_hash: bool = False) -> str | None:
        entry = hashes.cache.get(title)
        if entry is None or os.path.getmtime(filename) > entry.get("mtime", 0):
            return None
        return entry.get("sha256")

    hashes.sha256_from_cache = sha256_from_cache

    images = types.ModuleType("modules.images")
    images.save_image = web.save_image

    script_callbacks = types.ModuleType("modules.script_callbacks")
    script_callbacks.registered = []
    script_callbacks.on_ui_settings = lambda fn, **_: script_callbacks.registered.append(fn)

    scripts = types.ModuleType("modules.scripts")

    class Script:
        is_txt2img = True
        is_img2img = False

        def title(self) -> str:
            raise NotImplementedError

    scripts.Script = Script
    scripts.basedir = lambda: str(ROOT)

    for name, module in {
        "modules": modules_pkg,
        "modules.shared": shared,
        "modules.sd_models": sd_models,
        "modules.processing": processing,
        "modules.images": images,
        "modules.hashes": hashes,
        "modules.script_callbacks": script_callbacks,
        "modules.scripts": scripts,
    }.items():
        web.modules[name] = module
        if name != "modules":
            setattr(modules_pkg, name.split(".", 1)[1], module)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "gradio", fake_gradio())
    # Forge is told apart by its own package; the fake A1111 must not see a real one.
    if forge:
        forge_pkg = types.ModuleType("modules_forge")
        forge_pkg.__path__ = []
        forge_pkg.__spec__ = importlib.util.spec_from_loader("modules_forge", loader=None, is_package=True)
        forge_version = types.ModuleType("modules_forge.forge_version")
        forge_version.version = "2.0.1v1.10.1"  # modules_forge/forge_version.py
        forge_pkg.forge_version = forge_version
        main_entry = types.ModuleType("modules_forge.main_entry")
        main_entry.refreshed = []

        def refresh_model_loading_parameters() -> None:
            """Like Forge's: the checkpoint the option names becomes what the next load loads."""
            main_entry.refreshed.append(True)
            sd_models.model_data.forge_loading_parameters = dict(
                checkpoint_info=sd_models.select_checkpoint(), additional_modules=[], unet_storage_dtype=None
            )

        def checkpoint_change(name: str, save: bool = True, refresh: bool = True) -> bool:
            new_info = sd_models.checkpoint_aliases.get(name)
            if new_info is sd_models.checkpoint_aliases.get(shared.opts.data.get("sd_model_checkpoint", "")):
                return False
            shared.opts.set("sd_model_checkpoint", name)
            if refresh:
                refresh_model_loading_parameters()
            return True

        main_entry.refresh_model_loading_parameters = refresh_model_loading_parameters
        main_entry.checkpoint_change = checkpoint_change
        forge_pkg.main_entry = main_entry
        for name, module in {
            "modules_forge": forge_pkg,
            "modules_forge.forge_version": forge_version,
            "modules_forge.main_entry": main_entry,
        }.items():
            web.modules[name] = module
            monkeypatch.setitem(sys.modules, name, module)
    else:
        monkeypatch.delitem(sys.modules, "modules_forge", raising=False)

    if loaded:
        info = web.info(loaded)
        shared.opts.data["sd_model_checkpoint"] = info.title
        if not forge:
            web.load(info)
            web.loads.clear()
    if forge:
        web.modules["modules_forge.main_entry"].refresh_model_loading_parameters()  # Forge's startup
    web.script = web.load_script()
    return web


@pytest.fixture
def webui(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeWebUI]:
    """``webui(**options)`` → a :class:`FakeWebUI` installed for this test (see :func:`build_webui`)."""
    count = itertools.count()

    def make(**kwargs: Any) -> FakeWebUI:
        return build_webui(tmp_path / f"webui{next(count)}", monkeypatch, **kwargs)

    return make


@pytest.fixture
def p(tmp_path: Path) -> Processing:
    """A txt2img ``p`` holding everything a user could have set that the probe must override."""
    return Processing(outpath_grids=str(tmp_path / "grids"), outpath_samples=str(tmp_path / "samples"))


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Checkpoint hashes are cached in the user's cache folder: tests use a folder of their own."""
    monkeypatch.setenv("CFGSIM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cfgsim-cache"))
