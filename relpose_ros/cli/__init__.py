"""The ``relpose`` command: ``relpose {bench,eval,bag,train,demo} ...``.

Each subcommand lives in ``relpose_ros/cli/<name>.py`` and exposes
``add_parser(subparsers) -> argparse.ArgumentParser`` whose parser sets ``func(args) -> int``.
Subcommand modules are imported only to build the parser; heavy imports happen inside ``func``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ('bench', 'eval', 'bag', 'train', 'demo')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='relpose', description='relpose_ros: map-free metric relocalisation tools')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(f'relpose_ros.cli.{name}').add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import RelposeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RelposeError as exc:
        print(f'relpose {args.command}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())
