"""scripts/cfgsim_probe.py end to end in a fake WebUI (see conftest.py), and cfgsim.controls."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import conftest
import pytest
from PIL import Image, PngImagePlugin

from cfgsim import controls, metadata
from cfgsim.errors import InputError
from cfgsim.infotext import Infotext
from cfgsim.result import FAILED, OK, SKIPPED
from cfgsim.spec import DEFAULT_NEGATIVE, ProbeSpec
from cfgsim.webui import host as webui_host
from cfgsim.webui import settings as webui_settings
from cfgsim.webui import ui as webui_ui
from tests.helpers import script_args as args

REFERENCE_PNG = (
    Path(__file__).resolve().parents[2] / "shared" / "reference" / "nai-925997e9-seed1337-cfg1-euler256.png"
)


def run(web, p, checkpoints, **values):
    return web.script.Script().run(p, *args(checkpoints, **values))


def cfgsim_json(processed) -> dict:
    return json.loads(processed.js())["extra_generation_params"]["cfgsim"]


# -- the probe is enforced -------------------------------------------------------------------------


def test_probe_settings_are_enforced_whatever_the_ui_holds(webui, p):
    web = webui()
    user_overrides = p.override_settings
    run(web, p, ["base", "other"], seeds="1337, 42")
    assert len(web.received) == 4
    dicts = set()
    for got in web.received:
        pc = got["p"]
        assert pc is not p
        assert pc.prompt == "" and pc.negative_prompt == DEFAULT_NEGATIVE
        assert pc.styles == []
        assert pc.sampler_name == "Euler"
        assert pc.steps == 256  # above the UI slider's maximum: set in code
        assert pc.cfg_scale == 1.0
        assert pc.seed in (1337, 42) and pc.subseed_strength == 0
        assert (pc.seed_resize_from_w, pc.seed_resize_from_h) == (0, 0)
        assert (pc.width, pc.height) == (512, 512)
        assert (pc.batch_size, pc.n_iter) == (1, 1)
        assert pc.enable_hr is False and pc.refiner_checkpoint is None
        assert pc.restore_faces is False and pc.tiling is False
        assert pc.token_merging_ratio == 0 and pc.token_merging_ratio_hr == 0
        assert pc.s_churn == 0 and pc.eta == 0
        assert pc.scripts is None  # always-on scripts (ControlNet, ADetailer...) change pixels
        overrides = got["override_settings"]
        assert overrides["CLIP_stop_at_last_layers"] == 2
        assert overrides["token_merging_ratio"] == 0
        assert (
            web.sd_models.checkpoint_aliases[overrides["sd_model_checkpoint"]].name_for_extra
            == got["checkpoint"]
        )
        # What the model saw while it ran: clip skip 2 and no token merging, whatever opts said.
        assert got["options"]["CLIP_stop_at_last_layers"] == 2
        assert got["options"]["token_merging_ratio"] == 0
        dicts.add(id(overrides))
        dicts.add(id(pc.extra_generation_params))
    assert len(dicts) == 8  # a fresh override_settings and extra_generation_params per cell
    # The user's p is untouched.
    assert p.prompt == "a cat" and p.steps == 20 and p.override_settings is user_overrides
    assert user_overrides == {"CLIP_stop_at_last_layers": 1}
    assert p.extra_generation_params == {"Lora hashes": "x"}


def test_forge_has_a_schedule_type_and_loads_lazily(webui, p):
    web = webui(forge=True)
    p.scheduler = "Karras"
    assert web.loaded() is None  # Forge: nothing loaded before the first generation
    processed = run(web, p, ["other", "base"])
    assert all(got["p"].scheduler == "Automatic" for got in web.received)
    # The checkpoint selected in the UI ("base") is what Forge would load next: it runs first.
    assert [got["checkpoint"] for got in web.received] == ["base", "other"]
    data = cfgsim_json(processed)
    assert data["environment"]["WebUI"] == "Forge"
    # The version string Forge itself writes into its images (launch.git_tag()), not its version file.
    assert data["environment"]["Version"] == "f2.0.1v1.10.1-1.10.1"
    assert Infotext.parse(processed.info).params["Version"] == "f2.0.1v1.10.1-1.10.1"
    # Nothing was loaded before the run: nothing to put back (Forge loads lazily anyway).
    assert web.loads == ["base", "other"]


def test_forge_reloads_the_users_checkpoint_with_its_own_loader(webui, p):
    web = webui(forge=True)
    web.process_images(conftest.Processing(override_settings={}, seed=1))  # the user generated once
    assert web.loaded() == "base"
    web.received.clear()
    run(web, p, ["other", "tuned"])
    assert [got["checkpoint"] for got in web.received] == ["other", "tuned"]
    assert web.loaded() == "base"  # through forge_model_reload: reload_model_weights is a no-op in Forge
    assert web.reloads[-1] == "base"


def test_forge_can_generate_again_after_a_failed_load(webui, p):
    """Forge keeps the last good load's hash after a failed load while it has no model any more: the
    user's next generation with that checkpoint would fail. The run leaves Forge able to load it."""
    web = webui(forge=True)
    web.fail_load.add("tuned")
    processed = run(web, p, ["base", "tuned"])
    assert [c["status"] for c in cfgsim_json(processed)["cells"]] == [OK, FAILED]
    after = web.process_images(conftest.Processing(override_settings={}, seed=1))
    assert after.images
    assert web.loaded() == "base"


