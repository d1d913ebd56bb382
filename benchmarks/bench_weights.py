"""Weight-space view at full SD 1.5 size: one streaming pass vs loading both files for every pair.

Builds N fp16 checkpoints with the full SD 1.5 architecture (UNet 860 M, CLIP ViT-L text encoder
123 M, VAE 84 M parameters; WebUI single-file layout, about 2.1 GB each) of known lineage from
random weights — two roots, then weighted-sum merges of them with a light "fine-tune" on top —
into a temporary folder, and times, each in a fresh subprocess after evicting the files from the
page cache (``posix_fadvise(DONTNEED)``, so every method starts from the disk):

* **read once** — plain sequential reads of every file (the floor for anything that reads them);
* **read once, O_DIRECT** — the same bypassing the page cache, as cfgsim's pass reads (Linux);
* **cfgsim** — ``cfgsim.weights.compare_checkpoints``: fingerprints, identity, per-block Gram matrices
  of all pairs;
* **pairwise** — what existing tools do: for every pair, ``safetensors.torch.load_file`` both files
  and compute each block's cosine from the two state dicts.

and reports the ratios measured in this run, the peak RSS of cfgsim at two N (``ru_maxrss`` of its
subprocess) and checks that both methods agree on every pair's per-block cosine.

    .venv/bin/python benchmarks/bench_weights.py                 # N = 4 and 8, full size
    .venv/bin/python benchmarks/bench_weights.py --n 3 --scale 8  # a quick check at 1/8 width
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}
SD15_CLIP = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
}


def _scaled(config: dict, scale: int, keys: tuple[str, ...]) -> dict:
    out = dict(config)
    for k in keys:
        v = out[k]
        # GroupNorm's 32 groups: every width stays a multiple of 32.
        out[k] = (
            [max(32, c // scale // 32 * 32) for c in v]
            if isinstance(v, list)
            else max(32, v // scale // 32 * 32)
        )
    return out


def ldm_shapes(scale: int = 1) -> dict[str, tuple[int, ...]]:
    """{ldm key: shape} of an SD 1.5 checkpoint (``scale`` > 1: every width divided, for quick runs)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from cfgsim.standalone import keymap
    from cfgsim.standalone.checkpoint import UNET_PREFIX, VAE_PREFIX

    unet_cfg = _scaled(SD15_UNET, scale, ("block_out_channels", "cross_attention_dim"))
    vae_cfg = _scaled(SD15_VAE, scale, ("block_out_channels",))
    clip_cfg = _scaled(SD15_CLIP, scale, ("hidden_size", "intermediate_size"))
    if scale > 1:
        unet_cfg["cross_attention_dim"] = clip_cfg["hidden_size"]
        clip_cfg["num_attention_heads"] = max(1, clip_cfg["hidden_size"] // 64)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg).state_dict()
        vae = AutoencoderKL.from_config(vae_cfg).state_dict()
        clip = CLIPTextModel(CLIPTextConfig(**clip_cfg)).state_dict()
    shapes = {}
    for state, mapping in (
        (unet, keymap.key_map(unet, keymap.unet_pairs(unet_cfg), UNET_PREFIX)),
        (vae, keymap.key_map(vae, keymap.vae_pairs(vae_cfg), VAE_PREFIX)),
        (clip, keymap.clip_key_map(clip)),
    ):
        for key, ldm in mapping.items():
            shape = tuple(state[key].shape)
            if (
                ldm.startswith(VAE_PREFIX)
                and ".mid.attn_1." in ldm
                and ldm.endswith(".weight")
                and len(shape) == 2
            ):
                shape = (*shape, 1, 1)
            shapes[ldm] = shape
    return dict(sorted(shapes.items()))


def build(folder: Path, n: int, scale: int) -> list[Path]:
    """N fp16 checkpoints of known lineage: roots A and B, then merges (1 − α)·A + α·B + ε·C for
    α = 0.2 … 0.8 (C a third random model, ε a per-file "fine-tune" of 1-2 % of the weights' scale)."""
    import torch
    from safetensors.torch import save_file

    shapes = ldm_shapes(scale)
    g = torch.Generator().manual_seed(0)
    a, b, c = ({k: (torch.randn(s, generator=g) * 0.05).half() for k, s in shapes.items()} for _ in range(3))
    paths = []
    for i in range(n):
        path = folder / f"model{i}.safetensors"
        if i < 2:
            state = (a, b)[i]
        else:
            alpha = 0.2 + 0.6 * (i - 2) / max(1, n - 3)
            eps = 0.01 + 0.01 * (i - 2) / max(1, n - 3)
            state = {
                k: ((1 - alpha) * a[k].float() + alpha * b[k].float() + eps * c[k].float()).half()
                for k in shapes
            }
        save_file(state, str(path), metadata={"format": "pt"})
        paths.append(path)
        del state
        print(f"  built {path.name} ({path.stat().st_size / 1e9:.2f} GB)", flush=True)
    return paths


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- the three methods, each run in its own process ----------------------------------------------


def method_read(paths: list[str]) -> dict:
    buf = bytearray(16 << 20)
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return {"bytes": total}


def method_read_direct(paths: list[str]) -> dict:
    """Sequential reads with O_DIRECT (no page cache), as cfgsim's pass reads: the floor for it."""
    import mmap

    buf = mmap.mmap(-1, 16 << 20)
    view = memoryview(buf)
    total = 0
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT)
        try:
            offset = 0
            while n := os.preadv(fd, [view], offset):
                offset += n
            total += offset
        finally:
            os.close(fd)
    return {"bytes": total}


