"""One probe run inside the WebUI: ``Script.run`` minus the imports of the WebUI.

Resolve the selection, choose the spec, run :func:`cfgsim.probe.run_probe` over a
:class:`~cfgsim.webui.host.WebUIHost` with everything restored afterwards, draw, save the grid the
way the WebUI saves its own, and build the ``Processed`` the WebUI shows and the API returns.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from cfgsim import controls, metadata, report
from cfgsim.compare import build_metrics
from cfgsim.errors import CfgsimError, InputError
from cfgsim.host import Checkpoint
from cfgsim.infotext import Infotext
from cfgsim.metrics.clip import release_cached_models
from cfgsim.probe import run_probe
from cfgsim.render import render_all
from cfgsim.render.grid import GRID_LAYOUT_INFO
from cfgsim.result import ProbeResult, Reference
from cfgsim.spec import SpecChoice
from cfgsim.webui.condonly import ENV_KEY as COND_ONLY_KEY
from cfgsim.webui.condonly import CondOnly
from cfgsim.webui.context import WebUI
from cfgsim.webui.host import BATCH_ENV_KEY, WebUIHost, probe_processing
from cfgsim.webui.options import infotext_values, setting
from cfgsim.webui.restore import RestoreWebUI
from cfgsim.webui.settings import (
    OVERLAY_STYLES,
    keep_clip_loaded,
    metric_options,
    overlay_style,
    skip_uncond,
)

log = logging.getLogger("cfgsim")

GRID_BASENAME = "cfgsim"
# How many installed checkpoints a "not installed" message lists.
MAX_LISTED = 30


def _installed_text(host: WebUIHost) -> str:
    names = host.available_names()
    if not names:
        return "no checkpoint is installed"
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return f"installed: {shown}{more}"


def check_selection(checkpoints: list[Checkpoint], host: WebUIHost) -> None:
    """Refuse a selection in which no checkpoint is installed (one unknown among known ones becomes
    a failed cell, with the reason): name the missing ones and list the installed ones."""
    missing = [c.name for c in checkpoints if host.find_info(c.name) is None]
    if missing and len(missing) == len(checkpoints):
        raise InputError(
            f"Checkpoints to probe: {', '.join(repr(m) for m in missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed ({_installed_text(host)})"
        )


def build_reference(
    values: controls.ProbeArgs, checkpoints: list[Checkpoint], host: WebUIHost, choice: SpecChoice
) -> Reference:
    if values.reference_mode == controls.REFERENCE_CHECKPOINT:
        wanted = values.reference_checkpoint
        if not wanted:
            index = 0
        else:
            info = host.find_info(wanted)
            if info is None:
                raise InputError(
                    f"Reference checkpoint: {wanted!r} is not installed ({_installed_text(host)})"
                )
            matches = [
                i for i, c in enumerate(checkpoints) if wanted in (c.name, c.label) or c.name == info.name
            ]
            if not matches:
                selected = ", ".join(repr(c.label) for c in checkpoints)
                raise InputError(
                    f"Reference checkpoint: {wanted!r} is not one of the selected checkpoints ({selected})"
                )
            index = matches[0]
        return Reference("item", index, checkpoints[index].label)
    if values.reference_mode == controls.REFERENCE_IMAGE:
        image = values.reference_image
        if image is None:
            raise InputError("reference image: choose an image to compare against, or another reference")
        label = "uploaded image"
        text = choice.reference_infotext
        model_hash = Infotext.parse(text).params.get("Model hash", "") if text else ""
        if model_hash:
            label = f"uploaded image (model hash {model_hash})"
        filename = getattr(image, "filename", None) or None
        return Reference("image", None, label, filename, image.convert("RGB"), choice.reference_infotext)
    return Reference()


def render(result: ProbeResult, *, overlays: bool, style: str) -> list[tuple[str, Any]]:
    """Grid first (in family-tree order), the tree, then the heatmaps (one per metric, for two
    checkpoints or more). The compact style draws only the first metric on the grid's cells."""
    first_only = style == OVERLAY_STYLES[1] and bool(result.scores)
    return render_all(
        result, overlays=overlays, grid_metrics=[next(iter(result.scores))] if first_only else None
    )


def compared_hashes(result: ProbeResult) -> str:
    """The checkpoints' short hashes as the WebUI's cells write them (``Model hash``: the first 10
    hex digits of the full sha256). The legacy 8-hex hash (64 KiB at 1 MiB) collides — every file
    under 1 MiB gets ``e3b0c442`` — so it is used only where no sha256 is known."""
    return ", ".join(
        (item.sha256[:10] if item.sha256 else item.model_hash) or "unknown" for item in result.items
    )