# -- order, progress, restoration ------------------------------------------------------------------


def test_loaded_checkpoint_runs_first_and_each_loads_once(webui, p):
    web = webui(loaded="other")
    processed = run(web, p, ["base", "tuned", "other"], seeds="1, 2")
    assert [(got["checkpoint"], got["p"].seed) for got in web.received] == [
        ("other", 1),
        ("other", 2),
        ("base", 1),
        ("base", 2),
        ("tuned", 1),
        ("tuned", 2),
    ]
    assert web.loads == ["base", "tuned", "other"]  # each once, then the original back
    assert web.state.job_count == 6
    assert web.state.job_no == 6
    data = cfgsim_json(processed)
    assert [item["label"] for item in data["items"]] == ["base", "tuned", "other"]  # the user's order


def test_progress_job_names(webui, p, monkeypatch):
    web = webui()
    jobs = []
    original = web.process_images

    def spy(pc):
        jobs.append((web.state.job, web.state.job_count, web.state.job_no))
        return original(pc)

    monkeypatch.setattr(web.modules["modules.processing"], "process_images", spy)
    run(web, p, ["base", "other"], seeds="1337, 42")
    assert jobs == [
        ("base — seed 1337", 4, 0),
        ("base — seed 42", 4, 1),
        ("other — seed 1337", 4, 2),
        ("other — seed 42", 4, 3),
    ]


def test_settings_and_checkpoint_restored_after_success(webui, p):
    web = webui()
    before = dict(web.opts.data)
    run(web, p, ["other", "tuned"])
    assert web.opts.data == before
    assert web.loaded() == "base"
    assert web.reloads == ["base"]


def test_options_the_user_never_set_are_not_left_behind(webui, p):
    """An override of an option absent from opts.data (at its default) must not stay in the config."""
    web = webui()
    del web.opts.data["token_merging_ratio_hr"]
    run(web, p, ["other"])
    assert "token_merging_ratio_hr" not in web.opts.data


def test_settings_and_checkpoint_restored_after_an_error(webui, p):
    web = webui()
    before = dict(web.opts.data)

    def crash(index, pc):
        if index == 1:
            # Options set outside override_settings (process_images does not restore these), then an
            # error nothing catches.
            web.opts.data["randn_source"] = "NV"
            web.opts.data["s_min_uncond"] = 2.0
            raise KeyboardInterrupt

    web.on_call = crash
    with pytest.raises(KeyboardInterrupt):
        run(web, p, ["other", "tuned"])
    assert web.opts.data == before
    assert web.loaded() == "base"


