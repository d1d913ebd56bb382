"""Benchmark: cond-only sampling at CFG 1 against the stock cond + uncond batch (issue 10).

    python benchmarks/bench_condonly.py cpu [--steps 3] [--tiny-steps 16]   # (a) standalone, on the CPU
    python benchmarks/bench_condonly.py batch [--seeds 4]                   # (c) seeds batched or not
    python benchmarks/bench_condonly.py webui --url http://127.0.0.1:7860 --checkpoint base.safetensors
                                        [--steps 4] [--log /work/webui/logs/a1111.log]   # (d) in A1111

(a) The standalone pipeline (``cfgsim.standalone.pipeline``) with ``stock_cfg=False`` (cond-only,
what the probe runs) and ``stock_cfg=True`` (the WebUI's two rows per image and step), the same
code otherwise: a full-width SD 1.x UNet (random weights, 320 channels, context 768, 64x64 latent),
where the UNet dominates, and the tiny demo UNet (``cfgsim.standalone.demo_config``), where the
per-step overhead does. Printed: seconds per step and per image, UNet rows per image, the ratio
cond-only / stock (baseline = stock, measured in the same run), how many pixels of the two images
agree within 1/255, and for the tiny model where the time of one image goes.

(c) ``generate_batch`` over N seeds against N single-seed calls (tiny model), cond-only.

(d) The real WebUI over its API: stock txt2img with the probe's settings (empty prompt, Euler, CFG 1,
512x512, seed 1337, clip skip 2, the same steps) against the probe script with the cond-only hook
on and off (``override_settings`` ``cfgsim_skip_uncond``). With ``--log`` (the WebUI's log) and a
temporary counting extension in the WebUI (see benchmarks/RESULTS-condonly.md) it also counts UNet
rows and times the steps.
"""

from __future__ import annotations

import argparse
import base64
import io
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 1337


def within_one(a, b) -> float:
    import numpy as np

    x, y = np.asarray(a).astype(int), np.asarray(b).astype(int)
    return float((abs(x - y) <= 1).mean())


def models_of(width: str, folder: Path):
    """SD1Models with random weights: "full" (SD 1.x UNet and VAE) or "tiny" (the demo's)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cfgsim.standalone import demo_config
    from cfgsim.standalone.configs import load_config_dir
    from cfgsim.standalone.pipeline import SD1Models, TextEncoder, load_tokenizer
    from cfgsim.standalone.schedule import DiscreteSchedule, alphas_cumprod

    config = load_config_dir(demo_config.write_config_dir(folder))
    torch.manual_seed(0)
    if width == "full":
        unet = UNet2DConditionModel.from_config(
            dict(
                sample_size=64,
                block_out_channels=[320, 640, 1280, 1280],
                cross_attention_dim=768,
                attention_head_dim=8,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            )
        )
        clip = CLIPTextConfig(**{**demo_config.CLIP_CONFIG, "hidden_size": 768, "intermediate_size": 3072})
        clip.num_hidden_layers, clip.num_attention_heads = 12, 12
    else:
        unet = UNet2DConditionModel.from_config(demo_config.UNET_CONFIG)
        clip = CLIPTextConfig(**demo_config.CLIP_CONFIG)
    vae = AutoencoderKL.from_config(demo_config.VAE_CONFIG)  # the tiny VAE for both: one decode per image
    ac = alphas_cumprod(config.beta_start, config.beta_end, config.num_train_timesteps, config.beta_schedule)
    return SD1Models(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        text=TextEncoder(CLIPTextModel(clip).eval().requires_grad_(False), load_tokenizer(config)),
        schedule=DiscreteSchedule(ac),
        scaling_factor=0.18215,
        device="cpu",
        dtype=torch.float32,
    )


class UNetClock:
    """Counts the UNet's rows and times its calls (forward pre/post hooks)."""

    def __init__(self, unet) -> None:
        self.rows, self.seconds, self._start = 0, 0.0, 0.0
        unet.register_forward_pre_hook(self._pre)
        unet.register_forward_hook(self._post)

    def _pre(self, module, args) -> None:
        self.rows += int(args[0].shape[0])
        self._start = time.perf_counter()

    def _post(self, module, args, out) -> None:
        self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.rows, self.seconds = 0, 0.0


