"""cfgsim.webui against small fakes, without the script: the one table of forced and recorded
options, option snapshots, and the WebUI context's version and precision."""

from __future__ import annotations

import types

import pytest
from conftest import OptionInfo, Options

from cfgsim.spec import ProbeSpec
from cfgsim.webui import WebUI
from cfgsim.webui import options as webui_options
from cfgsim.webui.options import (
    FORCED_OPTIONS,
    HOST_OPTIONS,
    RECORDED_OPTIONS,
    OptionsSnapshot,
    forced_overrides,
    infotext_values,
    recorded_values,
    touched_keys,
)

# Infotext labels the WebUIs write for these options themselves (A1111 1.8 modules/
# shared_options.py `infotext=` and processing.py create_infotext; Forge HEAD alike).
WEBUI_LABELS = {
    "CLIP_stop_at_last_layers": "Clip skip",
    "k_sched_type": "Schedule type",
    "randn_source": "RNG",
    "sgm_noise_multiplier": "SGM noise multiplier",
    "always_discard_next_to_last_sigma": "Discard penultimate sigma",
    "s_min_uncond": "NGMS",
    "s_min_uncond_all": "NGMS all steps",
    "skip_early_cond": "Skip Early CFG",
    "pad_cond_uncond": "Pad conds",
    "use_old_emphasis_implementation": "Old emphasis implementation",
    "use_downcasted_alpha_bar": "Downcast alphas_cumprod",
    "fp8_storage": "FP8 weight",
    "emphasis": "Emphasis",
}


def test_one_table_with_unique_keys_and_labels():
    keys = [o.key for o in HOST_OPTIONS]
    labels = [o.label for o in HOST_OPTIONS]
    assert len(set(keys)) == len(keys) and len(set(labels)) == len(labels)
    assert set(FORCED_OPTIONS) | set(RECORDED_OPTIONS) == set(HOST_OPTIONS)
    for option in HOST_OPTIONS:
        if option.key in WEBUI_LABELS:
            assert option.label == WEBUI_LABELS[option.key], option.key


def test_restoration_covers_every_option_the_table_forces_or_records():
    keys = touched_keys(["randn_source", "my_extension_option"])
    assert set(keys) >= {o.key for o in HOST_OPTIONS} | {"sd_model_checkpoint", "my_extension_option"}
    assert len(keys) == len(set(keys))


def test_forced_values_follow_the_spec_and_the_webuis_options():
    a1111_18 = Options({"CLIP_stop_at_last_layers": 1, "token_merging_ratio": 0.5, "k_sched_type": "karras"})
    assert forced_overrides(ProbeSpec(clip_skip=1), a1111_18) == {
        "CLIP_stop_at_last_layers": 1,
        "token_merging_ratio": 0.0,
        "k_sched_type": "Automatic",
    }
    assert "k_sched_type" not in forced_overrides(ProbeSpec(), Options({"CLIP_stop_at_last_layers": 1}))


def test_recorded_values_prefer_the_request_and_skip_unknown_options():
    opts = Options({"randn_source": "GPU", "fp8_storage": "Enable"})
    values = recorded_values(opts, {"randn_source": "NV"})
    assert values == {"RNG": "NV", "FP8 weight": "Enable"}
    assert infotext_values(values) == {"RNG": "NV", "FP8 weight": "Enable"}
    assert infotext_values({"RNG": "GPU", "SD VAE setting": "vae.pt"}) == {}  # defaults; VAE has its own keys


def test_snapshot_restores_values_and_absence():
    opts = Options({"a": 1, "b": [1, 2]})
    del opts.data["b"]
    opts.data_labels["c"] = OptionInfo(0)
    snapshot = OptionsSnapshot(opts, ["a", "b", "c"])
    opts.data.update(a=2, b=[3], c=5)
    assert sorted(snapshot.changed()) == ["a", "b", "c"]
    assert sorted(snapshot.restore()) == ["a", "b", "c"]
    assert opts.data == {"a": 1}
    assert snapshot.restore() == []


def test_setting_reads_attribute_then_data_then_default():
    opts = Options({"x": 3})
    assert webui_options.setting(opts, "x", 0) == 3
    assert webui_options.setting(opts, "missing", "d") == "d"
    assert webui_options.setting(None, "x", 7) == 7


def webui_with(**modules):
    shared = types.SimpleNamespace(cmd_opts=types.SimpleNamespace(no_half=True, precision="full"))
    return WebUI(shared=shared, sd_models=None, processing=modules.pop("processing", None), **modules)


@pytest.mark.parametrize(
    ("modules", "name", "version"),
    [
        (
            {"processing": types.SimpleNamespace(program_version=lambda: "v1.10.1")},
            "AUTOMATIC1111",
            "v1.10.1",
        ),
        (
            {
                "processing": types.SimpleNamespace(program_version=lambda: "f2.0.1v1.10.1-1.10.1"),
                "forge_version": types.SimpleNamespace(version="2.0.1v1.10.1"),
            },
            "Forge",
            "f2.0.1v1.10.1-1.10.1",
        ),
        ({"launch_utils": types.SimpleNamespace(git_tag=lambda: "v1.8.0")}, "AUTOMATIC1111", "v1.8.0"),
        (
            {
                "processing": types.SimpleNamespace(program_version=lambda: None),
                "forge_version": types.SimpleNamespace(version="2.0.1v1.10.1"),
            },
            "Forge",
            "f2.0.1v1.10.1",
        ),
        ({"launch_utils": types.SimpleNamespace(git_tag=lambda: "<none>")}, "AUTOMATIC1111", "unknown"),
    ],
)
def test_name_and_version_as_the_host_writes_them(modules, name, version):
    webui = webui_with(**modules)
    assert (webui.name, webui.version()) == (name, version)


def test_precision_line():
    webui = webui_with(devices=types.SimpleNamespace(dtype="torch.float16", dtype_vae="torch.float32"))
    assert webui.precision() == "dtype=float16, dtype_vae=float32, --no-half, --precision=full"