def test_interrupt_stops_after_the_current_image_and_still_saves(webui, p):
    web = webui()

    def interrupt(index, pc):
        if index == 2:
            web.state.interrupted = True  # the user pressed Interrupt while image 3 was sampled

    web.on_call = interrupt
    processed = run(web, p, ["base", "tuned", "other"], seeds="1, 2")
    assert len(web.received) == 3  # nothing starts after the interrupt
    data = cfgsim_json(processed)
    assert data["interrupted"] is True
    status = {(c["item"], c["row"]): c["status"] for c in data["cells"]}
    assert status[(0, 0)] == status[(0, 1)] == OK
    # Image 3 was cut short: not a probe image; the rest never ran.
    assert [status[(1, 0)], status[(1, 1)], status[(2, 0)], status[(2, 1)]] == [SKIPPED] * 4
    assert len(web.saved) == 1 and Path(web.saved[0][0]).exists()
    assert processed.images  # the grid of what was done
    assert web.loaded() == "base"
    assert "Interrupted" in processed.comments


def test_stop_generating_keeps_the_current_image(webui, p):
    web = webui()

    def stop(index, pc):
        if index == 1:
            web.state.stopping_generation = True  # "finish this image, then stop"

    web.on_call = stop
    processed = run(web, p, ["base", "other"], seeds="1, 2")
    data = cfgsim_json(processed)
    status = [c["status"] for c in data["cells"]]  # rows: seed 1 (base, other), seed 2 (base, other)
    assert status == [OK, SKIPPED, OK, SKIPPED]
    assert len(web.received) == 2


# -- skipped, failed -------------------------------------------------------------------------------


def test_non_sd1_checkpoint_is_skipped_without_loading(webui, p):
    web = webui()
    processed = run(web, p, ["base", "xl"], seeds="1, 2")
    assert {got["checkpoint"] for got in web.received} == {"base"}
    data = cfgsim_json(processed)
    xl = [c for c in data["cells"] if c["item"] == 1]
    assert all(c["status"] == SKIPPED and "SDXL" in c["reason"] for c in xl)
    assert data["items"][1]["architecture"] == "sdxl"
    assert "SDXL" in processed.comments


def test_non_sd1_model_found_after_loading_becomes_failed(webui, p, monkeypatch):
    web = webui()
    # A pickle cannot be inspected before loading: the loaded model's flags tell.
    monkeypatch.setattr(webui_host, "architecture_of", lambda filename: "unknown")
    monkeypatch.setitem(conftest.ARCHITECTURES, "other", "sdxl")
    processed = run(web, p, ["base", "other"], seeds="1, 2")
    data = cfgsim_json(processed)
    other = [c for c in data["cells"] if c["item"] == 1]
    assert all(c["status"] == FAILED and "SDXL" in c["reason"] for c in other)
    assert [got["checkpoint"] for got in web.received] == ["base", "base", "other"]  # tried once


def test_failing_checkpoints_become_failed_cells_and_the_run_goes_on(webui, p):
    web = webui()
    os.remove(web.info("tuned").filename)  # deleted after the WebUI listed it
    web.fail_load.add("other")
    web.fail_cell.add(("base", 42))
    processed = run(web, p, ["base", "tuned", "other"], seeds="1337, 42")
    data = cfgsim_json(processed)
    cells = {(c["item"], c["row"]): c for c in data["cells"]}
    assert cells[(0, 0)]["status"] == OK
    assert cells[(0, 1)]["status"] == FAILED and "out of memory" in cells[(0, 1)]["reason"]
    assert cells[(1, 0)]["status"] == cells[(1, 1)]["status"] == FAILED
    assert "file not found" in cells[(1, 0)]["reason"]
    assert cells[(2, 0)]["status"] == cells[(2, 1)]["status"] == FAILED
    assert "loading failed" in cells[(2, 0)]["reason"] and "invalid load key" in cells[(2, 0)]["reason"]
    # The broken checkpoint was tried once, not once per seed.
    assert [got["checkpoint"] for got in web.received] == ["base", "base"]
    assert web.loaded() == "base"
    assert "out of memory" in processed.comments


