"""``relpose bench TARGET``: speed / accuracy benchmarks that print a table and write JSON.

Each target is a module ``relpose_ros/bench/<target>.py`` with
``add_arguments(parser)`` and ``run(args) -> dict`` (the JSON-serialisable result; the module
prints its own human-readable table).
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

TARGETS = {
    'node': 'node overhead per frame (conversion, sync, publishing), estimator excluded',
    'rgbd': 'rgbd backend accuracy and per-frame time on 7-Scenes pairs',
    'mickey': 'MicKey per-frame time with cached reference vs full pair forward, peak memory',
    'regression': 'regression backend per-frame time and training step time',
    'synthetic': 'synthetic renderer frames/s',
}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('bench', help='run a benchmark (prints a table, writes JSON with --json)')
    targets = p.add_subparsers(dest='target', metavar='TARGET')
    targets.required = True
    for name, help_text in TARGETS.items():
        module = importlib.import_module(f'relpose_ros.bench.{name}')
        tp = targets.add_parser(name, help=help_text)
        tp.add_argument('--json', type=Path, default=None, help='write the result as JSON to this file')
        module.add_arguments(tp)
        tp.set_defaults(func=_runner(module))
    return p


def _runner(module):
    def run(args) -> int:
        result = module.run(args)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2, default=float) + '\n')
            print(f'wrote {args.json}')
        return 0
    return run
