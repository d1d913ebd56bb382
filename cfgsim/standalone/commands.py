"""The standalone runner's subcommands: ``cfgsim probe`` and ``cfgsim demo``.

:func:`register` only declares arguments; torch, diffusers and transformers are imported when a
command runs, so ``cfgsim --help`` and the other subcommands work without the standalone extra.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from cfgsim.errors import InputError
from cfgsim.library.commands import add_probe_options as add_library_options
from cfgsim.library.commands import library_from_args, library_report

STANDALONE_EXTRA = "pip install 'cfgsim[standalone]'"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``probe`` and ``demo`` to the ``cfgsim`` parser's subcommands."""
    from cfgsim.commands import add_comparison_options
    from cfgsim.spec import DEFAULT_PRESET, PRESETS

    p = sub.add_parser(
        "probe",
        help="run the probe on SD 1.x checkpoint files without the WebUI (diffusers)",
        description=(
            "Run the CFG 1 probe on SD 1.x single-file checkpoints (.safetensors, or .ckpt holding tensors "
            "only) with diffusers, reproducing the WebUI's image, and compare the pictures."
        ),
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="SD 1.x .safetensors / .ckpt files")
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=list(PRESETS), help="probe settings (default: cfg1)"
    )
    p.add_argument("--seeds", default=None, help="seeds, e.g. 1337 or '1-20' (default: the preset's)")
    add_comparison_options(
        p,
        reference_help="score against this image; its WebUI parameters set the probe's settings",
        index_help="score against checkpoint N (0-based)",
    )
    p.add_argument(
        "--config-dir",
        metavar="DIR",
        help="diffusers-layout folder: unet/ vae/ text_encoder/ tokenizer/ configs (default: a complete "
        "config/ folder beside the checkpoints or one up, as `cfgsim demo` writes; else the HF cache)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    p.add_argument(
        "--rng",
        choices=["cpu", "nv", "gpu"],
        default=None,
        help="initial-noise source, as the WebUI's randn_source: cpu, nv (= NVIDIA GPU numbers, "
        "on any device), gpu (the CUDA device's own); default: the reference image's RNG, else cpu",
    )
    p.add_argument(
        "--steps-override", type=int, metavar="N", help="quick preview at N steps (labelled: not the probe)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (grid, heatmaps, result.json, cells)"
    )
    p.add_argument(
        "--labels",
        help="comma-separated labels, one per checkpoint (default: the file name; files of one name in "
        "different folders are told apart by their folders, e.g. a/model, b/model)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="N",
        help="seeds of one checkpoint generated together (default: 1 on the CPU, what fits on CUDA)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="where the images are made: local (this process, default) or ray (one task per checkpoint "
        "on a Ray cluster, one GPU each where it has GPUs; needs pip install 'cfgsim[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="the Ray cluster for --executor ray, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else a local "
        "Ray started for this run); nodes read the checkpoints at the paths given here",
    )
    p.add_argument(
        "--webui",
        action="append",
        metavar="URL",
        help="run on a WebUI server started with --api (A1111/Forge) instead of here; repeat for several "
        "servers sharing the work. CHECKPOINT is then a checkpoint's title, name or hash on the servers",
    )
    p.add_argument(
        "--api-auth",
        metavar="USER:PASS",
        default=None,
        help="credentials for servers started with --api-auth (default: CFGSIM_API_AUTH)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="--webui: seconds to wait for one image before the server counts as down (default 1800)",
    )
    add_library_options(p)
    p.set_defaults(func=cmd_probe)

    d = sub.add_parser(
        "demo",
        help="build a tiny model family of known lineage (no download) and probe it",
        description=(
            "Build tiny SD 1.x-architecture checkpoints of known lineage in seconds, probe them with the "
            "standalone runner and show the scores. --family small (default): base, fine-tune, merge, two "
            "unrelated. --family full: 13 checkpoints with a known tree (fine-tune chain, merges at 0.25/0.5/"
            "0.75, a merge of two fine-tunes, fp16 and EMA-pruned copies, unrelated roots)."
        ),
    )
    d.add_argument(
        "--out", default="cfgsim-demo", metavar="DIR", help="output folder (default: ./cfgsim-demo)"
    )
    d.add_argument(
        "--family", default="small", choices=["small", "full"], help="which family (default: small, 5 models)"
    )
    d.add_argument(
        "--weight-seed",
        type=int,
        default=0,
        metavar="K",
        help="draw an independent family of the same recipe (default 0: the documented one)",
    )
    d.add_argument("--steps", type=int, default=None, help="sampling steps (default: the probe's 256)")
    d.add_argument("--seeds", default=None, help="seeds, e.g. 1337 or '1-8' (default: the probe's 1337)")
    d.add_argument("--size", type=int, default=None, help="image width and height (default: 512)")
    d.add_argument(
        "--reduced",
        action="store_true",
        help="small and quick: 128x128, 16 steps unless --size/--steps say otherwise (not the probe)",
    )
    d.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    d.add_argument(
        "--rng", choices=["cpu", "nv", "gpu"], default="cpu", help="initial-noise source (default: cpu)"
    )
    add_library_options(d)
    d.set_defaults(func=cmd_demo)


def _require_extra() -> None:
    missing = []
    for module in ("torch", "diffusers", "transformers", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InputError(f"the standalone runner needs {', '.join(missing)}: {STANDALONE_EXTRA}")


def _offline() -> None:
    # Every file the runner needs is local (configs, tokenizer, weights): make any accidental hub
    # lookup fail fast instead of waiting on the network. Must happen before huggingface_hub loads.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def probe_spec(args: argparse.Namespace, reference_infotext: str | None):
    """(spec, deviations from the preset, rng source) from the preset, the reference image and the flags.

    Order: the preset; then the reference image's parameters (what it was made with); then the
    explicit flags (``--seeds``, ``--steps-override``). The RNG source follows ``--rng``, else the
    reference's ``RNG`` parameter, else ``cpu``.
    """
    from cfgsim.infotext import Infotext
    from cfgsim.spec import ProbeSpec, get_preset, parse_seeds

    preset = get_preset(args.preset)
    spec = preset
    rng = args.rng
    if reference_infotext:
        info = Infotext.parse(reference_infotext)
        if info.params:
            spec = ProbeSpec.from_infotext(info, base=preset)
            source = dict(spec.extra).get("RNG")
            if rng is None and source and source.lower() in ("cpu", "nv", "gpu"):
                rng = source.lower()
    if args.seeds is not None:
        spec = spec.replace(seeds=parse_seeds(args.seeds))
    if args.steps_override is not None:
        spec = spec.replace(steps_override=args.steps_override)
    return spec, preset.differences(spec), rng or "cpu"


def cmd_probe(args: argparse.Namespace) -> int:
    if getattr(args, "webui", None):  # the servers make the images: no torch needed here
        from cfgsim.remote.commands import cmd_probe_remote

        return cmd_probe_remote(args)
    _require_extra()
    _offline()
    from cfgsim.commands import lineage_options, metric_options, reference_from_args
    from cfgsim.compare import build_metrics
    from cfgsim.output import summary_table, write_outputs
    from cfgsim.probe import run_probe
    from cfgsim.standalone.checkpoint import check_checkpoint_path
    from cfgsim.standalone.configs import find_config_beside
    from cfgsim.standalone.host import StandaloneHost
    from cfgsim.standalone.pipeline import check_spec

    quiet = bool(getattr(args, "quiet", False))
    paths = [check_checkpoint_path(p) for p in args.checkpoints]
    metrics = build_metrics(args.metrics, metric_options(args))
    options = lineage_options(args)
    labels = _labels(args.labels, paths)
    reference, ref_text = reference_from_args(args, labels, what="checkpoints")
    spec, deviations, rng = probe_spec(args, ref_text)
    check_spec(spec)
    for label, preset_value, used in deviations:
        print(f"note: {label} is {used!r} (preset {args.preset}: {preset_value!r})")
    if reference.kind == "image" and ref_text is not None and "RNG" not in ref_text and rng != "nv":
        print(
            "note: the reference was made with the WebUI's default GPU noise; "
            "--rng nv reproduces an NVIDIA card's"
        )

    config_dir = args.config_dir
    if config_dir is None:
        config_dir = find_config_beside(paths)
        if config_dir is not None:
            print(f"note: model configuration from {config_dir} (found beside the checkpoints)")
    make_host, executor = StandaloneHost, None
    if getattr(args, "executor", "local") == "ray":
        from cfgsim.distributed import RayExecutor

        executor = RayExecutor(address=getattr(args, "ray_address", None))
        make_host = executor.host  # the nodes' device; the driver loads no model
    host = make_host(
        paths,
        config_dir=config_dir,
        device=args.device,
        rng=rng,
        quiet=quiet,
        batch_size=args.batch_size,
        labels=labels,
    )
    library = library_from_args(args)
    started = time.perf_counter()
    result = run_probe(
        host,
        host.checkpoints(),
        spec,
        metrics=metrics,
        reference=reference,
        preset=args.preset,
        deviations=deviations,
        lineage_options=options,
        executor=executor,
        library=library,
        with_library=bool(args.with_library),
    )
    written = write_outputs(result, args.out, overlays=not args.no_overlays)
    print(summary_table(result))
    _print_verdict(result)
    for line in library_report(result, library):
        print(line)
    print(f"probed {len(paths)} checkpoint(s) in {time.perf_counter() - started:.1f} s")
    _print_written(written)
    return _exit_status(result)


def _labels(given: str | None, paths: list[Path]) -> list[str]:
    """``--labels``, else each file's stem; files of one name in different folders get the shortest
    end of their paths that tells them apart (``a/model``, ``b/model``)."""
    from cfgsim.errors import InputError
    from cfgsim.probe import check_labels

    if given is not None:
        labels = [part.strip() for part in given.split(",")]
        if len(labels) != len(paths):
            raise InputError(f"--labels: {len(labels)} labels for {len(paths)} checkpoints")
        check_labels(labels, "--labels")
        return labels
    parts = [p.resolve().with_suffix("").parts for p in paths]
    labels = [q[-1] for q in parts]
    depth = 1
    while len(set(labels)) < len(labels) and depth < max(len(q) for q in parts):
        depth += 1
        labels = [
            "/".join(q[-depth:]) if labels.count(label) > 1 else label
            for q, label in zip(parts, labels, strict=True)
        ]
    if len(set(labels)) < len(labels):  # the same file given twice
        dupes = sorted({str(p) for p, label in zip(paths, labels, strict=True) if labels.count(label) > 1})
        raise InputError(f"checkpoints: given more than once: {', '.join(dupes)}")
    return labels


def _print_verdict(result) -> None:
    from cfgsim.render.verdict import verdict_table

    table = verdict_table(result)
    if table:
        print()
        print(table)


def cmd_demo(args: argparse.Namespace) -> int:
    _require_extra()
    _offline()
    from cfgsim.output import summary_table
    from cfgsim.spec import parse_seeds
    from cfgsim.standalone.demo import get_family, run_demo

    family = get_family(args.family)
    library = library_from_args(args)
    started = time.perf_counter()
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    result, written = run_demo(
        args.out,
        family=family,
        weight_seed=args.weight_seed,
        steps=args.steps,
        seeds=seeds,
        size=args.size,
        reduced=args.reduced,
        device=args.device,
        rng=args.rng,
        quiet=bool(getattr(args, "quiet", False)),
        library=library,
        with_library=bool(args.with_library),
    )
    print(summary_table(result))
    _print_verdict(result)
    for line in library_report(result, library):
        print(line)
    print(f"lineage ({family.name} family; higher = closer to {family.reference}):")
    for member in family.members:
        print(f"  {member.name:<22} {member.recipe}")
    print(
        f"demo finished in {time.perf_counter() - started:.1f} s; checkpoints in {Path(args.out) / 'models'}"
    )
    _print_written(written)
    return _exit_status(result)


def _exit_status(result) -> int:
    """0; 1 when not one probe image was made (every checkpoint failed or was skipped: the reasons
    are printed); 130 (as for Ctrl-C) when the run was interrupted and the outputs hold only part."""
    import sys

    if not any(cell.ok for cell in result.cells) and not result.interrupted:
        print("cfgsim: error: no probe image was made:", file=sys.stderr)
        for cell in result.cells:
            print(f"  {result.items[cell.item].label}: {cell.reason or cell.status}", file=sys.stderr)
        return 1
    if result.interrupted:
        print("interrupted: the outputs above hold the images made before the stop")
        return 130
    return 0


def _print_written(written: dict[str, Path]) -> None:
    cells = [k for k in written if k.startswith("cell:")]
    for kind, path in written.items():
        if not kind.startswith("cell:"):
            print(f"wrote {path}")
    if cells:
        print(f"wrote {len(cells)} cell image(s) in {written[cells[0]].parent}")
