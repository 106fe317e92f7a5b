"""``relpose bench node``: the node's own overhead per RGB + depth frame, estimator excluded.

Stages (per frame, synthetic 640x480 by default): receive (rclpy deserialisation), convert
(messages -> Frame), sync (stamp synchroniser + mailbox), build (output messages), publish (real
rclpy publishers), and ``end_to_end`` (the real node's callbacks to the published pose, constant
backend). The measurement needs rclpy and lives in :mod:`relpose_ros.ros.bench_node` (only
``relpose_ros/ros/`` imports rclpy); this module parses the arguments and prints the table.
"""
from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

TARGET_MS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--frames', type=int, default=300, help='timed frames per stage (default 300)')
    parser.add_argument('--warmup', type=int, default=20, help='untimed frames first (default 20)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--encoding', choices=('rgb8', 'bgr8'), default='rgb8')
    parser.add_argument('--depth-encoding', choices=('16UC1', '32FC1'), default='16UC1')


def _summary(ms: np.ndarray) -> dict[str, float]:
    return {'mean_ms': float(ms.mean()), 'median_ms': float(np.median(ms)), 'p95_ms': float(np.percentile(ms, 95))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ..ros.bench_node import OVERHEAD_STAGES, measure_stages  # rclpy is imported here, not before

    stages = measure_stages(width=args.width, height=args.height, frames=args.frames, warmup=args.warmup,
                            encoding=args.encoding, depth_encoding=args.depth_encoding)
    result: dict[str, Any] = {
        'image': f'{args.width}x{args.height} {args.encoding} + {args.depth_encoding} depth + CameraInfo',
        'frames': args.frames, 'cpu_count': os.cpu_count(), 'load_average_1min': os.getloadavg()[0],
        'stages': {k: _summary(v) for k, v in stages.items()},
    }
    result['overhead_ms'] = sum(result['stages'][k]['mean_ms'] for k in OVERHEAD_STAGES)
    result['target_ms'] = TARGET_MS
    result['meets_target'] = result['overhead_ms'] <= TARGET_MS
    _print_table(result)
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"relpose bench node: {result['image']}, {result['frames']} frames, "
          f"load average {result['load_average_1min']:.2f} on {result['cpu_count']} CPUs")
    print(f"{'stage':<12}{'mean ms':>10}{'median ms':>11}{'p95 ms':>9}")
    for name, s in result['stages'].items():
        if name == 'end_to_end':
            continue
        print(f"{name:<12}{s['mean_ms']:>10.3f}{s['median_ms']:>11.3f}{s['p95_ms']:>9.3f}")
    print(f"{'overhead':<12}{result['overhead_ms']:>10.3f}   (sum of stage means; target <= {result['target_ms']:g} ms: "
          f"{'OK' if result['meets_target'] else 'MISSED'})")
    e = result['stages']['end_to_end']
    print(f"{'end_to_end':<12}{e['mean_ms']:>10.3f}{e['median_ms']:>11.3f}{e['p95_ms']:>9.3f}"
          '   (node callbacks -> pose published, constant backend, no DDS receive)')
