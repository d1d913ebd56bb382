"""CFG 1.0 similarity probe: the WebUI script (AUTOMATIC1111 1.8-1.10 with gradio 3.41, Forge with 4.40).

Select "CFG 1.0 similarity probe" in txt2img's Script dropdown, pick checkpoints, press Generate:
every checkpoint is run under one fixed probe (empty prompt, CFG 1 = no guidance, fixed seed) and
the pictures are compared. This is the only file of the extension that imports the WebUI
(``modules``) or gradio: it declares the ``Script`` and its ``ui()`` and hands the WebUI's modules
to :mod:`cfgsim.webui`, which does the rest and is tested against fakes.

Constraints from the WebUI that shape this file:

- Every top-level file in ``scripts/`` is executed and the extension root is on ``sys.path`` only
  while that happens, so ``cfgsim`` is imported here at module top, never lazily.
- ``ui()`` is called again inside ``gr.Blocks()`` to collect the API's default arguments: it must
  have no side effects. Its components' values reach ``run(p, *args)`` positionally; both sides
  derive from :data:`cfgsim.controls.CONTROLS`.
"""

from __future__ import annotations

import importlib
from typing import Any

import gradio as gr
from modules import images, processing, script_callbacks, scripts, sd_models, shared

# The WebUI puts the extension root on sys.path only while it loads scripts/: import cfgsim here.
from cfgsim import controls
from cfgsim.errors import InputError
from cfgsim.library.webui import panel_html as library_panel
from cfgsim.webui import WebUI, run_probe_script, settings, ui

TITLE = "CFG 1.0 similarity probe"


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:  # the module differs between A1111 versions and Forge
        return None


def webui() -> WebUI:
    """The WebUI's modules for :mod:`cfgsim.webui`. Looked up per run, after the WebUI has started
    (Forge's ``main_entry`` imports the whole UI)."""
    return WebUI(
        shared=shared,
        sd_models=sd_models,
        processing=processing,
        images=images,
        hashes=_optional("modules.hashes"),
        devices=_optional("modules.devices"),
        launch_utils=_optional("modules.launch_utils"),
        forge_main_entry=_optional("modules_forge.main_entry"),
        forge_version=_optional("modules_forge.forge_version"),
    )


def _checkpoint_choices() -> list[str]:
    return ui.checkpoint_choices(sd_models)


def _library_html(clear: bool = False) -> str:
    """The probe library's size line (reads only); ``clear``: the "Clear library" button."""
    return library_panel(shared, _optional("modules.paths_internal"), clear=clear)


