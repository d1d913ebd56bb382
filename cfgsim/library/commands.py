"""``cfgsim library list|show|remove|export|clear`` and the library flags of ``probe``/``demo``."""

from __future__ import annotations

import argparse
from typing import Any

from cfgsim.library.store import LibraryError

SELECTOR_HELP = "a checkpoint: its label, its name (file path) or a prefix of its sha256 (6+ hex digits)"


def _library_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--library",
        metavar="DIR",
        default=None,
        help="the library folder (default: $CFGSIM_LIBRARY, else ~/.cache/cfgsim/library)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``library`` and its subcommands to the ``cfgsim`` parser."""
    p = sub.add_parser(
        "library",
        help="the probe library: every probe image made before (list, show, remove, export, clear)",
        description=(
            "The probe library keeps every probe image under the checkpoint's content (sha256), the "
            "settings that change pixels and the seed: a re-run takes its images from there."
        ),
    )
    commands = p.add_subparsers(dest="library_command", metavar="ACTION", required=True)
    listed = commands.add_parser("list", help="checkpoints held, with seeds, settings and size")
    shown = commands.add_parser("show", help="one checkpoint: its images and their settings")
    shown.add_argument("selector", metavar="CHECKPOINT", help=SELECTOR_HELP)
    removed = commands.add_parser("remove", help="delete one checkpoint's images")
    removed.add_argument("selector", metavar="CHECKPOINT", help=SELECTOR_HELP)
    exported = commands.add_parser("export", help="copy the images (with infotext) and a manifest.json")
    exported.add_argument("out", metavar="DIR", help="the folder to write into")
    exported.add_argument("selector", metavar="CHECKPOINT", nargs="?", default=None, help=SELECTOR_HELP)
    cleared = commands.add_parser("clear", help="delete every image in the library")
    for parser in (listed, shown, removed, exported, cleared):
        _library_option(parser)
        parser.set_defaults(func=cmd_library)


def cmd_library(args: argparse.Namespace) -> int:
    from cfgsim.library import default_library_dir, manage
    from cfgsim.library.store import ProbeLibrary

    root = args.library or default_library_dir()
    library = ProbeLibrary(root, create=False)
    for note in library.notes:
        print(f"note: {note}")
    action = args.library_command
    if action == "list":
        print(manage.listing(library))
    elif action == "show":
        print(manage.show(library, args.selector))
    elif action == "remove":
        held, count = manage.remove(library, args.selector)
        print(f"removed {held.label} ({held.sha256[:10]}): {count} image(s) from {library.root}")
    elif action == "export":
        manifest = manage.export(library, args.out, args.selector)
        print(f"exported to {manifest.parent} (manifest: {manifest.name})")
    elif action == "clear":
        images, size = manage.clear(library)
        print(f"cleared {library.root}: {images} image(s), {manage.format_size(size)}")
    return 0


# -- probe and demo ----------------------------------------------------------------------------------


def add_probe_options(parser: argparse.ArgumentParser) -> None:
    """``--library DIR``, ``--no-library``, ``--with-library`` for ``cfgsim probe``/``cfgsim demo``."""
    group = parser.add_argument_group("probe library")
    group.add_argument(
        "--library",
        metavar="DIR",
        default=None,
        help="take images probed before from DIR and keep new ones there (default: $CFGSIM_LIBRARY, "
        "else ~/.cache/cfgsim/library)",
    )
    group.add_argument("--no-library", action="store_true", help="neither read nor write the probe library")
    group.add_argument(
        "--with-library",
        action="store_true",
        help="also compare every checkpoint the library holds under the same settings, labelled (library)",
    )


def library_from_args(args: argparse.Namespace) -> Any:
    """The library the flags ask for (None: ``--no-library``, or a folder that cannot be used)."""
    from cfgsim.library import open_library

    if getattr(args, "no_library", False):
        if getattr(args, "with_library", False) or getattr(args, "library", None):
            raise LibraryError("--no-library: cannot be combined with --library or --with-library")
        return None
    return open_library(getattr(args, "library", None))


def library_report(result: Any, library: Any) -> list[str]:
    """What the run took from and gave to the library, for the console."""
    if library is None:
        return []
    taken = sum(1 for cell in result.cells if getattr(cell, "origin", "") == "library")
    lines = [f"note: {note}" for note in library.notes]
    lines.append(
        f"library: {taken} of {len(result.cells)} image(s) from the probe library, {library.stored} stored "
        f"({library.root})"
    )
    if library.write_error:
        lines.append(f"library: storing stopped ({library.write_error}): the rest of this run is not cached")
    return lines
