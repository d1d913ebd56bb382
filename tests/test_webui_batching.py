"""Seeds of one checkpoint batched in the WebUI: one ``process_images`` call per batch, with the
seeds as a list (see cfgsim.webui.host.WebUIHost.generate_many), in the fake WebUI of conftest.py."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

import cfgsim.standalone.host as standalone_host
from cfgsim.library import settings_key
from cfgsim.result import FAILED, OK, SKIPPED
from cfgsim.spec import ProbeSpec
from cfgsim.webui.host import BATCH_ENV_KEY, WebUIHost, automatic_batch_size
from tests.helpers import script_args as args

SEEDS = "1337, 42, 7"


def run(web, p, checkpoints, **values):
    return web.script.Script().run(p, *args(checkpoints, **values))


def cfgsim_json(processed) -> dict:
    return json.loads(processed.js())["extra_generation_params"]["cfgsim"]


def calls(web) -> list[tuple[str, object, int, int]]:
    """(checkpoint, seed as given, batch_size, n_iter) of every process_images call."""
    return [(got["checkpoint"], got["p"].seed, got["p"].batch_size, got["p"].n_iter) for got in web.received]


def cell_images(processed) -> dict[int, np.ndarray]:
    """Seed → pixels of the probe images after the rendered images (include_images)."""
    first = processed.index_of_first_image
    return {
        seed: np.asarray(image.convert("RGB"))
        for seed, image in zip(processed.all_seeds[first:], processed.images[first:], strict=True)
    }


def spec(seeds=(1337, 42, 7)) -> ProbeSpec:
    return ProbeSpec(seeds=tuple(seeds))


# -- one call per batch ------------------------------------------------------------------------------


@pytest.mark.parametrize("forge", [False, True])
def test_seeds_of_one_checkpoint_go_in_one_call_and_equal_the_images_made_alone(webui, p, forge):
    web = webui(forge=forge)
    alone = cell_images(run(web, p, ["base", "other"], seeds=SEEDS, include_images=True))
    assert [c[1] for c in calls(web)] == [1337, 42, 7] * 2  # default on the CPU: one seed per call
    web.received.clear()
    web.opts.data["cfgsim_batch_size"] = 3
    processed = run(web, p, ["base", "other"], seeds=SEEDS, include_images=True)
    # The loaded checkpoint runs first (Forge: whichever the last run left loaded).
    assert sorted(calls(web)) == [("base", [1337, 42, 7], 3, 1), ("other", [1337, 42, 7], 3, 1)]
    for got in web.received:
        pc = got["p"]
        assert pc.all_prompts == [""] * 3 and pc.all_negative_prompts == [pc.negative_prompt] * 3
        assert pc.subseed_strength == 0 and (pc.seed_resize_from_w, pc.seed_resize_from_h) == (0, 0)
        assert pc.steps == 256 and pc.cfg_scale == 1.0 and pc.sampler_name == "Euler"
    batched = cell_images(processed)
    # The two checkpoints' images: cells in row order, base then other, for each seed.
    data = cfgsim_json(processed)
    assert all(c["status"] == OK for c in data["cells"])
    assert data["environment"][BATCH_ENV_KEY] == "3"
    assert set(batched) == set(alone) == {1337, 42, 7}
    first = processed.index_of_first_image
    single = run(web, p, ["base", "other"], seeds=SEEDS, include_images=True)
    for a, b in zip(processed.images[first:], single.images[single.index_of_first_image :], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # Each image's own infotext names its own seed.
    for seed, text in zip(processed.all_seeds[first:], processed.infotexts[first:], strict=True):
        assert f"Seed: {seed}," in text


def test_a_batch_larger_than_the_seeds_and_the_remainder(webui, p):
    web = webui()
    web.opts.data["cfgsim_batch_size"] = 2
    processed = run(web, p, ["base"], seeds=SEEDS)
    assert calls(web) == [("base", [1337, 42], 2, 1), ("base", 7, 1, 1)]  # one seed stays a number
    assert cfgsim_json(processed)["environment"][BATCH_ENV_KEY] == "2"
    web.received.clear()
    web.opts.data["cfgsim_batch_size"] = 8
    processed = run(web, p, ["base"], seeds=SEEDS)
    assert calls(web) == [("base", [1337, 42, 7], 3, 1)]
    assert cfgsim_json(processed)["environment"][BATCH_ENV_KEY] == "3"  # what a batch held at most


def test_images_map_to_their_seeds_after_a_grid(webui, p):
    web = webui()
    host = WebUIHost(p, web.context())
    (checkpoint,) = host.resolve(["base"])
    alone = {seed: host.generate(checkpoint, spec(), seed) for seed in (1337, 42, 7)}
    original = web.process_images

    def with_grid(pc, index_of_first_image):
        processed = original(pc)
        grid = Image.new("RGB", (64, 64), "white")
        processed.images.insert(0, grid)
        processed.infotexts.insert(0, "the grid's infotext")
        processed.index_of_first_image = index_of_first_image
        return processed

    for index in (1, 0):  # 0: a grid the index does not tell about
        processing = web.modules["modules.processing"]
        processing.process_images = lambda pc, i=index: with_grid(pc, i)
        made = host.generate_many(checkpoint, spec(), [7, 1337, 42])
        assert len(made) == 3
        for seed, generated in zip([7, 1337, 42], made, strict=True):
            assert np.array_equal(np.asarray(generated.image), np.asarray(alone[seed].image))
            assert f"Seed: {seed}," in generated.infotext
            assert generated.settings == {"VAE in use": "from the checkpoint"}


def test_too_few_images_or_other_seeds_fail_the_batch(webui, p):
    web = webui()
    host = WebUIHost(p, web.context())
    (checkpoint,) = host.resolve(["base"])
    original = web.process_images
    processing = web.modules["modules.processing"]

    def one_short(pc):
        processed = original(pc)
        del processed.images[-1]
        return processed

    processing.process_images = one_short
    with pytest.raises(RuntimeError, match="2 images for 3 seeds"):
        host.generate_many(checkpoint, spec(), [1, 2, 3])

    def other_seeds(pc):
        processed = original(pc)
        processed.all_seeds = [s + 1 for s in processed.all_seeds]
        return processed

    processing.process_images = other_seeds
    with pytest.raises(RuntimeError, match="used the seeds"):
        host.generate_many(checkpoint, spec(), [1, 2, 3])


# -- the batch size ----------------------------------------------------------------------------------


def test_batch_size_from_the_setting_automatic_and_the_request(webui, p, monkeypatch):
    web = webui()
    context = web.context()
    assert WebUIHost(p, context).batch_size == 1  # the setting's default, 0: automatic; no device known
    context.devices = types.SimpleNamespace(device="cpu")
    assert WebUIHost(p, context).batch_size == 1  # automatic on the CPU
    web.opts.data["cfgsim_batch_size"] = 4
    assert WebUIHost(p, context).batch_size == 4
    p.override_settings = {"cfgsim_batch_size": "2"}  # an API request decides for itself
    assert WebUIHost(p, context).batch_size == 2
    p.override_settings = {"cfgsim_batch_size": 0}
    assert WebUIHost(p, context).batch_size == 1
    p.override_settings = {"cfgsim_batch_size": "many"}  # not a number: automatic
    assert WebUIHost(p, context).batch_size == 1


def test_automatic_batch_size_on_cuda_is_the_standalone_rule(monkeypatch):
    asked = []
    monkeypatch.setattr(standalone_host, "default_batch_size", lambda device: asked.append(device) or 5)
    assert automatic_batch_size(types.SimpleNamespace(device="cuda:1")) == 5
    assert asked == ["cuda:1"]
    assert automatic_batch_size(types.SimpleNamespace(device="mps")) == 1
    assert automatic_batch_size(None) == 1

    def broken(device):
        raise RuntimeError("CUDA error: no device")

    monkeypatch.setattr(standalone_host, "default_batch_size", broken)
    assert automatic_batch_size(types.SimpleNamespace(device="cuda")) == 1


def test_cfgsim_webui_imports_no_torch():
    code = "import sys, cfgsim.webui.host, cfgsim.webui.run; print('torch' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_request_override_batches_that_request_only(webui, p):
    web = webui()
    web.modules["modules.script_callbacks"].registered[0]()  # the settings section, as at startup
    assert web.opts.data["cfgsim_batch_size"] == 0
    p.override_settings = {"cfgsim_batch_size": 3}
    run(web, p, ["base"], seeds=SEEDS)
    assert calls(web) == [("base", [1337, 42, 7], 3, 1)]
    web.received.clear()
    p.override_settings = {}
    run(web, p, ["base"], seeds=SEEDS)
    assert [c[2] for c in calls(web)] == [1, 1, 1]
    assert web.opts.data["cfgsim_batch_size"] == 0  # the request did not change the setting


# -- failures, interrupts ----------------------------------------------------------------------------


def test_a_failed_batch_fails_its_cells_and_the_run_goes_on(webui, p):
    web = webui()
    web.opts.data["cfgsim_batch_size"] = 2
    web.fail_cell.add(("base", 42))
    processed = run(web, p, ["base", "other"], seeds=SEEDS)
    data = cfgsim_json(processed)
    cells = {(c["item"], c["row"]): c for c in data["cells"]}
    assert cells[(0, 0)]["status"] == cells[(0, 1)]["status"] == FAILED  # the batch [1337, 42]
    assert "out of memory" in cells[(0, 1)]["reason"]
    assert cells[(0, 2)]["status"] == OK  # seed 7: the next batch
    assert all(cells[(1, r)]["status"] == OK for r in range(3))
    assert calls(web) == [
        ("base", [1337, 42], 2, 1),
        ("base", 7, 1, 1),
        ("other", [1337, 42], 2, 1),
        ("other", 7, 1, 1),
    ]


def test_a_load_failure_fails_the_checkpoint_once(webui, p):
    web = webui()
    web.opts.data["cfgsim_batch_size"] = 2
    web.fail_load.add("other")
    processed = run(web, p, ["base", "other"], seeds=SEEDS)
    cells = {(c["item"], c["row"]): c for c in cfgsim_json(processed)["cells"]}
    assert all(
        cells[(1, r)]["status"] == FAILED and "loading failed" in cells[(1, r)]["reason"] for r in range(3)
    )
    assert [c[0] for c in calls(web)] == ["base", "base"]  # the broken checkpoint was not tried per batch


def test_an_interrupt_keeps_the_batches_done(webui, p):
    web = webui()
    web.opts.data["cfgsim_batch_size"] = 3

    def interrupt(index, pc):
        if index == 1:
            web.state.interrupted = True  # during the second checkpoint's batch

    web.on_call = interrupt
    processed = run(web, p, ["base", "other", "tuned"], seeds=SEEDS)
    data = cfgsim_json(processed)
    assert data["interrupted"] is True
    status = {(c["item"], c["row"]): c["status"] for c in data["cells"]}
    assert [status[(0, r)] for r in range(3)] == [OK] * 3
    assert [status[(i, r)] for i in (1, 2) for r in range(3)] == [SKIPPED] * 6  # cut short, not run
    assert len(web.received) == 2
    assert web.loaded() == "base"


# -- the library ---------------------------------------------------------------------------------------


def test_the_library_key_does_not_depend_on_the_batch_size(webui, p, tmp_path):
    web = webui()
    web.opts.data["cfgsim_library_dir"] = str(tmp_path / "library")
    keys = []
    for size in (1, 3):
        web.opts.data["cfgsim_batch_size"] = size
        host = WebUIHost(p, web.context())
        assert host.batch_size == size
        keys.append(settings_key(spec(), host.name, host.environment()))
        assert BATCH_ENV_KEY not in host.environment()
    assert keys[0] == keys[1]

    web.opts.data["cfgsim_batch_size"] = 1
    first = run(web, p, ["base", "other"], seeds=SEEDS)
    assert len(web.received) == 6
    web.received.clear()
    web.opts.data["cfgsim_batch_size"] = 3
    second = run(web, p, ["base", "other"], seeds=SEEDS)
    assert web.received == []  # every image from the library made with batches of one
    assert all(c["origin"] == "library" for c in cfgsim_json(second)["cells"])
    assert cfgsim_json(first)["environment"][BATCH_ENV_KEY] == "1"
    assert cfgsim_json(second)["environment"][BATCH_ENV_KEY] == "3"
