"""Evaluation plots are written as real PNG files from scored pairs."""
from __future__ import annotations

import numpy as np
import matplotlib.image as mpimg

from relpose_ros.eval import metrics as m
from relpose_ros.eval import plots

K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])


def test_write_all_plots(tmp_path):
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(30):
        gap = (10, 30)[i % 2]
        t = np.array([0.0, 0.0, -0.01 * gap]) + rng.normal(0, 0.05, 3)
        T_gt = np.eye(4)
        T_gt[:3, 3] = [0, 0, -0.01 * gap]
        p = m.score_pair(i, i + gap, np.eye(3), t, rng.uniform(), i % 7 != 0, T_gt, K, 640, 480,
                         latency_ms=float(rng.uniform(20, 40)))
        pairs.append(p)
    traj = {'gt': rng.normal(size=(30, 3)), 'est': rng.normal(size=(30, 3)), 'ref': np.zeros((1, 3))}
    files = plots.write_all(pairs, tmp_path, trajectory=traj)
    assert set(files) == {'error_vs_gap', 'confidence_vs_error', 'error_per_frame', 'latency_histogram',
                          'trajectory'}
    for name in files.values():
        img = mpimg.imread(tmp_path / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0.01  # a real, non-blank image
