"""``relpose bag``: convert datasets to ROS 2 bags and inspect bags.

    relpose bag make --dataset 7scenes:../shared/data/7scenes-1000 --out seq.bag --every 2 --stop 300
    relpose bag info seq.bag
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser('bag', help='make a ROS 2 bag from a dataset, or describe a bag',
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest='bag_action', metavar='ACTION')
    actions.required = True

    mk = actions.add_parser('make', help='convert any reader\'s sequence into a ROS 2 bag (MCAP by default)')
    mk.add_argument('--dataset', required=True, help='FORMAT:PATH (7scenes, tum, mapfree, bag, synthetic)')
    mk.add_argument('--dataset-option', '-D', action='append', default=[], metavar='KEY=VALUE',
                    help='reader option, repeatable')
    mk.add_argument('--out', type=Path, required=True, help='bag folder to create')
    mk.add_argument('--storage', choices=('mcap', 'sqlite3'), default=None,
                    help='bag storage (default mcap; sqlite3 when --out ends in .db3)')
    mk.add_argument('--depth-encoding', choices=('16UC1', '32FC1'), default='16UC1')
    mk.add_argument('--rate', type=float, default=None, help='restamp frames at this rate (Hz); default: dataset stamps')
    mk.add_argument('--start', type=int, default=0, help='first frame index')
    mk.add_argument('--stop', type=int, default=None, help='stop before this frame index')
    mk.add_argument('--every', type=int, default=1, help='keep every N-th frame')
    mk.add_argument('--no-depth', action='store_true', help='do not write the depth topic')
    mk.add_argument('--no-ground-truth', action='store_true', help='do not write ground-truth pose and /tf')
    mk.add_argument('--overwrite', action='store_true', help='replace an existing bag folder')
    mk.set_defaults(func=run_make)

    info = actions.add_parser('info', help='topics, frame count and ground-truth coverage of a bag as our reader sees it')
    info.add_argument('bag', type=Path)
    info.add_argument('--dataset-option', '-D', action='append', default=[], metavar='KEY=VALUE',
                      help='bag reader option, repeatable (image_topic=..., gt_topic=...)')
    info.set_defaults(func=run_info)
    return p


def run_make(args) -> int:
    from ..data.bag_writer import write_bag
    from ..data.datasets import open_dataset, parse_options
    from ..errors import ConfigError

    if args.every < 1:
        raise ConfigError(f'--every must be >= 1, got {args.every}')
    sequence = open_dataset(args.dataset, **parse_options(args.dataset_option))
    indices = list(range(len(sequence)))[args.start:args.stop:args.every]
    summary = write_bag(sequence, args.out, storage=args.storage, depth_encoding=args.depth_encoding,
                        rate_hz=args.rate, indices=indices, with_depth=not args.no_depth,
                        with_ground_truth=not args.no_ground_truth, overwrite=args.overwrite, progress=True)
    print(f'wrote {summary.path} ({summary.storage}, {summary.num_frames} frames, {summary.duration_s:.2f} s)')
    for topic, n in sorted(summary.message_counts.items()):
        print(f'  {topic}: {n}')
    return 0


def run_info(args) -> int:
    from ..data.bag_reader import BagSequence
    from ..data.datasets import parse_options

    seq = BagSequence(args.bag, **parse_options(args.dataset_option))
    print(f'bag: {args.bag}')
    for topic, msgtype in sorted(seq.source.topics.items()):
        print(f'  {topic} [{msgtype}]')
    print(f'image: {seq.image_topic}  camera_info: {seq.info_topic}  depth: {seq.depth_topic or "-"}  '
          f'ground truth: {seq.gt_topic or "-"}')
    print(f'frames: {len(seq)} (without ground truth: {seq.frames_without_gt}, skipped without depth: '
          f'{seq.skipped_no_depth}, without camera_info: {seq.skipped_no_camera_info})')
    if seq.partial:
        print(f'PARTIAL: {seq.partial_reason}')
    return 0
