"""The ``clipfast`` command line: each command parses its arguments, calls the library and prints.

Example:
    $ clipfast convert ViT-B-32.pt clip-vit-b32            # OpenAI .pt -> transformers folder
    $ clipfast convert clip-vit-b32 ViT-B-32.pt --to openai
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from clipfast.errors import ClipfastError


def convert_command(args: argparse.Namespace) -> int:
    """Convert a checkpoint between OpenAI (.pt), open_clip and transformers formats."""
    from clipfast.convert import convert

    if os.path.exists(args.destination) and not args.force and (
            os.path.isfile(args.destination) or os.listdir(args.destination)):
        raise ClipfastError(f"{args.destination!r} already exists; pass --force to overwrite it.")
    hub_kwargs = {"revision": args.revision} if args.revision else {}
    paths = convert(args.source, args.destination, to=args.to, open_clip_config=args.open_clip_config,
                    **hub_kwargs)
    print(f"wrote {args.destination}: {', '.join(sorted(os.path.basename(p) for p in paths))}")
    return 0


def _add_convert(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert", help="convert a checkpoint (OpenAI .pt, open_clip, transformers) to another format",
        description="Convert a CLIP checkpoint. SOURCE is an OpenAI .pt (TorchScript archive or state dict), an "
                    "open_clip weights file (its config JSON beside it or given with --open-clip-config), an "
                    "open_clip folder or hub repo (hf-hub:org/name), or a transformers folder or hub id. No code "
                    "in the files is run.")
    parser.add_argument("source", help="checkpoint file, folder or hub id")
    parser.add_argument("destination", help="folder to write (a .pt file with --to openai)")
    parser.add_argument("--to", choices=("hf", "openai", "open_clip"), default="hf",
                        help="hf: a folder that clipfast and transformers load (default); openai: one .pt state "
                             "dict; open_clip: a hub-style folder (open_clip_config.json + weights)")
    parser.add_argument("--open-clip-config", metavar="JSON", help="open_clip model config of a weights file")
    parser.add_argument("--revision", help="hub revision (branch, tag or commit) of SOURCE")
    parser.add_argument("--force", action="store_true", help="overwrite DESTINATION if it exists")
    parser.set_defaults(func=convert_command)


# further commands register themselves here: one _add_* function each
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_convert]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command."""
    parser = argparse.ArgumentParser(prog="clipfast", description="Exact, fast CLIP for PyTorch.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for usage errors, 1 for failures)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return int(exc.code or 0)
    if not hasattr(args, "func"):
        parser.print_usage(sys.stderr)
        print("clipfast: error: a command is required (see clipfast --help)", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ClipfastError, OSError, ValueError) as exc:
        print(f"clipfast: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
