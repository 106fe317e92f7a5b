"""Virtual reference rotation: the warped match positions and the targets are those of a rotated camera."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.errors import ConfigError
from relpose_ros.models.regression.rotation_augment import (
    cell_grid_to_pixels, pixels_to_cell_grid, random_rotations, rotate_reference_positions, rotate_reference_targets)


def _project(K, X):
    x = X @ K.T
    return x[..., :2] / x[..., 2:]


def test_rotated_reference_sees_the_matches_and_pose_of_a_rotated_camera():
    from relpose_ros.geometry import matrix_to_quat, quat_to_matrix
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    h, w = 15, 20                                             # coarse map of a 120x160 network image
    K = np.array([[146.0, 0, 80.0], [0, 146.0, 60.0], [0, 0, 1]])
    X_q = np.c_[rng.uniform(-1, 1, (40, 2)), rng.uniform(1.5, 3.0, 40)]       # points in the query camera
    R = quat_to_matrix(np.array([0.99, 0.05, -0.08, 0.03]))                   # R_ref_from_query
    c = np.array([0.12, -0.03, 0.05])                                         # query centre in the reference
    X_r = X_q @ R.T + c
    R_a = random_rotations(1, 10.0)[0].double()
    assert 0 < np.degrees(np.arccos((np.trace(R_a.numpy()) - 1) / 2)) <= 10.0 + 1e-6
    pos_r = pixels_to_cell_grid(torch.from_numpy(_project(K, X_r))[None], h, w)          # (1, N, 2)
    got = rotate_reference_positions(pos_r, R_a[None], torch.from_numpy(K)[None], (h, w))
    expected = pixels_to_cell_grid(torch.from_numpy(_project(K, X_r @ R_a.numpy().T))[None], h, w)
    assert torch.allclose(got, expected, atol=1e-9)
    assert not torch.allclose(got, pos_r, atol=1e-3)
    q, c_new = rotate_reference_targets(torch.from_numpy(matrix_to_quat(R))[None], torch.from_numpy(c)[None],
                                        R_a[None])
    assert float(q[0, 0]) >= 0
    X_r_new = X_q @ quat_to_matrix(q[0].numpy()).T + c_new[0].numpy()                   # R' X_q + c'
    assert np.allclose(X_r_new, X_r @ R_a.numpy().T, atol=1e-9)
    grid = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.5]])
    assert torch.allclose(pixels_to_cell_grid(cell_grid_to_pixels(grid, h, w), h, w), grid)
    assert torch.allclose(cell_grid_to_pixels(grid[:2], h, w), torch.tensor([[4.0, 4.0], [156.0, 116.0]]))


def test_model_rotates_only_the_warped_positions_and_training_uses_it(tmp_path):
    from relpose_ros.data.synthetic import SyntheticSequence
    from relpose_ros.models.regression import RegressionModel
    from relpose_ros.train.config import train_config
    from relpose_ros.train.run import fit
    small = {'image_size': [16, 24], 'head_channels': [32, 16], 'mlp_hidden': 16, 'appearance_channels': False}
    model = RegressionModel(small).eval()
    g = torch.rand(2, 1, 16, 24)
    f = model.extract(g)
    K = torch.tensor([[20.0, 0, 12], [0, 20.0, 8], [0, 0, 1]]).expand(2, 3, 3)
    seen = []
    hook = model.head.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    with torch.no_grad():
        plain = model.forward_features(f, f)
        same = model.forward_features(f, f, (torch.eye(3).expand(2, 3, 3), K))
        model.forward_features(f, f, (random_rotations(2, 8.0), K))
    hook.remove()
    assert torch.allclose(plain['quat'], same['quat'], atol=1e-5)
    changed = (seen[2] - seen[0]).abs().amax(dim=(0, 2, 3)) > 1e-6                   # per channel
    c = model.loftr.dim
    assert changed[2 * c + 2:2 * c + 4].all() and not changed[:2 * c + 2].any() and not changed[2 * c + 4:].any()
    with pytest.raises(ConfigError, match='appearance_channels'):
        train_config({'data': {'rotate_reference_deg': 5.0}})
    with pytest.raises(ConfigError, match='appearance_channels'):
        RegressionModel({**small, 'appearance_channels': True}).forward_features(f, f, (random_rotations(2, 8.0), K))

    seqs = {'synthetic:a': SyntheticSequence(num_frames=6, width=48, height=32, seed=1, use_depth=False)}
    cfg = train_config({
        'out_dir': str(tmp_path), 'model': small,
        'data': {'train': [{'dataset': 'synthetic:a'}], 'val': [{'dataset': 'synthetic:a'}],
                 'pairs': {'mode': 'gap', 'min_gap': 1, 'max_gap': 2}, 'pairs_per_epoch': 8, 'val_num_pairs': 8,
                 'batch_size': 4, 'augment': False, 'rotate_reference_deg': 10.0},
        'train': {'max_steps': 2, 'accelerator': 'cpu', 'progress_bar': False, 'validate_before_fit': False,
                  'cache_backbone': True}})
    summary = fit(cfg, sequences=seqs)
    assert summary['steps'] == 2 and np.isfinite(summary['final']['centre_med_m'])
