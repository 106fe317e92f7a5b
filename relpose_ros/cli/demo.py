"""``relpose demo``: render a synthetic RGB-D sequence, bag it, replay it into the real node, score and report.

    relpose demo --out demo_output            # what `make demo` runs
    relpose demo --frames 60 --width 320 --height 240 --fps 15
"""
from __future__ import annotations

import argparse
from pathlib import Path


def _param(text: str) -> tuple[str, object]:
    """NAME:=VALUE (VALUE parsed as YAML, like ``--ros-args -p``)."""
    import yaml

    if ':=' not in text:
        raise argparse.ArgumentTypeError(f"node parameter must look like NAME:=VALUE, got '{text}'")
    name, value = text.split(':=', 1)
    return name.strip(), yaml.safe_load(value)


def add_parser(sub) -> argparse.ArgumentParser:
    from ..demo import DemoConfig

    d = DemoConfig()
    p = sub.add_parser('demo', help='end-to-end demo on a synthetic scene: bag -> relocalize_node -> report',
                       description='Render a synthetic posed RGB-D sequence, write it as an MCAP bag, start '
                                   'relocalize_node, replay the bag into it over DDS at camera rate, and print / write '
                                   'per-frame errors, a summary, report.md and plots.')
    p.add_argument('--out', type=Path, default=d.out, help='output folder (default: %(default)s)')
    p.add_argument('--frames', type=int, default=d.frames, help='number of frames (default: %(default)s)')
    p.add_argument('--width', type=int, default=d.width, help='image width (default: %(default)s)')
    p.add_argument('--height', type=int, default=d.height, help='image height (default: %(default)s)')
    p.add_argument('--fps', type=float, default=d.fps, help='camera (and replay) rate in Hz (default: %(default)s)')
    p.add_argument('--seed', type=int, default=d.seed, help='scene seed (default: %(default)s)')
    p.add_argument('--backend', default=d.backend, help='estimator backend of the node (default: %(default)s)')
    p.add_argument('--device', default=d.device, choices=('auto', 'cpu', 'cuda'), help='node device (default: auto)')
    p.add_argument('--reference', type=int, default=d.reference_index, help='reference frame index (default: 0)')
    p.add_argument('-p', '--param', dest='params', type=_param, action='append', default=[], metavar='NAME:=VALUE',
                   help='extra node parameter, e.g. -p rgbd.num_features:=1000 (repeatable)')
    p.add_argument('--exact', action='store_true', help='exact images and depth (default: Kinect-like sensor noise)')
    p.add_argument('--no-plots', dest='plots', action='store_false', help='skip the PNG plots')
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..demo import DemoConfig, run_demo

    for name, value in (('--frames', args.frames), ('--width', args.width), ('--height', args.height)):
        if value < (2 if name == '--frames' else 16):
            from ..errors import ConfigError
            raise ConfigError(f'{name} is too small: {value}')
    cfg = DemoConfig(out=args.out, frames=args.frames, width=args.width, height=args.height, fps=args.fps,
                     seed=args.seed, backend=args.backend, device=args.device, reference_index=args.reference,
                     node_params=dict(args.params), plots=args.plots, exact=args.exact)
    run_demo(cfg)
    return 0
