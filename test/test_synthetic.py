"""Synthetic renderer: determinism, exact depth / pose consistency between two views, interface."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from relpose_ros.data.sequence import Sequence
from relpose_ros.data.synthetic import (SyntheticScene, SyntheticSequence, default_intrinsics, look_at, orbit_path,
                                        render_pair)
from relpose_ros.errors import ConfigError
from relpose_ros.geometry import backproject, inverse_T, project, rotation_error_deg


@pytest.fixture(scope='module')
def scene() -> SyntheticScene:
    return SyntheticScene(seed=3)


def _sample(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear samples of a float image at (N, 2) pixel coordinates."""
    mx = uv[:, 0].astype(np.float32).reshape(-1, 1)
    my = uv[:, 1].astype(np.float32).reshape(-1, 1)
    out = cv2.remap(img.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(len(uv), -1)


def test_same_seed_same_frames_other_seed_differs(scene):
    a = SyntheticSequence(num_frames=5, width=96, height=72, scene=scene)[3].frame
    b = SyntheticSequence(num_frames=5, width=96, height=72, seed=3)[3].frame
    c = SyntheticSequence(num_frames=5, width=96, height=72, seed=4)[3].frame
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth)
    assert not np.array_equal(a.rgb, c.rgb)


def test_sequence_interface(scene):
    seq = SyntheticSequence(num_frames=4, width=64, height=48, scene=scene, fps=10.0, use_depth=False)
    assert isinstance(seq, Sequence) and len(seq) == 4
    pf = seq[-1]
    assert pf.has_pose and pf.frame.depth is None and pf.frame.rgb.shape == (48, 64, 3)
    assert seq[1].frame.stamp_ns - seq[0].frame.stamp_ns == 100_000_000
    np.testing.assert_allclose(pf.frame.K, default_intrinsics(64, 48))
    with pytest.raises(IndexError):
        seq[4]
    gt = seq.gt_relative_pose(0, 2)
    np.testing.assert_allclose(gt, inverse_T(seq.poses[2]) @ seq.poses[0], atol=1e-12)


def test_depth_is_finite_positive_and_textured(scene):
    frame = SyntheticSequence(num_frames=10, width=160, height=120, scene=scene)[5].frame
    assert frame.depth.dtype == np.float32 and np.all(np.isfinite(frame.depth)) and frame.depth.min() > 0.05
    gray = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY)
    assert cv2.Laplacian(gray, cv2.CV_64F).var() > 50.0          # detail for feature matching
    assert len(cv2.SIFT_create().detect(gray)) > 100


def test_depth_and_pose_agree_between_views(scene):
    """Back-project frame A with its exact depth, move the points into B with the ground-truth pose and compare
    with B's own depth and colour at the projections (inverse depth is bilinear on planes, so this is exact
    away from edges and occlusions)."""
    pair = render_pair(width=320, height=240, translation=(0.15, -0.05, 0.2), yaw_deg=8.0, scene=scene)
    A, B, T_ba = pair.reference.frame, pair.query.frame, pair.T_query_from_ref
    v, u = np.mgrid[2:A.height - 2:3, 2:A.width - 2:3]
    uv = np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)
    X_a = backproject(uv, A.depth[v.ravel(), u.ravel()], A.K)
    X_b = X_a @ T_ba[:3, :3].T + T_ba[:3, 3]
    uv_b = project(X_b, B.K)
    inside = (uv_b[:, 0] > 1) & (uv_b[:, 0] < B.width - 2) & (uv_b[:, 1] > 1) & (uv_b[:, 1] < B.height - 2)
    assert inside.mean() > 0.6
    inv_depth_b = _sample(1.0 / B.depth, uv_b[inside])[:, 0]
    rel = np.abs(inv_depth_b * X_b[inside, 2] - 1.0)
    visible = rel < 1e-3
    assert visible.mean() > 0.9                                   # only edges / occlusions disagree
    assert np.median(rel) < 1e-4
    colour_a = A.rgb[v.ravel(), u.ravel()][inside][visible].astype(np.float64)
    colour_b = _sample(B.rgb, uv_b[inside][visible])
    diff = np.abs(colour_a - colour_b).mean(axis=1)
    assert np.median(diff) < 4.0 and np.mean(diff < 20.0) > 0.9


def test_render_pair_pose_is_what_was_asked(scene):
    pair = render_pair(width=64, height=48, translation=(0.1, 0.0, 0.3), yaw_deg=12.0, pitch_deg=0.0, scene=scene)
    T_ref_from_query = inverse_T(pair.T_query_from_ref)
    np.testing.assert_allclose(T_ref_from_query[:3, 3], [0.1, 0.0, 0.3], atol=1e-9)
    assert abs(rotation_error_deg(T_ref_from_query[:3, :3], np.eye(3)) - 12.0) < 1e-6


def test_default_path_is_smooth_and_in_free_space(scene):
    poses = orbit_path(240)
    steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
    turns = [rotation_error_deg(a[:3, :3], b[:3, :3]) for a, b in zip(poses[:-1], poses[1:])]
    assert 0.0 < steps.max() < 0.03 and 0.0 < max(turns) < 2.0   # per frame at 30 Hz: < 0.9 m/s, < 60 deg/s
    for T in poses:
        assert scene.inside_free_space(T[:3, 3])
        np.testing.assert_allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)


def test_bad_configuration_is_named(scene):
    with pytest.raises(ConfigError, match='outside the room'):
        scene.render(look_at((50.0, 0.0, 1.0), (51.0, 0.0, 1.0)), default_intrinsics(32, 24), 32, 24)
    with pytest.raises(ConfigError, match='poses must be'):
        SyntheticSequence(poses=np.eye(4), scene=scene)
    with pytest.raises(ConfigError, match='room_size'):
        SyntheticScene(room_size=(1.0, -1.0, 2.0))


def test_sensor_model_is_deterministic_and_bounded(scene):
    exact = SyntheticSequence(num_frames=3, width=80, height=60, scene=scene)[2].frame
    kw = dict(num_frames=3, width=80, height=60, scene=scene, depth_noise=1.0, rgb_noise=3.0, max_depth=3.0)
    a, b = SyntheticSequence(**kw)[2].frame, SyntheticSequence(**kw)[2].frame
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth, b.depth, equal_nan=True)
    far = exact.depth > 3.0
    assert np.all(np.isnan(a.depth[far])) and np.all(np.isfinite(a.depth[~far]))
    err = (a.depth - exact.depth)[~far]
    expected = 0.0012 + 0.0019 * (exact.depth[~far] - 0.4) ** 2
    assert 0.7 < np.std(err / expected) < 1.3                      # the documented axial noise model
    assert 2.0 < np.std(a.rgb.astype(float) - exact.rgb) < 4.0
    with pytest.raises(ConfigError, match='depth_noise'):
        SyntheticSequence(scene=scene, depth_noise=-1.0)


def test_render_bench_runs_and_reports(capsys):
    import argparse

    from relpose_ros.bench import synthetic as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    result = bench.run(parser.parse_args(['--frames', '2', '--sizes', '64x48']))
    assert [(r['size'], r['sensor_model']) for r in result['rows']] == [('64x48', False), ('64x48', True)]
    assert all(r['fps'] > 0 and r['median_ms'] > 0 for r in result['rows'])
    assert 'frames/s' in capsys.readouterr().out
    with pytest.raises(ConfigError, match='WxH'):
        bench.run(parser.parse_args(['--sizes', '64by48']))