def test_unknown_checkpoint_over_the_api_is_a_failed_cell(webui, p):
    web = webui()
    processed = run(web, p, ["base", "nonexistent.safetensors"])
    data = cfgsim_json(processed)
    assert data["cells"][1]["status"] == FAILED
    assert "not among the installed checkpoints" in data["cells"][1]["reason"]


# -- output ----------------------------------------------------------------------------------------


def test_requested_override_settings_are_what_gets_recorded(webui, p):
    """An API caller's override_settings apply to every cell: the metadata must say what was used."""
    web = webui()
    p.override_settings = {"randn_source": "NV", "emphasis": "No norm"}
    processed = run(web, p, ["base", "other"])
    assert all(got["override_settings"]["randn_source"] == "NV" for got in web.received)
    info = Infotext.parse(processed.info)
    assert info.params["RNG"] == "NV"
    environment = cfgsim_json(processed)["environment"]
    assert environment["RNG"] == "NV" and environment["Emphasis"] == "No norm"


def test_saved_grid_carries_infotext_and_json(webui, p):
    web = webui()
    processed = run(web, p, ["base", "tuned", "other"], reference_mode=1, reference_checkpoint="base")
    ((path, is_grid, saved_p),) = web.saved
    assert is_grid and saved_p is p and path.startswith(p.outpath_grids)
    assert os.path.basename(path).startswith("cfgsim")
    with Image.open(path) as image:
        chunks = dict(image.text)
    assert set(chunks) == {"parameters", "cfgsim"}
    assert str(web.root) not in chunks["cfgsim"]  # no absolute paths of the user's folders
    assert chunks["parameters"] == processed.info == processed.infotexts[0]
    spec = ProbeSpec.from_infotext(chunks["parameters"])
    assert spec == ProbeSpec().replace(extra=spec.extra)
    info = Infotext.parse(chunks["parameters"])
    assert info.params["Compared"] == "base, tuned, other"
    assert info.params["Reference"] == "base"
    assert info.params["RNG"] == "CPU"  # recorded: differs from the WebUI's default (GPU)
    document = metadata.parse_json(chunks["cfgsim"])
    assert document["environment"]["RNG"] == "CPU"
    assert document["environment"]["Emphasis"] == "Original"
    assert document["environment"]["WebUI"] == "AUTOMATIC1111"
    assert "--no-half-vae" in document["environment"]["Precision"]
    mean = document["scores"]["ssim"]["mean"]
    assert mean[0][0] == 1.0
    assert mean[0][1] > mean[0][2]  # base is closer to its fine-tune than to the unrelated model
    result = metadata.read_result(path)
    assert result.labels == ["base", "tuned", "other"]
    # The grid is drawn in family-tree order; the layout saved with it says so, cell by cell.
    layout = document["grid_layout"]
    assert layout["columns"] == [result.items[i].label for i in result.tree_order()]
    assert len(layout["boxes"]) == 3 and document["lineage"]["tree"].endswith(";")


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_jpeg_and_webp_grids_get_a_json_sidecar(webui, p, fmt):
    web = webui()
    web.opts.data["grid_format"] = fmt
    run(web, p, ["base", "other"])
    ((path, _, _),) = web.saved
    assert path.endswith("." + fmt)
    sidecar = metadata.sidecar_path(path)
    assert sidecar.exists()
    assert metadata.parse_json(sidecar.read_text())["items"][1]["label"] == "other"


