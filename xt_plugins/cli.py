"""The ``xt-plugins`` command line.

Each area adds its commands through a ``register(subparsers)`` function in its own module
(``xt_plugins.commands`` for demo/models/bench, ``xt_plugins.torchgeo.commands`` for SAR
scenes, ``xt_plugins.monai.commands`` for slides). A command's handler is stored as
``func`` on its parser and returns an exit code. Errors print as one line naming the problem
(``--debug`` shows the traceback).

.. versionadded:: 0.1
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: Modules whose ``register(subparsers)`` adds commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "xt_plugins.commands",
    "xt_plugins.monai.commands",
    "xt_plugins.torchgeo.commands",
)


class CommandError(RuntimeError):
    """An expected failure with a message for the user (no traceback unless --debug)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    parser = argparse.ArgumentParser(
        prog="xt-plugins",
        description="xT for huge images: slides and SAR scenes with timm, TorchGeo and MONAI.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Args:
        argv: arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, non-zero on failure.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one clear line; the traceback only on request
        if args.debug:
            raise
        print(f"xt-plugins {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
