"""`python -m pipelines <command>`: one subcommand per verb, each in pipelines/commands/.

Each command module defines `register(subparsers)` (adding its parser with
`set_defaults(run=...)`) and is imported only when the CLI starts. User errors print as one
clean message (exit 2); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# name -> module under pipelines.commands (order = order in --help)
COMMANDS = {
    "train": "train",
    "finetune": "train",
    "generate": "generate",
    "sample-sims": "generate",
    "import-edm": "import_edm",
    "label": "attributes",
    "fid": "attributes",
    "ref-stats": "attributes",
    "fit-probe": "attributes",
    "build-digits-classifier": "attributes",
    "mad": "mad",
    "build-demo": "demo",
    "demo-shift": "demo",
    "build-demo-aux": "demo_aux",
    "suggest-mix": "shift",
    "build-set": "shift",
    "find-omega": "shift",
    "sweep": "shift",
    "export": "export",
    "self-improve": "self_improve",
    "merge": "merge",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines",
                                     description="SIMS engine: train, fine-tune, sample with SIMS guidance, "
                                                 "import EDM checkpoints, label, measure.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(f"pipelines.commands.{module}").register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional package of an extra the engine-only install lacks
        from .extras import missing_extra_message
        if missing_extra_message(e) is None:
            raise
        print(f"error: {missing_extra_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
