"""cfgsim.webui.condonly: cond-only sampling at CFG 1 in A1111, only during a probe run.

The fake ``modules.sd_samplers_cfg_denoiser`` below is written for these tests from the structure
of A1111's ``CFGDenoiser.forward`` (1.8 and 1.10): cond rows (one per AND part) then one uncond row
per image, the inner model called once (``batch_cond_uncond``) or per batch of rows, the three
callbacks, ``combine_denoised``; the inner model a lazily built property, as in
``CFGDenoiserKDiffusion``. The "UNet" is a tiny torch model that counts the rows it evaluates.
"""

from __future__ import annotations

import json
import logging
import sys
import types

import conftest
import pytest

torch = pytest.importorskip("torch")

from cfgsim.webui.condonly import MODE_FORGE, MODE_HOOK, MODE_OFF, PROBE_FLAG, CondOnly  # noqa: E402

STEPS = 8
SIZE = 24  # latent side: 4 × 24 × 24 per image


class InterruptedException(BaseException):
    pass


class TinyUNet(torch.nn.Module):
    """ε from the latent, the timestep and the text conditioning (which really matters)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(4, 4, 3, 3, generator=gen) * 0.2)
        self.text = torch.nn.Parameter(torch.randn(16, 4, generator=gen))
        self.rows = 0

    def forward(self, x, t, context):
        self.rows += int(x.shape[0])
        h = torch.nn.functional.conv2d(x, self.weight, padding=1) * (1 + t.view(-1, 1, 1, 1) / 1000)
        return torch.tanh(h + (context.mean(1) @ self.text).view(-1, 4, 1, 1))


class KDiffusionWrap(torch.nn.Module):
    """Like k-diffusion's CompVisDenoiser: denoised = x - σ·ε(x·c_in, t(σ), text)."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.inner_model = unet

    def forward(self, x, sigma, cond):
        assert set(cond) == {"c_crossattn", "c_concat"}
        assert cond["c_crossattn"][0].shape[0] == x.shape[0] == cond["c_concat"][0].shape[0]
        s = sigma.view(-1, 1, 1, 1)
        eps = self.inner_model(x / (s**2 + 1) ** 0.5, sigma * 100, cond["c_crossattn"][0])
        return x - eps * s


class Composable:
    def __init__(self, cond, weight=1.0) -> None:
        self.cond, self.weight = cond, weight


class Multicond:
    def __init__(self, batch) -> None:
        self.batch = batch


def fake_cfg_module(unet) -> types.ModuleType:
    mod = types.ModuleType("modules.sd_samplers_cfg_denoiser")
    mod.opts = types.SimpleNamespace(batch_cond_uncond=True)
    mod.state = types.SimpleNamespace(interrupted=False, skipped=False)
    mod.seen = {"denoiser": [], "denoised": [], "after": []}
    mod.callbacks = {"denoiser": [], "denoised": [], "after": []}

    class CFGDenoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model_wrap = None
            self.step = 0
            self.image_cfg_scale = None
            self.p = None

        @property
        def inner_model(self):
            raise NotImplementedError()

        def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
            if mod.state.interrupted:
                raise InterruptedException()
            conds_list, rows = [], []
            for composable in cond.batch:
                conds_list.append([(len(rows) + j, c.weight) for j, c in enumerate(composable)])
                rows += [c.cond for c in composable]
            tensor = torch.stack(rows)
            b = len(conds_list)
            reps = [len(c) for c in conds_list]
            x_in = torch.cat([x[i : i + 1].repeat(n, 1, 1, 1) for i, n in enumerate(reps)] + [x])
            sigma_in = torch.cat([sigma[i : i + 1].repeat(n) for i, n in enumerate(reps)] + [sigma])
            ic_in = torch.cat(
                [image_cond[i : i + 1].repeat(n, 1, 1, 1) for i, n in enumerate(reps)] + [image_cond]
            )
            params = types.SimpleNamespace(
                x=x_in, image_cond=ic_in, sigma=sigma_in, text_cond=tensor, text_uncond=uncond
            )
            for fn in mod.callbacks["denoiser"]:
                fn(params)
            mod.seen["denoiser"].append(params.x.shape[0])
            x_in, ic_in, sigma_in = params.x, params.image_cond, params.sigma
            cond_in = torch.cat([params.text_cond, params.text_uncond])
            if mod.opts.batch_cond_uncond:
                x_out = self.inner_model(x_in, sigma_in, cond={"c_crossattn": [cond_in], "c_concat": [ic_in]})
            else:
                x_out = torch.zeros_like(x_in)
                for a in range(0, x_in.shape[0], b):
                    sub = {"c_crossattn": [cond_in[a : a + b]], "c_concat": [ic_in[a : a + b]]}
                    x_out[a : a + b] = self.inner_model(x_in[a : a + b], sigma_in[a : a + b], cond=sub)
            mod.seen["denoised"].append(x_out.clone())
            for fn in mod.callbacks["denoised"]:
                fn(x_out)
            uncond_out = x_out[-b:]
            denoised = uncond_out.clone()
            for i, conds in enumerate(conds_list):
                for index, weight in conds:
                    denoised[i] += (x_out[index] - uncond_out[i]) * (weight * cond_scale)
            mod.seen["after"].append(denoised.shape[0])
            self.step += 1
            return denoised

    class CFGDenoiserKDiffusion(CFGDenoiser):
        @property
        def inner_model(self):
            if self.model_wrap is None:
                self.model_wrap = KDiffusionWrap(unet)
            return self.model_wrap

    mod.CFGDenoiser = CFGDenoiser
    mod.CFGDenoiserKDiffusion = CFGDenoiserKDiffusion
    return mod


