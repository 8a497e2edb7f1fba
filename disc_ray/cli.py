"""The ``disc-ray`` command line. Each subcommand lives next to the code it drives.

    disc-ray adapt [--config FILE] [--train.lr 1e-5 ...]   the main job (same as jobs/adapt.py)
    disc-ray synth OUT_DIR [--num-documents N] [--seed S]  write the built-in synthetic corpus
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module -> function that adds its subcommands; imported lazily so `disc-ray --help` stays fast
SUBCOMMAND_MODULES = [
    "disc_ray.adapt",
    "disc_ray.evaluation.runner",
    "disc_ray.evaluation.report",
    "disc_ray.synthetic",
    "disc_ray.data",
    "disc_ray.tuning",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="disc-ray", description="Teach post-trained LLMs new documents with DiSC, on Ray.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.run(args, rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