@pytest.mark.parametrize("how", ["grid_save off", "do_not_save_grid"])
def test_grid_not_saved_when_the_user_or_the_api_says_so(webui, p, how):
    web = webui()
    if how == "grid_save off":
        web.opts.data["grid_save"] = False
    else:
        p.do_not_save_grid = True  # what the API sets unless save_images is true
    processed = run(web, p, ["base", "other"])
    assert web.saved == []
    assert processed.images  # still shown


def test_gallery_order_and_infotexts(webui, p):
    web = webui()
    processed = run(web, p, ["base", "other"], seeds="1, 2", include_images=True)
    # The drawings (grid first, then the family tree and one heatmap per metric, as
    # cfgsim.render.render_all makes them), then the four cells in grid order (row by row).
    n = processed.index_of_first_image
    assert n >= 2 and len(processed.images) == n + 4
    assert processed.infotexts[:n] == [processed.info] * n
    cell_infos = processed.infotexts[n:]
    assert ["Model: base" in t for t in cell_infos] == [True, False, True, False]
    assert [Infotext.parse(t).params["Seed"] for t in cell_infos] == ["1", "1", "2", "2"]
    assert processed.all_seeds[n:] == [1, 1, 2, 2]
    without = run(web, p, ["base", "other"], seeds="1, 2")
    assert len(without.images) == n


def test_report_in_comments_and_matrix_in_the_api_info(webui, p):
    web = webui()
    processed = run(web, p, ["base", "tuned", "other"], reference_mode=1, reference_checkpoint="other")
    assert processed.comments.startswith('<div class="cfgsim-report"')
    assert 'data-cfgsim-kind="matrix"' in processed.comments
    info = json.loads(processed.js())
    data = info["extra_generation_params"]["cfgsim"]
    assert data["grid_file"] == web.saved[0][0]
    assert len(data["scores"]["ssim"]["mean"]) == 3
    assert data["reference"]["index"] == 2
    assert info["prompt"] == "" and info["steps"] == 256 and info["cfg_scale"] == 1.0


def test_quick_preview_is_labelled_not_the_probe(webui, p):
    web = webui()
    processed = run(web, p, ["base", "other"], preview_steps=8)
    assert {got["p"].steps for got in web.received} == {8}
    params = Infotext.parse(processed.info).params
    assert params["Steps"] == "8" and params["Probe preview steps"] == "8 of 256"
    assert "not the probe" in processed.comments
    assert cfgsim_json(processed)["is_probe"] is False


# -- the API ---------------------------------------------------------------------------------------


def test_api_call_with_positional_script_args(webui, p):
    """What /sdapi/v1/txt2img does: run(p, *script_args), an int for the index dropdown, titles or names."""
    web = webui()
    p.do_not_save_grid = True
    title = web.info("tuned").title
    script_args = [
        ["base", title, "other.safetensors"],
        "cfg1",
        "1337",
        1,
        "tuned",
        None,
        ["ssim", "phash"],
        False,
        False,
        0,
    ]
    processed = web.script.Script().run(p, *script_args)
    info = json.loads(processed.js())
    data = info["extra_generation_params"]["cfgsim"]
    assert [item["label"] for item in data["items"]] == ["base", "tuned", "other"]
    assert data["metrics"] == ["ssim", "phash"]
    assert data["reference"] == {"kind": "item", "index": 1, "label": "tuned", "file": None}
    assert all(c["status"] == OK for c in data["cells"])


def test_api_defaults_from_ui_values(webui, p):
    """The API fills missing script_args with each component's .value: an index dropdown's is its label."""
    web = webui()
    components = web.script.Script().ui(False)
    values = [c.value for c in components]
    values[0] = ["base", "other"]
    processed = web.script.Script().run(p, *values)
    data = cfgsim_json(processed)
    assert data["reference"]["kind"] == "none"
    assert data["metrics"] == ["ssim"]


