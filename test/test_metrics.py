"""Map-free metrics against hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
import transforms3d.euler as te

from relpose_ros.eval import metrics as m

K = np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
W, H = 640, 480
ZS = 1.8 + 0.3 * np.arange(7)


def test_virtual_points_grid():
    P = m.virtual_points()
    assert P.shape == (196, 3)
    assert np.allclose(sorted(set(np.round(P[:, 0], 6))), -0.9 + 0.3 * np.arange(7))
    assert np.allclose(sorted(set(np.round(P[:, 1], 6))), [-0.45, -0.15, 0.15, 0.45])
    assert np.allclose(sorted(set(np.round(P[:, 2], 6))), ZS)


def test_identity_gives_zero_errors():
    T = np.eye(4)
    T[:3, 3] = [0.3, -0.1, 0.5]
    e = m.pair_errors(T[:3, :3], T[:3, 3], T, K, W, H)
    assert e.rot_err_deg == pytest.approx(0, abs=1e-6)
    assert e.trans_err_m == pytest.approx(0, abs=1e-12)
    assert e.vcre_px == pytest.approx(0, abs=1e-9)
    assert e.transdir_err_deg == pytest.approx(0, abs=1e-4)


def test_known_translation_error_and_vcre():
    T_gt = np.eye(4)
    T_gt[:3, 3] = [0.0, 0.0, -1.0]
    t_est = np.array([0.1, 0.0, -1.0])  # residual shifts every virtual point by -0.1 m along x
    e = m.pair_errors(np.eye(3), t_est, T_gt, K, W, H)
    assert e.trans_err_m == pytest.approx(0.1)
    assert e.rot_err_deg == pytest.approx(0.0, abs=1e-6)
    # every point moves fx * 0.1 / z pixels horizontally; 28 points per depth plane, none clipped
    assert e.vcre_px == pytest.approx(500 * 0.1 * np.mean(1.0 / ZS))
    assert e.transdir_err_deg == pytest.approx(np.degrees(np.arctan2(0.1, 1.0)))


def test_known_rotation_error():
    R = te.euler2mat(0, 0, np.radians(10.0))  # 10 deg about the optical axis
    e = m.pair_errors(R, np.zeros(3), np.eye(4), K, W, H)
    assert e.rot_err_deg == pytest.approx(10.0)
    assert e.trans_err_m == pytest.approx(0.0)
    # the rotation about z moves a point at image radius r by 2 r sin(5 deg); mean over the grid
    P = m.virtual_points()
    r_px = 500 * np.linalg.norm(P[:, :2], axis=1) / P[:, 2]
    assert e.vcre_px == pytest.approx(np.mean(2 * r_px * np.sin(np.radians(5.0))), rel=1e-9)


def test_vcre_uses_the_residual_transform():
    # a general pose: VCRE = mean |K X - K T_est^-1 T_gt X| over the grid (no point leaves this wide image)
    T_gt = np.eye(4)
    T_gt[:3, :3], T_gt[:3, 3] = te.euler2mat(0.1, -0.2, 0.05), [0.2, -0.1, 0.3]
    T_est = np.eye(4)
    T_est[:3, :3], T_est[:3, 3] = te.euler2mat(0.12, -0.18, 0.04), [0.25, -0.12, 0.28]
    Kw = np.array([[500.0, 0, 2000], [0, 500.0, 2000], [0, 0, 1]])
    Xh = np.c_[m.virtual_points(), np.ones(196)]
    X_res = (np.linalg.inv(T_est) @ T_gt @ Xh.T).T[:, :3]
    uv = lambda X: (X @ Kw.T)[:, :2] / X[:, 2:3]  # noqa: E731
    expected = np.linalg.norm(uv(Xh[:, :3]) - uv(X_res), axis=1).mean()
    e = m.pair_errors(T_est[:3, :3], T_est[:3, 3], T_gt, Kw, 4000, 4000)
    assert e.vcre_px == pytest.approx(expected, rel=1e-12) and expected > 1.0


def test_vcre_clips_projections_to_image():
    t_est = np.array([-100.0, 0.0, 0.0])  # residual X + 100 m: every estimated projection clipped to u = W
    e = m.pair_errors(np.eye(3), t_est, np.eye(4), K, W, H)
    # true projections are symmetric about cx = 320, so the mean distance to u = 640 is 320 exactly
    assert e.vcre_px == pytest.approx(W - 320.0)
    assert e.vcre_px > m.VCRE_THRESHOLD_PX


def test_precision_and_auc_on_crafted_list_with_failures():
    conf = [0.6, 0.9, 0.7, 0.8]
    accepted = [True, True, True, False]
    # ranked by confidence: 0.9 T, 0.8 F, 0.7 T, 0.6 T; one failure -> 5 in the denominator
    assert m.precision(accepted, n_failed=1) == pytest.approx(3 / 5)
    assert m.auc_by_confidence(conf, accepted, n_failed=1) == pytest.approx((1 + 1 / 2 + 2 / 3 + 3 / 4) / 5)
    assert m.auc_by_confidence([], [], n_failed=3) == 0.0
    assert np.isnan(m.precision([], 0))


def _pair(q, ok, trans, rot=0.0, conf=0.5, gap=10, has_gt=True):
    T_gt = np.eye(4)
    T_gt[:3, 3] = [0, 0, -1]
    R = te.euler2mat(0, np.radians(rot), 0)
    t = -R @ np.array([trans, 0, 1.0])  # estimated camera centre `trans` metres beside the true one
    return m.score_pair(0, q, R, t, conf, ok, T_gt if has_gt else None, K, W, H, gap=gap)


def test_summary_counts_failures_nan_and_missing_ground_truth():
    pairs = [
        _pair(1, True, 0.10, conf=0.9),            # accepted
        _pair(2, True, 0.50, conf=0.8),            # rejected (50 cm)
        _pair(3, True, 0.05, rot=8.0, conf=0.7),   # rejected (8 deg)
        _pair(4, False, 0.0, conf=0.0),            # failure: not ok
        m.score_pair(0, 5, np.full((3, 3), np.nan), np.zeros(3), 0.9, True, np.eye(4), K, W, H),  # NaN
        _pair(6, True, 0.0, has_gt=False),         # no ground truth: not scored
    ]
    s = m.summarize(pairs)
    assert list(s) == list(m.SUMMARY_KEYS)
    assert s['n_pairs'] == 5 and s['n_failed'] == 2
    assert s['median_trans_err_m'] == pytest.approx(0.10, abs=1e-9)
    assert s['precision_pose'] == pytest.approx(1 / 5)
    assert s['auc_pose'] == pytest.approx((1 + 1 / 2 + 1 / 3) / 5)  # ranks 0.9 (T), 0.8 (F), 0.7 (F)
    assert pairs[4].failed and pairs[4].reason == 'non-finite estimate'
    assert m.details(pairs)['n_no_gt'] == 1
    js = pairs[4].to_json()
    assert js['ok'] is False and js['rot_err_deg'] is None
    per_gap = m.summarize_per_gap(pairs)
    assert set(per_gap) == {'10', '5'}


def test_spearman_and_latency():
    assert m.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(m.spearman([1, 1, 1], [1, 2, 3]))
    lat = m.latency_percentiles([10, 20, 30, 40, None, float('nan')])
    assert lat['p50'] == pytest.approx(25.0) and lat['max'] == 40 and lat['n'] == 4
    pairs = [_pair(1, True, 0.1)]
    pairs[0].latency_ms = 12.0
    s = m.summarize(pairs, dropped_frames=3, with_latency=True)
    assert s['latency_ms_p50'] == 12.0 and s['dropped_frames'] == 3