def grid_infotext(result: ProbeResult, opts: Any) -> str:
    """The grid's ``parameters``: cfgsim's grid infotext plus the recorded options that differ from
    the WebUI's defaults and the WebUI's version, with the labels the WebUI itself writes them under
    (so the PNG Info tab reads them, and a cfg1 run on default settings reads back as the preset)."""
    info = Infotext.parse(metadata.grid_infotext(result))
    if "Compared hashes" in info.params:
        info.params["Compared hashes"] = compared_hashes(result)
    env = result.environment
    info.params.update(infotext_values(env))
    if env.get("Version") and setting(opts, "add_version_to_infotext", True):
        info.params["Version"] = env["Version"]
    return str(info)


def save_grid(
    p: Any, image: Any, *, infotext: str, json_text: str, seed: int, opts: Any, images_mod: Any
) -> str | None:
    """Save the grid the way the WebUI saves its own grids; returns the file, None when not saved.

    PNG grids carry the JSON in a ``cfgsim`` text chunk beside ``parameters``; JPEG and WebP keep
    only the infotext (EXIF), so the JSON goes into a sidecar file beside them (also when the user
    turned PNG info off).
    """
    if not setting(opts, "grid_save", True) or getattr(p, "do_not_save_grid", False):
        return None
    extension = str(setting(opts, "grid_format", "png") or "png").lstrip(".").lower()
    outdir = (
        getattr(p, "outpath_grids", None)
        or setting(opts, "outdir_txt2img_grids", "")
        or setting(opts, "outdir_grids", "")
        or "outputs/txt2img-grids"
    )
    fullfn, _ = images_mod.save_image(
        image,
        outdir,
        GRID_BASENAME,
        seed=seed,
        prompt="",
        extension=extension,
        info=infotext,
        short_filename=not setting(opts, "grid_extended_filename", False),
        p=p,
        grid=True,
        existing_info={metadata.PNG_JSON_KEY: json_text},
    )
    if fullfn and (not fullfn.lower().endswith(".png") or not setting(opts, "enable_pnginfo", True)):
        metadata.atomic_write_bytes(metadata.sidecar_path(fullfn), json_text.encode("utf-8"))
    return fullfn


def probe_library(webui: WebUI, p: Any = None) -> Any:
    """The probe library of this WebUI (:mod:`cfgsim.library.webui`), None when off or unusable;
    a request's ``override_settings`` may turn it off or point it elsewhere for that request."""
    from cfgsim.library.webui import data_dir, library_for_run
    from cfgsim.webui.settings import library_dir, library_enabled

    opts = webui.opts
    return library_for_run(library_enabled(opts, p), library_dir(opts, p), data_dir(webui.shared))


def run_probe_script(p: Any, values: controls.ProbeArgs, webui: WebUI, cfg_denoiser: Any = None) -> Any:
    """Everything ``Script.run`` does, with the WebUI's modules as parameters (tests pass fakes).

    ``cfg_denoiser``: A1111's ``modules.sd_samplers_cfg_denoiser``, for the cond-only hook at CFG 1
    (:mod:`cfgsim.webui.condonly`; None: the stock path, recorded as not available).
    """
    opts = webui.opts
    host = WebUIHost(p, webui)
    cond_only = CondOnly.for_module(cfg_denoiser, forge=webui.is_forge, enabled=skip_uncond(opts, p))
    host.cond_only = cond_only.mode

    if not values.checkpoints:
        raise InputError("Checkpoints to probe: select at least one checkpoint")
    checkpoints = host.resolve(values.checkpoints)
    check_selection(checkpoints, host)
    choice = controls.choose_spec(
        values.preset,
        values.seeds,
        values.preview_steps,
        reference_mode=values.reference_mode,
        reference_image=values.reference_image,
    )
    spec = choice.spec
    reference = build_reference(values, checkpoints, host, choice)
    metrics = build_metrics(values.metrics, metric_options(opts))
    library = probe_library(webui, p)

    try:
        with RestoreWebUI(host, getattr(p, "override_settings", None) or {}), cond_only:
            result = run_probe(
                host,
                checkpoints,
                spec,
                metrics=metrics,
                reference=reference,
                preset=choice.preset,
                deviations=choice.deviations,
                library=library,
                with_library=values.with_library and library is not None,
            )
    finally:
        if not keep_clip_loaded(opts):
            release_cached_models()
    result.environment[COND_ONLY_KEY] = cond_only.environment_value()
    # Recorded, not part of the library key (that is taken from host.environment() before the run).
    result.environment[BATCH_ENV_KEY] = str(min(host.batch_size, len(spec.seeds)))
    host.fill_hashes(result)
    weights, weights_error = None, ""
    if values.compare_weights:
        # The probe's images are made: a file the weight view cannot read costs only that view.
        try:
            weights = compare_weights(result, webui, host)
        except CfgsimError as exc:
            weights_error = str(exc)
            log.warning("cfgsim: %s", weights_error)

    rendered = render(result, overlays=values.overlays, style=overlay_style(opts))
    if weights is not None:
        rendered += [(f"weights-{name}", image) for name, image in weights.images().items()]
    infotext = grid_infotext(result, opts)
    grid_image = rendered[0][1]
    # The grid was drawn from a copy in tree order: its cell boxes travel on the image.
    layout = grid_image.info.get(GRID_LAYOUT_INFO)
    json_text = metadata.to_json(result, grid_layout=layout if isinstance(layout, dict) else None)
    if setting(opts, "enable_pnginfo", True):
        grid_image.info["parameters"] = infotext  # what the gallery's download and "Send to" keep
    saved = save_grid(
        p,
        grid_image,
        infotext=infotext,
        json_text=json_text,
        seed=spec.seeds[0],
        opts=opts,
        images_mod=webui.images,
    )
    if saved:
        log.info("cfgsim: grid saved to %s", saved)
    return build_processed(
        p,
        result,
        rendered,
        infotext=infotext,
        json_text=json_text,
        include_images=values.include_images,
        processing_mod=webui.processing,
        saved=saved,
        weights=weights,
        weights_error=weights_error,
    )


