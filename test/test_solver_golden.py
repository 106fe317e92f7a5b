"""The shared 3-D/3-D solver against the official MicKey solver's golden values (golden_pose.npz)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.geometry import backproject_torch, kabsch
from relpose_ros.solver import SolverConfig, hard_inliers, residuals, soft_inliers, solve


def rel(a, g) -> float:
    return float(np.abs(np.asarray(a) - g).max() / max(np.abs(g).max(), 1e-12))


@pytest.fixture(scope='module')
def g(golden_mickey):
    return dict(np.load(golden_mickey / 'golden_pose.npz'))


def T(a):
    return torch.from_numpy(np.asarray(a))


def test_kabsch_all_and_triplet(g):
    R, t = kabsch(T(g['X']), T(g['Y']))
    assert rel(R, g['kabsch_all_R']) <= 1e-4 and rel(t, g['kabsch_all_t'][:, 0]) <= 1e-4
    idx = T(g['triplet_idx'])
    Xt = torch.stack([T(g['X'])[b, idx[b]] for b in range(3)])
    Yt = torch.stack([T(g['Y'])[b, idx[b]] for b in range(3)])
    R3, t3 = kabsch(Xt, Yt)
    assert rel(R3, g['kabsch_triplet_R']) <= 1e-4 and rel(t3, g['kabsch_triplet_t'][:, 0]) <= 1e-4
    assert torch.allclose(torch.linalg.det(R3), torch.ones(3), atol=1e-5)


def test_weighted_procrustes(g):
    for w, key in ((g['inlier_mask_gt_015'], 'masked'), (g['w_rand'], 'weighted')):
        R, t = kabsch(T(g['X']), T(g['Y']), T(w))
        assert rel(R, g[f'{key}_R']) <= 1e-4, key
        assert rel(t, g[f'{key}_t'][:, 0]) <= 1e-4, key


def test_soft_and_hard_inliers(g):
    r = residuals(T(g['R_gt']), T(g['t_gt'][:, 0]), T(g['X']), T(g['Y']))
    for th, key in ((0.3, '03'), (0.15, '015')):
        per_point = soft_inliers(r, th)
        assert rel(per_point, g[f'soft_gt_{key}_per_point']) <= 1e-4
        assert rel(per_point.sum(-1, keepdim=True), g[f'soft_gt_{key}']) <= 1e-4
    assert np.array_equal(hard_inliers(r, 0.15).numpy().astype(np.float32), g['inlier_mask_gt_015'])
    r3 = residuals(T(g['kabsch_triplet_R']), T(g['kabsch_triplet_t'][:, 0]), T(g['X']), T(g['Y']))
    assert rel(soft_inliers(r3, 0.3).sum(-1, keepdim=True), g['soft_triplet_03']) <= 1e-4
    assert np.array_equal(hard_inliers(r3, 0.15).numpy().astype(np.float32), g['hard_triplet_015'])


def test_backprojection(g):
    xyz = backproject_torch(T(g['bp_uv']), T(g['bp_depth'])[..., 0], T(g['bp_K']))
    assert rel(xyz, g['bp_xyz']) <= 1e-4


def ransac_inputs(g):
    """Back-project both ends of each outer sample's 2048 flat matches: X, Y (20,2048,3), w (20,2048)."""
    K = T(g['ransac_K'])
    kp0, kp1 = T(g['ransac_kps0'])[0].T, T(g['ransac_kps1'])[0].T             # (64,2)
    d0, d1 = T(g['ransac_depth0'])[0, 0], T(g['ransac_depth1'])[0, 0]
    P0 = backproject_torch(kp0[None], d0[None], K)[0]
    P1 = backproject_torch(kp1[None], d1[None], K)[0]
    flat = T(g['ransac_outer_idx'])
    n = kp1.shape[0]
    X, Y = P0[flat // n], P1[flat % n]
    w = T(g['ransac_final_scores'])[0].reshape(-1)[flat]
    return X, Y, w


def test_ransac_with_injected_draws(g):
    X, Y, w = ransac_inputs(g)
    res = solve(X, Y, w, SolverConfig(), triplets=T(g['ransac_inner_idx']), return_hypotheses=True)
    assert res.ok
    hyp = res.hypotheses
    good = torch.from_numpy(g['ransac_hyp_cond'] > 1e-3)
    assert torch.allclose(hyp['R'][good], T(g['ransac_hyp_R'])[good], atol=1e-4)
    assert torch.allclose(hyp['t'][good], T(g['ransac_hyp_t'])[good, 0], atol=1e-3)
    assert torch.allclose(hyp['score'][good], T(g['ransac_hyp_score'])[good], atol=1e-2)
    # Degenerate triplets (repeated keypoints) are rejected, not scored.
    assert not bool(hyp['valid'][~good & (T(g['ransac_hyp_cond']) < 1e-6)].any())
    assert res.best_hypothesis == int(g['ransac_best_hyp'])
    assert len(res.refinements) == int(g['ransac_num_refinements'])
    for k, (R_k, t_k) in enumerate(res.refinements):             # every accepted refinement step: R and t
        assert rel(R_k, g['ransac_refine_R'][k, 0]) <= 1e-4, k
        assert rel(t_k, g['ransac_refine_t'][k, 0, 0]) <= 1e-4, k
    assert rel(res.R, g['ransac_R'][0]) <= 1e-4 and rel(res.t, g['ransac_t'][0, 0]) <= 1e-4
    assert abs(res.score - float(g['ransac_confidence'].item())) <= 1e-4 * float(g['ransac_confidence'].item())
    assert res.num_inliers == g['ransac_inliers'].shape[0]
    # The inlier list [u0, v0, u1, v1, weight, depth0, depth1], sorted by weight, largest first (kit 4.5 step 6).
    # The golden weights are distinct, so the order is defined and the lists are compared row by row.
    golden = g['ransac_inliers']
    assert np.all(np.diff(golden[:, 4]) < 0)
    kp0, kp1 = g['ransac_kps0'][0].T, g['ransac_kps1'][0].T
    s, mask = res.set_index, res.inlier_mask
    flat = g['ransac_outer_idx'][s][mask]
    # weights as the solver received them; depths = the z of the back-projected points it fitted
    rows = np.concatenate([kp0[flat // 64], kp1[flat % 64], w[s][mask].numpy()[:, None],
                           X[s][mask][:, 2:].numpy(), Y[s][mask][:, 2:].numpy()], axis=1)
    rows = rows[np.argsort(-rows[:, 4], kind='stable')]
    assert rows.shape == golden.shape
    for col, name in enumerate(('u0', 'v0', 'u1', 'v1', 'weight', 'depth0', 'depth1')):
        assert rel(rows[:, col], golden[:, col]) <= 1e-4, name


def test_ransac_seeded_is_deterministic_and_accurate(g):
    X, Y, w = ransac_inputs(g)
    a = solve(X, Y, w, SolverConfig(seed=7))
    b = solve(X, Y, w, SolverConfig(seed=7))
    assert a.ok and np.array_equal(a.R, b.R) and np.array_equal(a.t, b.t)
    R_err = np.degrees(np.arccos(np.clip((np.trace(a.R @ g['ransac_R_gt'].T) - 1) / 2, -1, 1)))
    assert R_err < 2.0 and np.linalg.norm(a.t - g['ransac_t_gt']) < 0.1


def test_degenerate_and_empty_inputs_fail_cleanly():
    X = torch.zeros(10, 3)
    X[:, 0] = torch.arange(10.0)                          # all points collinear
    res = solve(X, X + 1.0, torch.ones(10))
    assert not res.ok and 'degenerate' in res.reason
    assert np.array_equal(res.R, np.eye(3)) and np.all(np.isfinite(res.t))
    res = solve(torch.rand(2, 3), torch.rand(2, 3), torch.ones(2))
    assert not res.ok and 'too few' in res.reason
    res = solve(torch.rand(20, 3), torch.rand(20, 3), torch.zeros(20))
    assert not res.ok and 'positive weight' in res.reason
    Xn = torch.rand(30, 3)
    Xn[0] = float('nan')
    res = solve(Xn, Xn + 0.5, torch.ones(30))           # a NaN point is ignored, not fatal
    assert res.ok and np.allclose(res.t, 0.5, atol=1e-4) and np.all(np.isfinite(res.R))
