"""The `artgen` command line. The only layer that parses argv and prints.

One module per command family, each adding its subcommands with ``add_commands(sub,
method)`` and naming each command's handler with argparse's ``set_defaults(func=...)``:

- artgen/cli/stylize.py: stylize, batch, video, info;
- artgen/cli/train.py: finetune, train, convert, export;
- artgen/cli/runs.py: sample, eval;
- artgen/cli/assets.py: weights, styles, app (the studio is artgen/cli/studio.py).

Flags come from the fields of the options dataclasses (artgen/cli/flags.py, which the
studio uses too), so each default is written once, next to the function that uses it.
A new command family is one module here plus its entry in FAMILIES.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from collections.abc import Sequence

from artgen.cli.common import MESSAGE_LIMIT
from artgen.core.errors import ArtgenError, clip

FAMILIES = ("stylize", "train", "runs", "assets")  # modules of artgen.cli, in --help order


def build_parser(method: str = "gatys", command: str | None = None) -> argparse.ArgumentParser:
    """The parser; ``stylize``, ``batch`` and ``video`` get the flags of ``method``'s options.
    With ``command`` (one that a family's COMMANDS names) only that command is built, so that
    running one command imports only what it needs."""
    from artgen._version import __version__
    from artgen.cli.stylize import EXAMPLES

    p = argparse.ArgumentParser(
        prog="artgen",
        description="Generative art by transfer learning.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"artgen {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    modules = [importlib.import_module(f"artgen.cli.{f}") for f in FAMILIES]
    owners = [m for m in modules if command in getattr(m, "COMMANDS", ())]
    for module in owners or modules:
        if owners and "only" in inspect.signature(module.add_commands).parameters:
            module.add_commands(sub, method, only=command)
        else:
            module.add_commands(sub, method)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from artgen.cli.assets import run_app
    from artgen.cli.stylize import peek_method

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["app"]:  # the app parses its own flags (from its AppConfig)
            return run_app(argv[1:])
        command = argv[0] if argv and not argv[0].startswith("-") else None
        parser = build_parser(peek_method(argv), command)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return args.func(args)
    except ArtgenError as e:
        print(f"artgen: error: {clip(e, MESSAGE_LIMIT)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "artgen: interrupted; finished outputs are kept (run the same command again to resume)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        # Whoever read the output went away (`artgen info x.png | head`): stop quietly, as
        # Unix tools do, with stdout pointed at devnull so the interpreter's last flush does
        # not fail again (Python's docs, "Note on SIGPIPE").
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout is not a file (tests)
            pass
        return 141


__all__ = ["main", "build_parser"]