def conditioning(images: int, *, parts=1, weight=1.0, seed=0):
    gen = torch.Generator().manual_seed(100 + seed)
    text = torch.randn(images, parts, 6, 16, generator=gen)
    cond = Multicond([[Composable(text[i, j], weight) for j in range(parts)] for i in range(images)])
    uncond = torch.randn(images, 6, 16, generator=gen) * 3
    return cond, uncond


def sample(mod, p, *, images=2, cfg=1.0, parts=1, weight=1.0, image_cfg=None, seed=0):
    """Euler over STEPS sigmas with a fresh denoiser, as the WebUI samples; the latent as 8-bit pixels."""
    denoiser = mod.CFGDenoiserKDiffusion()
    denoiser.p, denoiser.image_cfg_scale = p, image_cfg
    cond, uncond = conditioning(images, parts=parts, weight=weight, seed=seed)
    sigmas = torch.linspace(8.0, 0.0, STEPS + 1)
    x = torch.randn(images, 4, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    image_cond = x.new_zeros(images, 5, 1, 1)
    for i in range(STEPS):
        sigma = sigmas[i] * x.new_ones(images)
        d = denoiser(
            x, sigma, uncond=uncond, cond=cond, cond_scale=cfg, s_min_uncond=0.0, image_cond=image_cond
        )
        x = x + (x - d) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return ((x[:, :3] / 8).clamp(-1, 1) * 127.5 + 127.5).round().to(torch.uint8), denoiser


@pytest.fixture
def unet():
    return TinyUNet()


@pytest.fixture
def mod(unet):
    return fake_cfg_module(unet)


def probe_p():
    return types.SimpleNamespace(**{PROBE_FLAG: True})


def within_one(a, b) -> float:
    return float(((a.int() - b.int()).abs() <= 1).float().mean())


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
@pytest.mark.parametrize("images", [1, 2])
def test_cond_only_halves_the_unet_work_and_keeps_the_image(mod, unet, batch_cond_uncond, images):
    mod.opts.batch_cond_uncond = batch_cond_uncond
    stock, _ = sample(mod, probe_p(), images=images)
    assert unet.rows == 2 * STEPS * images  # the stock denoiser: cond and uncond rows every step
    unet.rows = 0
    with CondOnly(mod.CFGDenoiser) as hook:
        fast, _ = sample(mod, probe_p(), images=images)
    assert unet.rows == STEPS * images  # evaluations per image == steps
    assert hook.counts.rows == STEPS * images and hook.counts.images == images
    assert hook.counts.per_image() == STEPS and hook.counts.filled == STEPS * images
    assert within_one(fast, stock) >= 0.999
    # The test can fail: the picture made from the uncond rows alone is a different picture.
    unet.rows = 0
    mod.callbacks["denoised"].append(lambda x_out: x_out[:images].copy_(x_out[images:]))
    uncond_only, _ = sample(mod, probe_p(), images=images)
    assert within_one(uncond_only, stock) < 0.5


def test_callbacks_get_full_consistent_tensors(mod):
    with CondOnly(mod.CFGDenoiser):
        sample(mod, probe_p(), images=2)
    assert mod.seen["denoiser"] == [4] * STEPS and mod.seen["after"] == [2] * STEPS
    for x_out in mod.seen["denoised"]:
        assert x_out.shape[0] == 4 and torch.equal(x_out[2:], x_out[:2])  # uncond rows = cond rows


def test_a_callback_that_changes_the_rows_gets_them_evaluated(mod, unet):
    def shift_uncond_latents(params):
        params.x = torch.cat([params.x[:2], params.x[2:] + 0.5])

    mod.callbacks["denoiser"].append(shift_uncond_latents)
    stock, _ = sample(mod, probe_p())
    unet.rows = 0
    with CondOnly(mod.CFGDenoiser):
        hooked, _ = sample(mod, probe_p())
    assert unet.rows == 2 * 2 * STEPS and torch.equal(hooked, stock)


def test_other_generations_are_untouched_while_installed(mod, unet):
    stock, _ = sample(mod, types.SimpleNamespace())
    unet.rows = 0
    with CondOnly(mod.CFGDenoiser) as hook:
        assert mod.CFGDenoiser.forward is not hook._original
        other, _ = sample(mod, types.SimpleNamespace())  # a user's txt2img p: no probe flag
        assert unet.rows == 2 * 2 * STEPS and torch.equal(other, stock)
        sample(mod, None)  # a denoiser without p
    assert hook.counts.rows == hook.counts.images == 0


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"parts": 2}, "AND"),
        ({"weight": 0.5}, "weighted"),
        ({"image_cfg": 1.5}, "image CFG"),
        ({"cfg": 7.0}, "CFG scale"),
    ],
)
def test_and_prompts_edit_models_and_real_cfg_take_the_stock_path(mod, unet, kwargs, reason):
    stock, _ = sample(mod, probe_p(), **kwargs)
    stock_rows, unet.rows = unet.rows, 0
    with CondOnly(mod.CFGDenoiser) as hook:
        hooked, _ = sample(mod, probe_p(), **kwargs)
    assert unet.rows == stock_rows and torch.equal(hooked, stock)
    assert hook.counts.stock_calls == STEPS and reason in hook.counts.stock_reason
    assert reason in hook.environment_value()