def one_image(models, clock, spec, stock: bool):
    from cfgsim.standalone.pipeline import generate

    clock.reset()
    start = time.perf_counter()
    marks = [start]
    image = generate(
        models, spec, SEED, stock_cfg=stock, callback=lambda i, n: marks.append(time.perf_counter())
    )
    total = time.perf_counter() - start
    # The first step's time includes the text encoder: the median of the others.
    steps = [b - a for a, b in itertools.pairwise(marks[1:])] or [marks[-1] - marks[0]]
    return image, total, statistics.median(steps), clock.rows, clock.seconds


def cpu(args: argparse.Namespace) -> int:
    import torch

    from cfgsim.spec import get_preset

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU, float32, 512x512")
    with tempfile.TemporaryDirectory() as tmp:
        for width, steps in (("full", args.steps), ("tiny", args.tiny_steps)):
            models = models_of(width, Path(tmp) / width)
            clock = UNetClock(models.unet)
            spec = get_preset("cfg1").replace(steps=steps)
            one_image(models, clock, spec.replace(steps=1), False)  # warm-up
            stock = one_image(models, clock, spec, True)
            fast = one_image(models, clock, spec, False)
            print(f"\n{width}-width UNet, {steps} steps (baseline: stock cond + uncond, same run)")
            for name, (_, total, step, rows, unet_s) in (("stock", stock), ("cond-only", fast)):
                print(
                    f"  {name:9s}: {total:7.2f} s/image, {step:6.3f} s/step (median), "
                    f"{rows / 1:g} UNet rows/image = {rows / steps:g} per step, UNet {unet_s:.2f} s"
                )
            print(
                f"  ratio cond-only/stock: per step {fast[2] / stock[2]:.3f}, "
                f"per image {fast[1] / stock[1]:.3f}; "
                f"pixels within 1/255: {100 * within_one(fast[0], stock[0]):.3f} %"
            )
            if width == "tiny":
                profile(models, clock, spec, fast)
    return 0


def profile(models, clock, spec, fast) -> None:
    """Where one tiny cond-only image's time goes: UNet, text encoder, VAE decode, the rest."""
    import torch

    _, total, _, _, unet_s = fast
    with torch.inference_mode():
        start = time.perf_counter()
        cond = models.text.encode(spec.prompt, spec.clip_skip)
        text_s = time.perf_counter() - start
        latent = torch.zeros(1, 4, 64, 64)
        start = time.perf_counter()
        models.vae.decode(latent / models.scaling_factor)
        vae_s = time.perf_counter() - start
    del cond
    rest = total - unet_s - text_s - vae_s
    print(
        f"  tiny cond-only image {total:.2f} s = UNet {unet_s:.2f} s ({100 * unet_s / total:.0f} %), "
        f"VAE decode {vae_s:.2f} s ({100 * vae_s / total:.0f} %), text {text_s:.3f} s, "
        f"sampler loop and the rest {rest:.2f} s ({100 * rest / total:.0f} %; "
        f"{1000 * rest / spec.steps:.1f} ms/step)"
    )


