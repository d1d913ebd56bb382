"""Issue 7, defects found in real WebUIs: hashes, the version string, clear messages for the README's
API example, and the reference box for clip skip 1 — through the script in the fake WebUI."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_script import cfgsim_json, png_with_infotext, run

from cfgsim.errors import InputError
from cfgsim.infotext import Infotext


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("forge", [False, True], ids=["a1111", "forge"])
def test_sha256_of_checkpoints_hashed_during_the_run_is_recorded(webui, p, forge):
    """A checkpoint the WebUI never hashed before has no sha256 when the run starts; the WebUI hashes
    it when it loads it: the metadata has it after the run."""
    web = webui(forge=forge, unhashed=("other",))
    assert web.info("other").sha256 is None
    processed = run(web, p, ["base", "other"])
    items = cfgsim_json(processed)["items"]
    assert items[1]["sha256"] == sha256_of(web.info("other").filename)
    assert items[0]["sha256"] == sha256_of(web.info("base").filename)


def test_sha256_from_the_webuis_own_hash_cache(webui, p):
    """A checkpoint that is never loaded (it fails) still gets the sha256 the WebUI has cached."""
    web = webui(unhashed=("tuned",))
    info = web.info("tuned")
    web.modules["modules.hashes"].cache[f"checkpoint/{info.name}"] = {
        "sha256": sha256_of(info.filename),
        "mtime": os.path.getmtime(info.filename) + 1,
    }
    web.fail_load.add("tuned")
    processed = run(web, p, ["base", "tuned"])
    assert cfgsim_json(processed)["items"][1]["sha256"] == sha256_of(info.filename)


def test_compared_hashes_are_the_sha256_short_hashes(webui, p):
    """The legacy 8-hex hash (64 KiB at 1 MiB) collides — every file under 1 MiB gets e3b0c442 —
    so the grid names the checkpoints by the hash the WebUI's own cells write: sha256[:10]."""
    web = webui(unhashed=("other",))
    processed = run(web, p, ["base", "other"])
    params = Infotext.parse(processed.info).params
    expected = [sha256_of(web.info(stem).filename)[:10] for stem in ("base", "other")]
    assert params["Compared hashes"] == ", ".join(expected)


def test_a1111_version_is_what_its_images_say(webui, p):
    web = webui()
    processed = run(web, p, ["base"])
    assert cfgsim_json(processed)["environment"]["Version"] == "v1.8.0-RC"
    assert Infotext.parse(processed.info).params["Version"] == "v1.8.0-RC"


def test_readme_api_example_with_missing_checkpoints_names_them(webui, p):
    """The README's copy-paste call names checkpoints that do not exist here: the answer says which,
    and lists the installed ones (not "reference 'modelA' is not one of the selected")."""
    web = webui()
    script_args = [
        ["modelA.safetensors", "modelB"],
        "cfg1",
        "1337, 42",
        1,
        "modelA",
        None,
        ["ssim"],
        True,
        False,
        0,
    ]
    with pytest.raises(InputError) as caught:
        web.script.Script().run(p, *script_args)
    message = str(caught.value)
    assert "'modelA.safetensors'" in message and "'modelB'" in message and "not installed" in message
    assert "base.safetensors" in message and "other.safetensors" in message
    assert web.received == []


def test_missing_reference_checkpoint_is_named_with_the_installed_ones(webui, p):
    web = webui()
    with pytest.raises(InputError, match=r"'modelA' is not installed \(installed: 'base.safetensors'"):
        run(web, p, ["base", "other"], reference_mode=1, reference_checkpoint="modelA")


def test_reference_image_with_clip_skip_1_shows_the_clip_skip_in_use(webui, p):
    """The box read "Clip skip 2 → (none)" while the run used 1."""
    web = webui()
    image = png_with_infotext(
        "Negative prompt: x\nSteps: 256, Sampler: Euler, CFG scale: 1, Seed: 1337, Size: 512x512, "
        "Clip skip: 1"
    )
    processed = run(web, p, ["base"], reference_mode=2, reference_image=image)
    assert ["Clip skip", "2", "1"] in cfgsim_json(processed)["deviations"]
    assert all(got["options"]["CLIP_stop_at_last_layers"] == 1 for got in web.received)
    assert "(none)" not in processed.comments