def test_an_image_cfg_of_one_is_plain_sampling(mod, unet):
    with CondOnly(mod.CFGDenoiser) as hook:
        sample(mod, probe_p(), image_cfg=1.0)
    assert unet.rows == 2 * STEPS and hook.environment_value() == MODE_HOOK


def assert_removed(mod, denoiser=None):
    assert "forward" not in vars(mod.CFGDenoiserKDiffusion)
    assert mod.CFGDenoiser.forward.__qualname__.endswith("CFGDenoiser.forward")
    assert not hasattr(mod.CFGDenoiser.forward, "__wrapped__")
    if denoiser is not None and denoiser.model_wrap is not None:
        assert "forward" not in vars(denoiser.model_wrap)  # the inner model's own forward again


def test_removed_after_an_exception_in_the_run_and_in_the_unet(mod, unet):
    original = mod.CFGDenoiser.forward
    with pytest.raises(RuntimeError, match="run failed"), CondOnly(mod.CFGDenoiser):
        raise RuntimeError("run failed")
    assert mod.CFGDenoiser.forward is original

    def out_of_memory(*args):
        raise RuntimeError("OOM")

    unet.forward = out_of_memory
    denoiser = mod.CFGDenoiserKDiffusion()
    denoiser.p = probe_p()
    with pytest.raises(RuntimeError, match="OOM"), CondOnly(mod.CFGDenoiser):
        x = torch.zeros(1, 4, 8, 8)
        cond, uncond = conditioning(1)
        denoiser(x, torch.ones(1), uncond[:1], cond, 1.0, 0.0, x.new_zeros(1, 5, 1, 1))
    assert mod.CFGDenoiser.forward is original
    assert_removed(mod, denoiser)


@pytest.mark.parametrize("interrupt", [InterruptedException, KeyboardInterrupt])
def test_removed_after_an_interrupt(mod, unet, interrupt):
    calls = []

    def press_interrupt(params):
        calls.append(1)
        if len(calls) == 3:
            if interrupt is InterruptedException:
                mod.state.interrupted = True  # seen by the next step's forward
            else:
                raise KeyboardInterrupt

    mod.callbacks["denoiser"].append(press_interrupt)
    with pytest.raises(interrupt), CondOnly(mod.CFGDenoiser):
        sample(mod, probe_p())
    assert_removed(mod)
    mod.state.interrupted = False
    mod.callbacks["denoiser"].clear()
    unet.rows = 0
    sample(mod, probe_p())
    assert unet.rows == 2 * 2 * STEPS  # not installed any more


