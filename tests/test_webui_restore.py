"""Defects 1 and 2 of issue 7: every option a WebUI run touches is put back exactly, and the
options of A1111 1.8 that change pixels are forced (k_sched_type) or recorded.

The WebUI's own ``process_images`` restores only overridden options that already had an entry in
``opts.data`` (A1111 1.8-1.10 and Forge): on an install where nobody pressed "Apply settings" the
probe's clip skip 2 stayed for every later generation, and an API caller's per-request
``randn_source`` too. Reproduced here by deleting the keys from the fake ``opts.data``.
"""

from __future__ import annotations

import conftest
import pytest
from test_script import cfgsim_json, run

from cfgsim.infotext import Infotext


def next_generation_infotext(web) -> dict:
    """The parameters of a stock txt2img generation after the probe (no overrides of its own)."""
    return Infotext.parse(web.process_images(conftest.Processing(override_settings={}, seed=1)).info).params


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
@pytest.mark.parametrize("outcome", ["success", "error", "interrupt"])
def test_options_absent_before_the_run_are_absent_after(webui, p, forge, outcome):
    web = webui(forge=forge)
    # A fresh install: the user never set clip skip or the RNG source (no entries in config.json);
    # an API caller overrides the RNG source for this request only.
    del web.opts.data["CLIP_stop_at_last_layers"]
    del web.opts.data["randn_source"]
    p.override_settings = {"randn_source": "NV"}
    before = dict(web.opts.data)

    def event(index, pc):
        if index == 1 and outcome == "error":
            raise KeyboardInterrupt
        if index == 1 and outcome == "interrupt":
            web.state.interrupted = True

    web.on_call = event
    if outcome == "error":
        with pytest.raises(KeyboardInterrupt):
            run(web, p, ["other", "tuned"])
    else:
        run(web, p, ["other", "tuned"])
    web.state.interrupted = False
    assert web.opts.data == before
    assert "CLIP_stop_at_last_layers" not in web.opts.data and "randn_source" not in web.opts.data
    # The user's next generation runs at the WebUI's defaults again, with the user's checkpoint.
    assert next_generation_infotext(web)["Clip skip"] == "1"
    assert web.opts.randn_source == "CPU"  # the WebUI's default again
    assert web.received[-1]["checkpoint"] == "base"


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
def test_values_set_before_the_run_come_back_exactly(webui, p, forge):
    web = webui(forge=forge)
    web.opts.data["CLIP_stop_at_last_layers"] = 3
    web.opts.data["token_merging_ratio"] = 0.25
    before = dict(web.opts.data)
    run(web, p, ["tuned", "other"])
    assert web.opts.data == before


def with_a1111_18_options(web, **values):
    """Options A1111 1.8 has and 1.10/Forge do not (k_sched_type) or do (the rest), with values."""
    for key, value in values.items():
        default = {
            "k_sched_type": "Automatic",
            "enable_quantization": False,
            "use_downcasted_alpha_bar": False,
            "fp8_storage": "Disable",
            "sd_unet": "Automatic",
        }[key]
        web.opts.data_labels[key] = conftest.OptionInfo(default)
        web.opts.data[key] = value


def test_a1111_18_schedule_override_is_forced_to_the_discrete_schedule(webui, p):
    """k_sched_type (A1111 1.8, Settings → Sampler parameters) replaces Euler's sigmas, e.g. with
    Karras: the probe's Euler runs on the default discrete schedule, and the user's choice comes back."""
    web = webui()
    with_a1111_18_options(web, k_sched_type="karras")
    run(web, p, ["base", "other"])
    for got in web.received:
        assert got["override_settings"]["k_sched_type"] == "Automatic"
        assert got["options"]["k_sched_type"] == "Automatic"  # what the sampler saw
    assert web.opts.data["k_sched_type"] == "karras"


def test_where_the_schedule_override_does_not_exist_it_is_not_set(webui, p):
    """1.10 and Forge have no k_sched_type (p.scheduler instead): opts.set() would raise on it."""
    web = webui(forge=True)
    run(web, p, ["base"])
    assert all("k_sched_type" not in got["override_settings"] for got in web.received)
    assert "k_sched_type" not in web.opts.data


def test_pixel_changing_options_are_recorded(webui, p):
    web = webui()
    with_a1111_18_options(
        web, enable_quantization=True, use_downcasted_alpha_bar=True, fp8_storage="Enable", sd_unet="None"
    )
    processed = run(web, p, ["base", "other"])
    env = cfgsim_json(processed)["environment"]
    assert env["Quantization in K samplers"] == "True"
    assert env["Downcast alphas_cumprod"] == "True"  # the label the WebUI's own infotext uses
    assert env["FP8 weight"] == "Enable"
    assert env["SD UNet"] == "None"
    params = Infotext.parse(processed.info).params  # they differ from the defaults: in the infotext
    assert params["Downcast alphas_cumprod"] == "True" and params["FP8 weight"] == "Enable"


def test_options_a_webui_lacks_are_not_recorded(webui, p):
    web = webui()
    processed = run(web, p, ["base"])
    env = cfgsim_json(processed)["environment"]
    assert "FP8 weight" not in env and "SD UNet" not in env
    assert "Schedule type" not in Infotext.parse(processed.info).params
