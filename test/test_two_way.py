"""Two-way fusion: the inverted reference->query pose averaged with the query->reference pose."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.errors import ConfigError
from relpose_ros.geometry import make_T, matrix_to_quat, quat_to_matrix
from relpose_ros.models.regression import RegressionModel
from relpose_ros.models.regression.two_way import fuse_two_way, quat_conjugate

SMALL = {'image_size': [32, 48], 'head_channels': [32, 16], 'mlp_hidden': 16}


def _as_output(T: np.ndarray) -> dict[str, torch.Tensor]:
    """A head output (quat, dir, scale) that says 'camera A sits at T (4x4, A -> B frame) in camera B's frame'."""
    q = matrix_to_quat(T[:3, :3])
    c = T[:3, 3]
    return {'quat': torch.tensor(q)[None], 'dir': torch.tensor(c / np.linalg.norm(c))[None],
            'scale': torch.tensor([np.linalg.norm(c)])}


def test_consistent_directions_fuse_to_the_same_pose():
    T_rq = make_T(quat_to_matrix(np.array([0.98, 0.1, -0.12, 0.05])), np.array([0.3, -0.1, 0.2]))
    fwd, back = _as_output(T_rq), _as_output(np.linalg.inv(T_rq))
    back['quat'] = -back['quat']                                   # a sign flip changes nothing
    out = fuse_two_way(fwd, back)
    assert torch.allclose(out['quat'].abs(), fwd['quat'].abs(), atol=1e-9)
    assert torch.allclose(out['dir'] * out['scale'][:, None], fwd['dir'] * fwd['scale'][:, None], atol=1e-9)


def test_disagreeing_centres_average_and_shrink():
    R = quat_to_matrix(np.array([0.99, 0.02, 0.1, -0.03]))
    c_f, c_b_true = np.array([0.2, 0.0, 0.1]), np.array([0.0, 0.2, 0.1])   # two different query centres
    fwd = _as_output(make_T(R, c_f))
    back = _as_output(np.linalg.inv(make_T(R, c_b_true)))          # says the query sits at c_b_true
    out = fuse_two_way(fwd, back)
    centre = (out['dir'] * out['scale'][:, None])[0].numpy()
    assert np.allclose(centre, 0.5 * (c_f + c_b_true), atol=1e-9)
    assert out['scale'][0] < min(np.linalg.norm(c_f), np.linalg.norm(c_b_true))
    assert torch.allclose(quat_conjugate(quat_conjugate(out['quat'])), out['quat'])


def test_two_way_modes_in_training_and_evaluation():
    torch.manual_seed(0)
    gq, gr = torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48)
    models = {}
    for mode in ('none', 'eval', 'always'):
        torch.manual_seed(0)
        models[mode] = RegressionModel({**SMALL, 'two_way': mode})
    with torch.no_grad():
        ev = {m: models[m].eval()(gq, gr) for m in models}
        tr = {m: models[m].train()(gq, gr) for m in models}
    assert torch.allclose(ev['eval']['dir'], ev['always']['dir']) and not torch.allclose(ev['eval']['dir'],
                                                                                          ev['none']['dir'])
    assert torch.allclose(tr['eval']['quat'], tr['none']['quat'])  # 'eval' trains one way
    assert not torch.allclose(tr['always']['quat'], tr['none']['quat'])
    for out in ev.values():
        assert torch.allclose(out['quat'].norm(dim=1), torch.ones(2), atol=1e-6)
        assert torch.all((out['confidence'] >= 0) & (out['confidence'] <= 1))
    models['always'].train()
    out = models['always'](gq, gr)
    (out['dir'].sum() + out['scale_raw'].sum() + out['quat'].sum()).backward()
    assert all(p.grad is not None for p in models['always'].head.parameters())


def test_two_way_with_reference_rotation_rotates_both_maps():
    torch.manual_seed(0)
    m = RegressionModel({**SMALL, 'appearance_channels': False, 'two_way': 'always'}).eval()
    gq, gr = torch.rand(1, 1, 32, 48), torch.rand(1, 1, 32, 48)
    K = torch.tensor([[[40.0, 0, 24.0], [0, 40.0, 16.0], [0, 0, 1]]])
    R_a = torch.tensor([[[1.0, 0, 0], [0, 0.98, -0.199], [0, 0.199, 0.98]]])
    with torch.no_grad():
        fq, fr = m.extract(gq), m.extract(gr)
        plain, rotated = m.forward_features(fq, fr), m.forward_features(fq, fr, (R_a, K))
        tok_q, tok_r = m.loftr.attend(fq, fr)
        hw = tuple(fq.shape[2:])
        fwd, _ = m._one_way(tok_q, tok_r, hw, hw, (R_a, K), 'pos_b')
        back_rot, _ = m._one_way(tok_r, tok_q, hw, hw, (R_a, K), 'pos_a')     # reference cells moved
        back_plain, _ = m._one_way(tok_r, tok_q, hw, hw, None, 'pos_a')
    assert not torch.allclose(plain['dir'], rotated['dir'])
    assert torch.allclose(rotated['dir'], fuse_two_way(fwd, back_rot)['dir'], atol=1e-6)
    assert not torch.allclose(rotated['dir'], fuse_two_way(fwd, back_plain)['dir'], atol=1e-4)


def test_unknown_two_way_mode_is_a_config_error():
    with pytest.raises(ConfigError, match='two_way'):
        RegressionModel({**SMALL, 'two_way': 'both'})