def test_short_script_args_take_defaults_and_too_many_are_refused(webui, p):
    web = webui()
    processed = web.script.Script().run(p, ["base", "other"])
    assert cfgsim_json(processed)["spec"]["seeds"] == [1337]
    with pytest.raises(InputError, match="script_args"):
        web.script.Script().run(p, *args(["base"]), "extra")


def test_api_call_during_startup_says_so(webui, p):
    """Forge answers the API before its default script arguments exist: the script gets nothing."""
    web = webui()
    script = web.script.Script()
    script.args_from, script.args_to = 111, 121
    p.script_args = [4, "cfg1", "1337"]  # what such a call leaves: the args shifted to the front
    with pytest.raises(InputError, match="still starting"):
        script.run(p)


def test_no_checkpoint_is_a_clear_error(webui, p):
    web = webui()
    with pytest.raises(InputError, match="at least one checkpoint"):
        run(web, p, [])


# -- reference image -------------------------------------------------------------------------------


def png_with_infotext(text: str | None, size=(512, 512)) -> Image.Image:
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", size, (120, 80, 40)).save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    return Image.open(buffer)


def test_reference_image_infotext_sets_the_spec_and_deviations_are_recorded(webui, p):
    web = webui()
    text = (
        "Negative prompt: (bad:0)\nSteps: 64, Sampler: Euler, CFG scale: 1, Seed: 7, Size: 512x512, "
        "Model hash: 925997e9, Clip skip: 2"
    )
    image = png_with_infotext(text)
    processed = run(web, p, ["base", "other"], seeds="1337, 42", reference_mode=2, reference_image=image)
    assert {got["p"].seed for got in web.received} == {7}
    assert {got["p"].steps for got in web.received} == {64}
    assert {got["p"].negative_prompt for got in web.received} == {"(bad:0)"}
    data = cfgsim_json(processed)
    labels = {d[0] for d in data["deviations"]}
    assert {"Negative prompt", "Steps", "Seed"} <= labels
    assert data["reference"]["kind"] == "image"
    assert "925997e9" in data["reference"]["label"]
    assert data["scores"]["ssim"]["vs_reference"]
    assert "differ from the cfg1 preset" in processed.comments


def test_reference_image_over_the_api_as_base64(webui, p):
    web = webui()
    text = (
        "Negative prompt: x\nSteps: 256, Sampler: Euler, CFG scale: 1, Seed: 5, Size: 512x512, Clip skip: 2"
    )
    buffer = io.BytesIO()
    Image.new("RGB", (512, 512)).save(buffer, format="PNG", pnginfo=_pnginfo(text))
    encoded = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    processed = run(web, p, ["base"], reference_mode=2, reference_image=encoded)
    assert {got["p"].seed for got in web.received} == {5}
    assert cfgsim_json(processed)["reference"]["kind"] == "image"


