"""`tandem` command line: one subcommand per module, each imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from tandem import __version__, settings
from tandem.errors import TandemError

# name -> (module under tandem.cli, one-line help)
COMMANDS = {
    "node": ("node", "start this machine's node (the default when no command is given)"),
    "run": ("run", "launch a model on the cluster and chat with it in the terminal"),
    "generate": ("generate", "generate text from a model on this machine"),
    "bench": ("bench", "measure prefill and decode speed against the hardware's floors and a baseline"),
    "models": ("models", "list the model catalog and which models this machine holds"),
    "download": ("download", "download a model (or one layer range of it) from the Hugging Face Hub"),
    "place": (
        "place",
        "place a model on the cluster (--dry-run: only print the plan; --topology: plan a cluster on paper)",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Run large language models across the machines you already have.",
    )
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(f"tandem.cli.{module_name}")
        command_parser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv = ["node", *argv]  # plain `tandem [node flags]` starts a node
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TandemError as error:
        print(f"tandem: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as error:  # a bug: say so in one line; TANDEM_DEBUG=1 shows the traceback
        if settings.debug():
            traceback.print_exc()
        else:
            print(
                f"tandem: internal error: {type(error).__name__}: {error} "
                "(set TANDEM_DEBUG=1 for a traceback)",
                file=sys.stderr,
            )
        return 70


if __name__ == "__main__":
    sys.exit(main())