def method_cfgsim(paths: list[str]) -> dict:
    from cfgsim.weights import compare_checkpoints

    report = compare_checkpoints(paths)
    return {
        "cosine": {
            f"{a}|{b}": report.block_profile(a, b)
            for a in range(len(paths))
            for b in range(a + 1, len(paths))
        },
        "pass_seconds": report.gram.seconds,
    }


def method_pairwise(paths: list[str]) -> dict:
    """Per pair: load both files whole, then each block's cosine (the loop of existing tools)."""
    import torch
    from safetensors.torch import load_file

    from cfgsim.weights.keys import block_of, classify_ldm

    out = {}
    for a in range(len(paths)):
        for b in range(a + 1, len(paths)):
            sa, sb = load_file(paths[a]), load_file(paths[b])
            sums: dict[str, list[float]] = {}
            for key, ta in sa.items():
                hit = classify_ldm(key)
                if hit is None or key not in sb or not ta.is_floating_point():
                    continue
                block = block_of(*hit)
                x, y = ta.float().reshape(-1), sb[key].float().reshape(-1)
                s = sums.setdefault(block, [0.0, 0.0, 0.0])
                s[0] += float(torch.dot(x, y))
                s[1] += float(torch.dot(x, x))
                s[2] += float(torch.dot(y, y))
            # ``out.*`` counts as the last OUT block (cfgsim's convention, as block-weighted mergers).
            last = max((k for k in sums if k.startswith("OUT") and k != "OUT"), key=lambda k: int(k[3:]))
            if "OUT" in sums:
                sums[last] = [x + y for x, y in zip(sums.pop("OUT"), sums[last], strict=True)]
            out[f"{a}|{b}"] = {k: v[0] / (v[1] * v[2]) ** 0.5 for k, v in sums.items()}
            del sa, sb
    return {"cosine": out}


def _vm_hwm_mb() -> float:
    """Peak resident set of this process since exec (``VmHWM``; ru_maxrss also keeps the parent's
    peak across fork + exec on Linux, so the files are built in a child of their own)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(method: str, paths: list[str]) -> None:
    import resource

    if method == "build":
        folder, n, scale = paths
        build(Path(folder), int(n), int(scale))
        return
    started = time.perf_counter()
    methods = {
        "read": method_read,
        "read-direct": method_read_direct,
        "cfgsim": method_cfgsim,
        "pairwise": method_pairwise,
    }
    result = methods[method](paths)
    result["seconds"] = time.perf_counter() - started
    result["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["vm_hwm_mb"] = _vm_hwm_mb()
    print("RESULT " + json.dumps(result))


def run(method: str, paths: list[Path]) -> dict:
    evict(paths)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[4, 8],
        help="checkpoint counts (the largest gets the pairwise loop)",
    )
    parser.add_argument("--scale", type=int, default=1, help="divide every width by this (1 = full SD 1.5)")
    parser.add_argument(
        "--dir", default=None, help="folder for the checkpoints (default: a temporary folder, removed)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --dir: use the checkpoints already there (from a run with the same --n, --scale)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1:])
        return
    folder = Path(args.dir or tempfile.mkdtemp(prefix="cfgsim-bench-weights-"))
    folder.mkdir(parents=True, exist_ok=True)
    n_max = max(args.n)
    free = shutil.disk_usage(folder).free / 1e9
    print(f"building {n_max} checkpoints (SD 1.5 architecture, width / {args.scale}, fp16) in {folder}")
    print(f"  {free:.0f} GB free before")
    try:
        t = time.perf_counter()
        paths = [folder / f"model{i}.safetensors" for i in range(n_max)]
        if not (args.reuse and args.dir and all(p.is_file() for p in paths)):
            build_cmd = [
                sys.executable,
                __file__,
                "--child",
                "build",
                str(folder),
                str(n_max),
                str(args.scale),
            ]
            subprocess.run(build_cmd, check=True)
        size = sum(p.stat().st_size for p in paths) / 1e9
        print(f"  {n_max} files, {size:.1f} GB in {time.perf_counter() - t:.0f} s")
        rows = {}
        for n in sorted(args.n):
            sub = paths[:n]
            read = run("read", sub)
            direct = run("read-direct", sub) if hasattr(os, "O_DIRECT") else None
            ours = run("cfgsim", sub)
            rows[n] = (read, ours)
            direct_text = (
                ""
                if direct is None
                else f", {ours['seconds'] / direct['seconds']:.2f}x the {direct['seconds']:.1f} s "
                "of an O_DIRECT read"
            )
            print(
                f"N = {n}: read once {read['seconds']:.1f} s; cfgsim {ours['seconds']:.1f} s in all "
                f"(its pass {ours['pass_seconds']:.1f} s) = "
                f"{ours['seconds'] / read['seconds']:.2f}x the read{direct_text}; "
                f"peak RSS {ours['vm_hwm_mb']:.0f} MB (VmHWM; ru_maxrss {ours['max_rss_mb']:.0f} MB)",
                flush=True,
            )
        read, ours = rows[n_max]
        pair = run("pairwise", paths)
        worst = max(
            abs(ours["cosine"][k][blk] - v)
            for k, blocks in pair["cosine"].items()
            for blk, v in blocks.items()
        )
        print(
            f"N = {n_max}: pairwise loop {pair['seconds']:.1f} s (peak RSS {pair['vm_hwm_mb']:.0f} MB); "
            f"cfgsim is {pair['seconds'] / ours['seconds']:.1f}x faster, "
            f"{ours['seconds'] / read['seconds']:.2f}x the time to read the files once; "
            f"largest |Δ cosine| between the two {worst:.1e}"
        )
        peaks = ", ".join(f"N = {n}: {rows[n][1]['vm_hwm_mb']:.0f} MB" for n in sorted(rows))
        print(f"peak RSS of cfgsim: {peaks}")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
