"""The ``cfgsim`` command line.

Subcommands: ``compare`` (images you already have), ``split-grid`` (cut a published X/Y grid into
cells), ``inspect`` (show a grid's stored metadata), ``probe`` and ``demo`` (the standalone runner,
registered by :mod:`cfgsim.standalone.commands`). Exit status: 0 on success, 2 on bad input with one
line naming the file and the reason, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from cfgsim import __version__
from cfgsim.errors import CfgsimError

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cfgsim",
        description="CFG 1.0 similarity probe: compare what checkpoints make of the same noise.",
    )
    parser.add_argument("--version", action="version", version=f"cfgsim {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from cfgsim import commands

    commands.register(sub)
    __import__("cfgsim.library.commands").library.commands.register(sub)  # `library` (issue 10)
    __import__("cfgsim.scale.cli").scale.cli.register(sub)  # `nearest` (issue 12)
    try:
        from cfgsim.standalone import commands as standalone_commands
    except ImportError:  # the standalone runner is an optional part of the package
        pass
    else:
        standalone_commands.register(sub)
        __import__("cfgsim.weights.commands").weights.commands.register(sub)  # `weights` (issue 11)
    # ``-q`` also after the subcommand (``cfgsim compare -q …``); SUPPRESS keeps a ``-q`` given before it.
    for subparser in sub.choices.values():
        subparser.add_argument(
            "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
        )
    return parser


class _Prefixed(logging.Formatter):
    """``cfgsim: <message>`` for the library's log lines, once (some already carry the prefix)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith("cfgsim: ") else f"cfgsim: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    handler = logging.StreamHandler()
    handler.setFormatter(_Prefixed("%(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CfgsimError as exc:
        print(f"cfgsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cfgsim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cfgsim inspect grid.png | head -1`: the reader left; that is not an error. Point stdout
        # at devnull so the interpreter's final flush does not raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