def batch(args: argparse.Namespace) -> int:
    from cfgsim.spec import get_preset
    from cfgsim.standalone.pipeline import generate, generate_batch

    seeds = list(range(1, args.seeds + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for width, steps in (("tiny", args.tiny_steps), ("full", args.steps))[: 1 + args.full]:
            models = models_of(width, Path(tmp) / width)
            spec = get_preset("cfg1").replace(steps=steps)
            generate(models, spec.replace(steps=1), SEED)  # warm-up
            start = time.perf_counter()
            single = [generate(models, spec, s) for s in seeds]
            one_s = time.perf_counter() - start
            start = time.perf_counter()
            batched = generate_batch(models, spec, seeds)
            batch_s = time.perf_counter() - start
            same = min(within_one(a, b) for a, b in zip(single, batched, strict=True))
            print(
                f"{width}: {len(seeds)} seeds x {steps} steps: "
                f"one at a time {one_s / len(seeds):.2f} s/image, "
                f"batched {batch_s / len(seeds):.2f} s/image, ratio batched/single {batch_s / one_s:.3f}; "
                f"pixels within 1/255 (worst seed) {100 * same:.3f} %"
            )
    return 0


# -- (d) the real WebUI --------------------------------------------------------------------------


def post(url: str, path: str, payload: dict) -> tuple[dict, float]:
    request = urllib.request.Request(
        url + path, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        data = json.loads(response.read())
    return data, time.perf_counter() - start


def decode(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64.split(",", 1)[-1]))).convert("RGB")


def log_figures(log: str | None, offset: int) -> str:
    """UNet rows and step times from the counting extension's lines written since ``offset``."""
    if not log:
        return ""
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    rows = sum(int(m) for m in re.findall(r"unetcount: unet rows=(\d+)", text))
    times = [float(t) for t in re.findall(r"unetcount: step rows_in=\d+ t=([\d.]+)", text)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    step = f", {statistics.median(gaps):.3f} s/step (median)" if gaps else ""
    return f"; UNet rows {rows} over {len(times)} denoiser steps{step}"


def webui(args: argparse.Namespace) -> int:
    from cfgsim import controls

    url, ckpt, steps = args.url.rstrip("/"), args.checkpoint, args.steps
    size = lambda: os.path.getsize(args.log) if args.log else 0  # noqa: E731
    base = {"override_settings": {"sd_model_checkpoint": ckpt, "CLIP_stop_at_last_layers": 2}}
    stock = dict(base, prompt="", negative_prompt="", sampler_name="Euler", cfg_scale=1, seed=SEED)
    stock.update(width=512, height=512, steps=steps, batch_size=1, n_iter=1)
    post(url, "/sdapi/v1/txt2img", dict(stock, steps=1))  # loads the checkpoint

    def probe(on: bool) -> dict:
        values = {"checkpoints": [ckpt], "include_images": True, "preview_steps": steps, "metrics": ["SSIM"]}
        script_args = []
        for ctl in controls.CONTROLS:
            default = ctl.choices.index(ctl.default) if ctl.kind == "index" else ctl.default
            script_args.append(values.get(ctl.name, list(default) if isinstance(default, tuple) else default))
        overrides = {"sd_model_checkpoint": ckpt, "cfgsim_skip_uncond": on}
        return {
            "script_name": "cfg 1.0 similarity probe",
            "script_args": script_args,
            "override_settings": overrides,
        }

    results = {}
    for name, path, payload in (
        ("stock txt2img", "/sdapi/v1/txt2img", stock),
        ("probe, cond-only on", "/sdapi/v1/txt2img", probe(True)),
        ("probe, cond-only off", "/sdapi/v1/txt2img", probe(False)),
    ):
        offset = size()
        data, seconds = post(url, path, payload)
        info = json.loads(data.get("info") or "{}")
        env = ((info.get("extra_generation_params") or {}).get("cfgsim") or {}).get("environment", {})
        results[name] = (decode(data["images"][-1]), seconds)
        mode = f", Cond-only: {env.get('Cond-only')}" if env else ""
        print(f"{name:22s}: {seconds:7.1f} s{mode}{log_figures(args.log, offset)}", flush=True)
    s_stock, s_on, s_off = (results[k][1] for k in results)
    img_stock, img_on, img_off = (results[k][0] for k in results)
    print(
        f"ratios: probe on / stock txt2img {s_on / s_stock:.3f}, probe off / stock {s_off / s_stock:.3f}, "
        f"on / off {s_on / s_off:.3f}"
    )
    print(
        f"pixels within 1/255: on vs off {100 * within_one(img_on, img_off):.3f} %, "
        f"off vs stock txt2img {100 * within_one(img_off, img_stock):.3f} %, "
        f"on vs stock {100 * within_one(img_on, img_stock):.3f} %"
    )
    if args.save:
        for name, (image, _) in results.items():
            image.save(
                Path(args.save)
                / f"{ckpt.split('.')[0]}-{steps}-{name.replace(' ', '_').replace(',', '')}.png"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("cpu")
    c = sub.add_parser("batch")
    for p in (a, c):
        p.add_argument("--steps", type=int, default=3, help="full-width steps (default 3)")
        p.add_argument("--tiny-steps", type=int, default=16, help="tiny-model steps (default 16)")
    c.add_argument("--seeds", type=int, default=4)
    c.add_argument("--full", type=int, default=0, choices=(0, 1), help="1: the full-width model too")
    d = sub.add_parser("webui")
    d.add_argument("--url", default="http://127.0.0.1:7860")
    d.add_argument("--checkpoint", default="base.safetensors")
    d.add_argument("--steps", type=int, default=4)
    d.add_argument("--log", default=None, help="the WebUI's log (with the counting extension)")
    d.add_argument("--save", default=None, help="folder for the three images")
    args = parser.parse_args(argv)
    return {"cpu": cpu, "batch": batch, "webui": webui}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