def compare_weights(result: ProbeResult, webui: WebUI, host: WebUIHost) -> Any:
    """The weight-space view of the probed checkpoints (one pass over their files), with the WebUI's
    progress bar and its interrupt. None when fewer than two checkpoint files are at hand."""
    from cfgsim.weights import compare_checkpoints

    state = webui.shared.state
    files = [(i, host.file_of(item)) for i, item in enumerate(result.items)]
    files = [(i, path) for i, path in files if path and os.path.isfile(path)]
    if len(files) < 2:
        log.warning("cfgsim: weights: fewer than two checkpoint files to compare")
        return None
    reference = None
    if result.reference.kind == "item" and result.reference.index is not None:
        reference = next((k for k, (i, _) in enumerate(files) if i == result.reference.index), None)

    def progress(fraction: float, what: str) -> None:
        if getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False):
            raise InputError("weights: interrupted")
        state.textinfo = f"cfgsim: comparing weights ({fraction:.0%}): {what}"

    state.textinfo = "cfgsim: comparing weights"
    return compare_checkpoints(
        [path for _, path in files],
        reference=reference,
        labels=[result.items[i].label for i, _ in files],
        progress=progress,
    )


def build_processed(
    p: Any,
    result: ProbeResult,
    rendered: list[tuple[str, Any]],
    *,
    infotext: str,
    json_text: str,
    include_images: bool,
    processing_mod: Any,
    saved: str | None,
    weights: Any = None,
    weights_error: str = "",
) -> Any:
    """The ``Processed`` the WebUI shows: gallery, infotexts, the HTML report, the API's ``info``
    (with ``weights``, a :class:`cfgsim.weights.WeightsReport`: its JSON and its text too)."""
    spec = result.spec
    gallery = [image for _, image in rendered]
    infotexts = [infotext] * len(gallery)
    seeds = [spec.seeds[0]] * len(gallery)
    n_grids = len(gallery)
    if include_images:
        for cell in result.cells:
            if cell.ok:
                gallery.append(cell.image)
                infotexts.append(cell.infotext)
                seeds.append(result.rows[cell.row])
    # Processed reads prompt, sampler, size... from the p it is given: give it the probe's.
    pr = probe_processing(p, spec, spec.seeds[0], None)
    pr.scripts = getattr(p, "scripts", None)
    data = json.loads(json_text)
    if saved:
        data["grid_file"] = os.path.abspath(saved)
    if weights is not None:
        data["weights"] = json.loads(weights.to_json())
    # processed.js() (the API's "info") serialises extra_generation_params: the matrix goes there.
    pr.extra_generation_params = {metadata.PNG_JSON_KEY: data}
    # The WebUI shows comments under the gallery; cfgsim.js turns this text into the table.
    weights_text = (
        weights.text()
        if weights is not None
        else (f"not compared: {weights_error}" if weights_error else None)
    )
    pr.comments = {report.report_html(result, weights_text=weights_text): 1}
    return processing_mod.Processed(
        pr,
        gallery,
        seed=spec.seeds[0],
        info=infotext,
        subseed=-1,
        all_prompts=[spec.prompt] * len(gallery),
        all_negative_prompts=[spec.negative_prompt] * len(gallery),
        all_seeds=seeds,
        all_subseeds=[-1] * len(gallery),
        index_of_first_image=n_grids if include_images else 0,
        infotexts=infotexts,
    )