class Script(scripts.Script):
    """The selectable txt2img script. See the module docstring."""

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return not is_img2img

    def ui(self, is_img2img: bool) -> list[Any]:
        """Components in :data:`cfgsim.controls.CONTROLS` order. No side effects: the API calls this
        again to collect default arguments."""
        made: dict[str, Any] = {}

        def make(name: str, **extra: Any) -> Any:
            ctl = controls.control(name)
            kw = {
                "label": ctl.label,
                "elem_id": ctl.elem_id,
                "elem_classes": [ctl.elem_class],
                "tooltip": ctl.hint,
            }
            kw.update(extra)
            factory = {
                "checkpoints": lambda: gr.Dropdown(
                    choices=_checkpoint_choices(), value=[], multiselect=True, **kw
                ),
                "choice": lambda: gr.Dropdown(choices=list(ctl.choices), value=ctl.default, **kw),
                "index": lambda: gr.Dropdown(
                    choices=list(ctl.choices), value=ctl.default, type="index", **kw
                ),
                "checkpoint": lambda: gr.Dropdown(choices=[], value=None, allow_custom_value=True, **kw),
                "text": lambda: gr.Textbox(value=ctl.default, lines=1, **kw),
                "image": lambda: gr.Image(type="pil", **kw),
                "metrics": lambda: gr.CheckboxGroup(
                    choices=list(ctl.choices), value=settings.default_metric_labels(shared.opts), **kw
                ),
                "bool": lambda: gr.Checkbox(value=ctl.default, **kw),
                "steps": lambda: gr.Slider(
                    minimum=ctl.minimum, maximum=ctl.maximum, step=1, value=ctl.default, **kw
                ),
            }[ctl.kind]
            made[name] = factory()
            return made[name]

        row = {"elem_classes": ["cfgsim-row"]}
        with gr.Group(elem_id="cfgsim_panel", elem_classes=["cfgsim-panel"]):
            with gr.Row(**row):
                checkpoints = make("checkpoints")
                self._refresh_button(checkpoints)
            with gr.Row(**row):
                preset, seeds = make("preset"), make("seeds")
            gr.HTML(value=ui.AXES_HTML)
            with gr.Row(**row):
                mode = make("reference_mode")
                reference_checkpoint = make("reference_checkpoint", visible=False)
            image = make("reference_image", visible=False)
            info = gr.HTML(value="", elem_id="cfgsim_reference_info", elem_classes=["cfgsim-reference-info"])
            with gr.Row(**row):
                for name in ("metrics", "overlays", "include_images"):
                    make(name)
            preview = make("preview_steps")
            make("compare_weights")
            with gr.Row(**row):
                make("with_library")
                # A callable: read again at every page load (a plain value is frozen at startup).
                library_size = gr.HTML(value=_library_html, elem_id="cfgsim_library_info")
                clear_library = gr.Button(value="Clear library", elem_id="cfgsim_library_clear")
            gr.HTML(value=ui.hints_html(), elem_id="cfgsim_hints", elem_classes=["cfgsim-hints-box"])

        checkpoints.change(
            fn=lambda selected, current: gr.update(**ui.selection_changed(selected, current)),
            inputs=[checkpoints, reference_checkpoint],
            outputs=[reference_checkpoint],
        )
        mode.change(
            fn=lambda index: [gr.update(**u) for u in ui.mode_changed(index)],
            inputs=[mode],
            outputs=[reference_checkpoint, image],
        )
        preset.change(fn=lambda name: gr.update(**ui.preset_changed(name)), inputs=[preset], outputs=[seeds])
        clear_library.click(fn=lambda: _library_html(clear=True), inputs=[], outputs=[library_size])
        for component in (preset, seeds, mode, image, preview):
            component.change(
                fn=ui.reference_info_html, inputs=[preset, seeds, mode, image, preview], outputs=[info]
            )
        return [made[name] for name in controls.CONTROL_NAMES]

    def _refresh_button(self, checkpoints: Any) -> Any:
        """The WebUI's own refresh button (re-scans the model folder), or a plain one."""
        try:
            from modules import shared_items, ui_common

            return ui_common.create_refresh_button(
                checkpoints,
                shared_items.refresh_checkpoints,
                lambda: {"choices": _checkpoint_choices()},
                "cfgsim_checkpoints_refresh",
            )
        except (ImportError, AttributeError):
            button = gr.Button(
                value="\U0001f504", elem_id="cfgsim_checkpoints_refresh", elem_classes=["cfgsim-refresh"]
            )

            def refresh() -> Any:
                sd_models.list_models()
                return gr.update(choices=_checkpoint_choices())

            button.click(fn=refresh, inputs=[], outputs=[checkpoints])
            return button

    def run(self, p: Any, *args: Any) -> Any:
        """The probe for the checkpoints selected in ``args`` (positional, in ``ui()`` order)."""
        expected = getattr(self, "args_to", 0) - getattr(self, "args_from", 0)
        if expected and not args and len(getattr(p, "script_args", None) or ()) < getattr(self, "args_to", 0):
            # Forge computes the API's default arguments after its routes already answer: a call in
            # that window gets its script_args at the wrong positions and this script none.
            raise InputError(
                "the WebUI passed no arguments to the script (was the API called while the WebUI was "
                "still starting?); call it again"
            )
        values = controls.unpack(args, defaults={"metrics": settings.default_metric_labels(shared.opts)})
        cfg_denoiser = _optional("modules.sd_samplers_cfg_denoiser")  # the cond-only hook's target
        return run_probe_script(p, values, webui(), cfg_denoiser=cfg_denoiser)


script_callbacks.on_ui_settings(lambda: settings.register_settings(shared.opts, shared.OptionInfo, gr))