def _pnginfo(text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_reference_image_mode_needs_an_image(webui, p):
    web = webui()
    with pytest.raises(InputError, match="reference image"):
        run(web, p, ["base"], reference_mode=2)


def test_reference_info_box_shows_differences_before_the_run():
    box = webui_ui.reference_info_html
    assert box("cfg1", "1337", 2, None) == ""
    image = png_with_infotext(
        "Negative prompt: (bad:0)\nSteps: 64, Sampler: Euler, CFG scale: 1, Seed: 7, "
        "Size: 512x512, Clip skip: 2"
    )
    html = box("cfg1", "1337", "Uploaded image", image)
    assert "Steps" in html and "64" in html and "256" in html
    assert "seed 7" in html
    assert "no infotext" in box("cfg1", "1337", 2, png_with_infotext(None))
    assert "cfgsim-error" in box("cfg1", "banana", 0, None)


@pytest.mark.skipif(
    not REFERENCE_PNG.exists(), reason=f"the published reference image is absent ({REFERENCE_PNG})"
)
def test_published_reference_image_reads_as_the_cfg1_probe():
    choice = controls.choose_spec("cfg1", "1337", reference_mode=2, reference_image=Image.open(REFERENCE_PNG))
    assert choice.spec == ProbeSpec()
    assert choice.deviations == []


# -- ui(), settings --------------------------------------------------------------------------------


def test_ui_follows_the_declared_controls(webui):
    web = webui()
    conftest.Component.registry = made = []
    try:
        components = web.script.Script().ui(False)
    finally:
        conftest.Component.registry = None
    assert [c.elem_id for c in components] == [c.elem_id for c in controls.CONTROLS]
    assert all(c.elem_id.startswith("cfgsim_") for c in made if c.elem_id)
    assert all(c.kwargs.get("tooltip") for c in components)
    by_id = {c.elem_id: c for c in components}
    mode = by_id["cfgsim_reference_mode"]
    assert mode.kwargs["type"] == "index"
    assert by_id["cfgsim_checkpoints"].kwargs["multiselect"] is True
    assert len(by_id["cfgsim_checkpoints"].kwargs["choices"]) == 4
    assert by_id["cfgsim_metrics"].value == ["SSIM"]
    assert by_id["cfgsim_preview_steps"].value == 0
    assert "not the probe" in by_id["cfgsim_preview_steps"].label
    refresh = [c for c in made if c.elem_id == "cfgsim_checkpoints_refresh"]
    assert len(refresh) == 1 and refresh[0].events
    # Changing the preset puts its seeds into the seeds box.
    preset = by_id["cfgsim_preset"]
    handler = next(fn for name, fn, inputs, outputs in preset.events if outputs == [by_id["cfgsim_seeds"]])
    assert handler("prior-v2")["value"] == "1-20"
    script = web.script.Script()
    assert script.title() == "CFG 1.0 similarity probe"
    assert script.show(False) is True and script.show(True) is False


def test_ui_has_no_side_effects(webui):
    web = webui()
    before = dict(web.opts.data)
    registered = list(web.modules["modules.script_callbacks"].registered)
    web.script.Script().ui(False)
    web.script.Script().ui(False)
    assert web.opts.data == before
    assert web.modules["modules.script_callbacks"].registered == registered
    assert web.received == [] and web.loads == []


def test_settings_section(webui, p):
    web = webui()
    callbacks = web.modules["modules.script_callbacks"].registered
    assert len(callbacks) == 1
    callbacks[0]()
    labels = web.opts.data_labels
    keys = [k for k in labels if k.startswith("cfgsim_")]
    assert keys == [
        "cfgsim_default_metrics",
        "cfgsim_clip_model",
        "cfgsim_clip_pretrained",
        "cfgsim_clip_keep_loaded",
        "cfgsim_overlay_style",
        "cfgsim_skip_uncond",
        "cfgsim_library",
        "cfgsim_library_dir",
        "cfgsim_batch_size",
    ]
    assert all(labels[k].section == ("cfgsim", "CFG similarity") for k in keys)
    # The default metrics setting is the checkbox group's default in ui() and for the API.
    web.opts.data["cfgsim_default_metrics"] = ["pHash"]
    by_id = {c.elem_id: c for c in web.script.Script().ui(False)}
    assert by_id["cfgsim_metrics"].value == ["pHash"]
    processed = web.script.Script().run(p, ["base", "other"])
    assert cfgsim_json(processed)["metrics"] == ["phash"]
    web.opts.data["cfgsim_clip_model"] = "ViT-B-16"
    web.opts.data["cfgsim_clip_pretrained"] = "/models/clip.bin"
    assert webui_settings.metric_options(web.opts) == {
        "clip": {"model": "ViT-B-16", "pretrained": "/models/clip.bin", "lazy": True, "cache": True}
    }


# -- cfgsim.controls -------------------------------------------------------------------------------


def test_controls_unpack_normalises_every_shape():
    values = controls.unpack(
        [
            "a.safetensors\nb.safetensors",
            "CFG1",
            1337,
            "Uploaded image",
            None,
            None,
            "SSIM, clip",
            "false",
            1,
            "12",
        ]
    )
    assert values.checkpoints == ["a.safetensors", "b.safetensors"]
    assert values.preset == "cfg1"
    assert values.seeds == "1337"
    assert values.reference_mode == controls.REFERENCE_IMAGE
    assert values.metrics == ["ssim", "clip"]
    assert values.overlays is False and values.include_images is True
    assert values.preview_steps == 12


@pytest.mark.parametrize(
    ("index", "bad"), [(3, "not a choice"), ("sometimes", "not one of"), (True, "expected")]
)
def test_controls_reject_bad_values_naming_the_control(index, bad):
    with pytest.raises(InputError, match=f"Compare against: .*{bad}"):
        controls.unpack([["a"], "cfg1", "1", index])


def test_controls_reject_bad_steps_and_unknown_preset():
    with pytest.raises(InputError, match="Quick preview steps"):
        controls.unpack([["a"], "cfg1", "1", 0, "", None, ["ssim"], True, False, 2.5])
    with pytest.raises(InputError, match="Probe preset"):
        controls.unpack([["a"], "nai"])


def test_controls_images_from_the_api_but_never_from_a_path(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(InputError, match="base64"):
        controls.decode_image(str(path))
    encoded = base64.b64encode(path.read_bytes()).decode()
    assert controls.decode_image(encoded).size == (8, 8)
    assert controls.decode_image("") is None


def test_infotext_from_a_webui_jpeg():
    """JPEG/WebP grids carry the infotext in EXIF UserComment, as piexif writes it."""
    text = "Steps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, Clip skip: 2"
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="JPEG", exif=metadata.exif_with_infotext(text))
    buffer.seek(0)
    assert controls.infotext_from_image(Image.open(buffer)) == text


def test_api_table_lists_every_control_in_order():
    table = controls.api_table().splitlines()
    assert len(table) == 2 + len(controls.CONTROLS)
    assert "`reference_mode`" in table[2 + 3] and "0 = None" in table[2 + 3]
    hints = controls.hints()
    assert set(hints) == {c.label for c in controls.CONTROLS} and all(hints.values())


def test_compare_weights_too_adds_the_weight_view_without_generating_more(webui, p):
    """ "Compare weights too": one pass over the checkpoint files, its pictures in the gallery after
    the probe's, its identity groups and recipes in the report and in the API's info."""
    pytest.importorskip("safetensors", reason="the weights view reads checkpoints with safetensors")
    pytest.importorskip("torch", reason="the weights view computes with torch")
    web = webui()
    plain = run(web, p, ["base", "tuned", "other"], reference_mode=1, reference_checkpoint="base")
    generated = len(web.received)
    chosen = {"reference_mode": 1, "reference_checkpoint": "base"}
    with_weights = run(web, p, ["base", "tuned", "other"], compare_weights=True, **chosen)
    assert len(web.received) == 2 * generated  # the same images, nothing generated for the weights
    assert len(with_weights.images) > len(plain.images)
    data = cfgsim_json(with_weights)
    assert data["weights"]["items"] == ["base", "tuned", "other"]
    html_text = with_weights.comments
    assert "cfgsim-weights" in html_text and "UNet" in html_text
    assert "weights" not in cfgsim_json(plain)


def test_a_weights_failure_keeps_the_probe(webui, p, monkeypatch):
    import cfgsim.weights
    from cfgsim.weights.source import WeightsInputError

    def fail(*args, **kwargs):
        raise WeightsInputError("other.safetensors: damaged safetensors file (truncated)")

    monkeypatch.setattr(cfgsim.weights, "compare_checkpoints", fail)
    web = webui()
    processed = run(web, p, ["base", "other"], compare_weights=True)
    assert len(processed.images) >= 2 and "weights" not in cfgsim_json(processed)
    assert "not compared: other.safetensors: damaged safetensors file (truncated)" in processed.comments
