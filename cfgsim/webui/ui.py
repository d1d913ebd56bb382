"""What the script's ``ui()`` shows and how its controls react, without gradio.

Event handlers return the keyword arguments of a component update; the script wraps them in
``gr.update(**kwargs)`` (the same call in gradio 3.41 and 4.40).
"""

from __future__ import annotations

from typing import Any

from cfgsim import controls, report
from cfgsim.errors import InputError
from cfgsim.spec import format_seeds, get_preset

AXES_HTML = '<p class="cfgsim-axes">Grid: one column per checkpoint, one row per seed.</p>'


def checkpoint_choices(sd_models: Any) -> list[str]:
    """The checkpoint dropdown's choices: the WebUI's own titles."""
    try:
        return list(sd_models.checkpoint_tiles())
    except Exception:  # an empty list beats a script that fails to show
        return [
            getattr(info, "title", str(info)) for info in getattr(sd_models, "checkpoints_list", {}).values()
        ]


def reference_info_html(preset: str, seeds: str, mode: Any, image: Any, preview_steps: Any = 0) -> str:
    """The box under the reference controls: how the probe will differ from the preset."""
    try:
        mode_index = controls.control("reference_mode").normalise(mode)
        steps = controls.control("preview_steps").normalise(preview_steps)
        choice = controls.choose_spec(
            preset,
            seeds or "",
            steps,
            reference_mode=mode_index,
            reference_image=controls.decode_image(image, what=controls.control("reference_image").label),
        )
    except InputError as exc:
        return f'<div class="cfgsim-deviations cfgsim-error">{report.esc(exc)}</div>'
    return report.deviations_html(choice.deviations, choice.notes, preset=choice.preset)


def selection_changed(selected: list[str] | None, current: str | None) -> dict[str, Any]:
    """The reference-checkpoint dropdown offers the selected checkpoints."""
    selected = list(selected or [])
    value = current if current in selected else (selected[0] if selected else None)
    return {"choices": selected, "value": value}


def mode_changed(index: Any) -> list[dict[str, Any]]:
    """Show the reference checkpoint or the reference image, as the mode says."""
    try:
        index = controls.control("reference_mode").normalise(index)
    except InputError:
        index = controls.REFERENCE_NONE
    return [
        {"visible": index == controls.REFERENCE_CHECKPOINT},
        {"visible": index == controls.REFERENCE_IMAGE},
    ]


def preset_changed(name: str) -> dict[str, Any]:
    """A preset brings its own seeds into the seeds box."""
    return {"value": format_seeds(get_preset(name).seeds)}


def hints_html() -> str:
    return report.hints_html(controls.hints(), controls.hints_by_elem_id())
