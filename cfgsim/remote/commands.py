"""``cfgsim probe --webui URL [--webui URL …] CHECKPOINT…``: the probe on running WebUI servers.

No torch here: the servers make the images; this side matches the checkpoints, spreads the work
(:mod:`cfgsim.remote.executor`), compares the images and writes the same outputs as the other hosts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence

from cfgsim.errors import InputError
from cfgsim.remote.client import NoApi, RemoteError, ServerUnreachable, WebUIClient, parse_auth
from cfgsim.remote.host import RemoteHost

AUTH_ENV = "CFGSIM_API_AUTH"
_PROGRESS = re.compile(r"\(\d+/\d+\)$")
# Flags of the standalone runner that mean nothing for a server (it has its own device, RNG...).
LOCAL_ONLY = ("config_dir", "device", "rng", "batch_size")


def connect(urls: Sequence[str], auth: str | None, timeout: float | None, *, say=print) -> list[RemoteHost]:
    """Connect to every server. A server that does not answer is left out with a note while another
    one answers; wrong credentials, a server without ``--api`` or an answer that is not the API's
    are errors (they will not go away by waiting)."""
    credentials = parse_auth(auth)
    hosts, down = [], []
    seen = set()
    for url in urls:
        host = RemoteHost(WebUIClient(url, credentials, timeout))
        if host.url in seen:
            continue
        seen.add(host.url)
        try:
            hosts.append(host.connect())
        except ServerUnreachable as exc:
            down.append(exc)
        except NoApi as exc:
            raise InputError(str(exc)) from None
    if not hosts:
        reasons = "; ".join(str(e) for e in down)
        raise InputError(f"no WebUI server answered: {reasons}")
    for exc in down:
        say(f"note: left out {exc.url}: {exc.reason}")
    return hosts


def _report(quiet: bool):
    """Lines to stderr; ``--quiet`` keeps the events (drops, retries, failures), not the per-cell ones."""

    def report(line: str) -> None:
        if not (quiet and _PROGRESS.search(line)):
            print(line, file=sys.stderr, flush=True)

    return report


def _library(args: argparse.Namespace) -> tuple[object | None, bool]:
    """(the probe library the flags ask for, --with-library), as the standalone command opens it."""
    if not hasattr(args, "no_library"):
        return None, False
    from cfgsim.library.commands import library_from_args

    return library_from_args(args), bool(getattr(args, "with_library", False))


def cmd_probe_remote(args: argparse.Namespace) -> int:
    from cfgsim.compare import build_metrics
    from cfgsim.compare_cli import lineage_options, metric_options, reference_from_args
    from cfgsim.output import summary_table, write_outputs
    from cfgsim.probe import run_probe
    from cfgsim.remote.executor import MultiHost, MultiServerExecutor, server_label
    from cfgsim.remote.selection import resolve
    from cfgsim.standalone.commands import _exit_status, _print_verdict, _print_written, probe_spec

    quiet = bool(getattr(args, "quiet", False))
    for flag in LOCAL_ONLY:
        if getattr(args, flag, None) is not None:
            print(f"note: --{flag.replace('_', '-')} is for the standalone runner; the servers use their own")
    auth = getattr(args, "api_auth", None) or os.environ.get(AUTH_ENV) or None
    hosts = connect(args.webui, auth, getattr(args, "timeout", None))
    labels = [part.strip() for part in args.labels.split(",")] if getattr(args, "labels", None) else None
    checkpoints, placements, notes = resolve(hosts, args.checkpoints, labels)
    for note in notes:
        print(f"note: {note}")
    facade = MultiHost(hosts, placements)
    for key in facade.differences():
        print(f"note: the servers differ in {key}: images from different servers may differ for that alone")
    metrics = build_metrics(args.metrics, metric_options(args))
    reference, ref_text = reference_from_args(args, [c.label for c in checkpoints], what="checkpoints")
    spec, deviations, _ = probe_spec(args, ref_text)
    for label, preset_value, used in deviations:
        print(f"note: {label} is {used!r} (preset {args.preset}: {preset_value!r})")
    for c in checkpoints:
        where = ", ".join(server_label(hosts[i]) for i in placements[c.name])
        print(f"{c.label}: on {where}")
    executor = MultiServerExecutor(
        facade,
        retries=getattr(args, "retries", 3),
        backoff=getattr(args, "retry_wait", 2.0),
        report=_report(quiet),
    )
    library, with_library = _library(args)
    started = time.perf_counter()
    result = run_probe(
        facade,
        checkpoints,
        spec,
        metrics=metrics,
        reference=reference,
        preset=args.preset,
        deviations=deviations,
        lineage_options=lineage_options(args),
        executor=executor,
        library=library,
        with_library=with_library,
    )
    _fill_hashes(result, hosts, placements)
    written = write_outputs(result, args.out, overlays=not args.no_overlays)
    print(summary_table(result))
    _print_verdict(result)
    if library is not None:
        from cfgsim.library.commands import library_report

        for line in library_report(result, library):
            print(line)
    for name, why in executor.dropped.items():
        print(f"note: dropped {name}: {why}")
    for name, fixed in executor.restored.items():
        if fixed:
            print(f"note: {name} had not put back {', '.join(fixed)}: restored")
    made = {}
    for server in executor.made_by.values():
        made[server] = made.get(server, 0) + 1
    share = ", ".join(f"{n} image(s) on {s}" for s, n in made.items()) or "no new image"
    print(f"probed {len(checkpoints)} checkpoint(s) in {time.perf_counter() - started:.1f} s: {share}")
    _print_written(written)
    return _exit_status(result)


def _fill_hashes(result, hosts: Sequence[RemoteHost], placements: dict[str, dict[int, str]]) -> None:
    """After the run: the sha256 the servers computed while loading (A1111 hashes on load). A
    title gains " [hash]" once its file is hashed: the checkpoint is found again by its name."""
    import dataclasses

    items = []
    for original in result.items:
        item = original
        for i, title in placements.get(item.name, {}).items() if item.sha256 is None else ():
            before = hosts[i].model_for(title)
            try:
                models = hosts[i].refresh_models()
            except RemoteError:
                continue
            model = next((m for m in models if before and m.model_name == before.model_name), None)
            if model is not None and model.sha256:
                item = dataclasses.replace(
                    item, sha256=model.sha256, model_hash=item.model_hash or model.hash
                )
                break
        items.append(item)
    result.items = items
