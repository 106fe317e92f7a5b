"""``relpose bench synthetic``: frames per second of the synthetic RGB-D renderer (issue target: >= 20 at 320x240).

Renders frames of the default camera path (exact images and depth, then with the sensor model) at each requested
size and prints median / p90 time per frame and frames per second.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

TARGET_FPS_320 = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--frames', type=int, default=60, help='timed frames per size (default 60)')
    parser.add_argument('--sizes', default='320x240,640x480', help='comma-separated WxH (default %(default)s)')
    parser.add_argument('--seed', type=int, default=0)


def _sizes(text: str) -> list[tuple[int, int]]:
    from ..errors import ConfigError

    out = []
    for item in text.split(','):
        try:
            w, h = (int(v) for v in item.lower().split('x'))
        except ValueError:
            raise ConfigError(f"--sizes expects WxH[,WxH...], got '{item}'") from None
        out.append((w, h))
    return out


def run(args) -> dict[str, Any]:
    from ..data.synthetic import SyntheticScene, SyntheticSequence

    t0 = time.perf_counter()
    scene = SyntheticScene(seed=args.seed)
    build_s = time.perf_counter() - t0
    rows = []
    for w, h in _sizes(args.sizes):
        for sensor in (False, True):
            extra = {'depth_noise': 1.0, 'rgb_noise': 2.0, 'max_depth': 5.0} if sensor else {}
            seq = SyntheticSequence(num_frames=args.frames + 1, width=w, height=h, scene=scene, **extra)
            seq[0]                                                  # ray cache warm-up
            times = []
            for i in range(1, args.frames + 1):
                t = time.perf_counter()
                seq[i]
                times.append(time.perf_counter() - t)
            ms = np.asarray(times) * 1e3
            rows.append({'size': f'{w}x{h}', 'sensor_model': sensor, 'median_ms': float(np.median(ms)),
                         'p90_ms': float(np.percentile(ms, 90)), 'fps': float(1e3 / np.mean(ms))})
    print(f'synthetic renderer (scene built in {build_s:.2f} s; texture atlas {scene.atlas.shape[1]}x'
          f'{scene.atlas.shape[0]}):')
    print(f"{'size':>9}  {'sensor':>6}  {'median ms':>9}  {'p90 ms':>7}  {'frames/s':>8}")
    for r in rows:
        print(f"{r['size']:>9}  {'yes' if r['sensor_model'] else 'no':>6}  {r['median_ms']:9.1f}  {r['p90_ms']:7.1f}  "
              f"{r['fps']:8.1f}")
    print(f'target: >= {TARGET_FPS_320:g} frames/s at 320x240 on CPU (timings include any load from other processes)')
    return {'scene_build_s': build_s, 'rows': rows, 'target_fps_320x240': TARGET_FPS_320}