def test_a_later_patch_by_another_extension_is_not_clobbered(mod, unet, caplog):
    caplog.set_level(logging.WARNING, logger="cfgsim")
    with CondOnly(mod.CFGDenoiser):
        ours = mod.CFGDenoiser.forward

        def theirs(self, *args, **kwargs):
            theirs.calls += 1
            return ours(self, *args, **kwargs)

        theirs.calls = 0
        mod.CFGDenoiser.forward = theirs
        sample(mod, probe_p())
        assert unet.rows == 2 * STEPS  # still cond-only through their wrapper
    assert mod.CFGDenoiser.forward is theirs
    assert "replaced by someone else" in caplog.text
    unet.rows = 0
    sample(mod, probe_p())
    assert unet.rows == 2 * 2 * STEPS and theirs.calls == 2 * STEPS  # ours passes calls through now


def test_forge_and_the_setting_off_install_nothing(mod):
    original = mod.CFGDenoiser.forward
    for hook in (CondOnly(mod.CFGDenoiser, forge=True), CondOnly(mod.CFGDenoiser, enabled=False)):
        with hook:
            assert mod.CFGDenoiser.forward is original
    assert CondOnly(mod.CFGDenoiser, forge=True).mode == MODE_FORGE
    assert CondOnly(mod.CFGDenoiser, enabled=False).mode == MODE_OFF
    assert CondOnly.for_module(None).mode.startswith(MODE_OFF)


# -- through the script, in the fake WebUI of conftest.py ------------------------------------------


def cfgsim_json(processed) -> dict:
    return json.loads(processed.js())["extra_generation_params"]["cfgsim"]


@pytest.fixture
def web_with_denoiser(webui, mod, unet, monkeypatch):
    """The fake WebUI whose process_images samples with the fake denoiser (2 steps per image)."""

    def make(**kwargs):
        web = webui(**kwargs)
        monkeypatch.setitem(sys.modules, "modules.sd_samplers_cfg_denoiser", mod)
        web.rows, web.patched = [], []

        def on_call(index, pc):
            before = unet.rows
            web.patched.append(mod.CFGDenoiser.forward.__qualname__.split("<locals>.")[-1])
            sample(mod, pc, images=1)
            web.rows.append(unet.rows - before)

        web.on_call = on_call
        return web

    return make


def test_the_probe_runs_cond_only_and_says_so(web_with_denoiser, p, mod, unet):
    web = web_with_denoiser()
    processed = web.script.Script().run(p, ["base", "other"])
    assert web.rows == [STEPS, STEPS]
    assert all(getattr(r["p"], PROBE_FLAG) for r in web.received)
    assert cfgsim_json(processed)["environment"]["Cond-only"] == MODE_HOOK
    assert_removed(mod)
    unet.rows = 0
    sample(mod, p, images=1)  # the user's own generation afterwards
    assert unet.rows == 2 * STEPS


def test_the_setting_off_runs_the_stock_path(web_with_denoiser, p, mod):
    web = web_with_denoiser()
    web.script.Script()  # the settings callback is registered when the script loads
    web.modules["modules.script_callbacks"].registered[0]()
    assert web.opts.data["cfgsim_skip_uncond"] is True  # default on
    web.opts.data["cfgsim_skip_uncond"] = False
    processed = web.script.Script().run(p, ["base"])
    assert web.rows == [2 * STEPS]
    assert cfgsim_json(processed)["environment"]["Cond-only"] == MODE_OFF


def test_an_api_request_can_turn_it_off_for_itself(web_with_denoiser, p):
    web = web_with_denoiser()
    p.override_settings = {"cfgsim_skip_uncond": False}
    processed = web.script.Script().run(p, ["base"])
    assert web.rows == [2 * STEPS]
    assert cfgsim_json(processed)["environment"]["Cond-only"] == MODE_OFF


def test_forge_hooks_nothing_and_records_its_own_skip(web_with_denoiser, p, mod):
    web = web_with_denoiser(forge=True)
    processed = web.script.Script().run(p, ["base"])
    assert web.patched == ["CFGDenoiser.forward"]  # the class's own forward during the generation
    assert cfgsim_json(processed)["environment"]["Cond-only"] == MODE_FORGE


def test_without_the_denoiser_module_the_metadata_says_not_available(webui, p):
    web = webui()
    processed = web.script.Script().run(p, ["base"])
    assert cfgsim_json(processed)["environment"]["Cond-only"] == "off (not available)"


assert conftest  # the fake WebUI's fixtures come from conftest.py
