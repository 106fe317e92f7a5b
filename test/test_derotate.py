"""Derotated second pass (model.derotate): the reference camera rotated by the first pass's rotation, exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.errors import ConfigError
from relpose_ros.models.regression import RegressionModel
from relpose_ros.models.regression.rotation_augment import compose_rotation, random_rotations

SMALL = {'image_size': [32, 48], 'head_channels': [32, 16], 'mlp_hidden': 16, 'appearance_channels': False}
K = torch.tensor([[[40.0, 0, 24.0], [0, 40.0, 16.0], [0, 0, 1]]])


def test_composing_back_undoes_the_virtual_rotation():
    torch.manual_seed(0)
    R_a = random_rotations(3, 30.0).double()
    q = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    q = torch.where(q[:, :1] < 0, -q, q)
    c = torch.randn(3, 3, dtype=torch.float64)
    q2, c2 = compose_rotation(R_a.transpose(1, 2), *compose_rotation(R_a, q, c))
    assert torch.allclose(q2, q, atol=1e-9) and torch.allclose(c2, c, atol=1e-9)


def test_second_pass_sees_the_derotated_map_and_maps_its_pose_back():
    from kornia.geometry.conversions import quaternion_to_rotation_matrix
    torch.manual_seed(0)
    m = RegressionModel({**SMALL, 'derotate': True}).eval()
    with torch.no_grad():
        for p in m.head.rot[-1].parameters():      # a first pass that says "rotated by ~20 deg"
            p.add_(torch.randn_like(p) * 0.3)
        fq, fr = m.extract(torch.rand(1, 1, 32, 48)), m.extract(torch.rand(1, 1, 32, 48))
        out = m.forward_features(fq, fr, K=(K, K))
        tok_q, tok_r = m.loftr.attend(fq, fr)
        from relpose_ros.models.regression.matching import hard_match_and_warp
        cmap, _ = hard_match_and_warp(tok_q, tok_r, (4, 6), (4, 6), 0.1, False)
        first = m.head(m.head_input(cmap))
        R_a = quaternion_to_rotation_matrix(first['quat']).transpose(1, 2)
        second = m.head(m.head_input(m._rotate_reference(cmap, R_a, K, (4, 6))))
        q, c = compose_rotation(R_a.transpose(1, 2), second['quat'], second['dir'] * second['scale'][:, None])
    assert torch.allclose(out['quat_first'], first['quat']) and torch.allclose(out['quat'], q, atol=1e-6)
    assert torch.allclose(out['dir'] * out['scale'][:, None], c, atol=1e-6)
    assert not torch.allclose(out['quat'], out['quat_first'], atol=1e-3)


def test_derotate_needs_the_intrinsics_and_the_geometry_only_head():
    with pytest.raises(ConfigError, match='appearance_channels'):
        RegressionModel({**SMALL, 'appearance_channels': True, 'derotate': True})
    m = RegressionModel({**SMALL, 'derotate': True}).eval()
    with torch.no_grad():
        fq = m.extract(torch.rand(1, 1, 32, 48))
        with pytest.raises(ConfigError, match='intrinsics'):
            m.forward_features(fq, fq)


def test_derotate_trains_both_passes_and_the_backend_uses_the_frames_intrinsics(tmp_path):
    from relpose_ros.backends import create
    from relpose_ros.data.synthetic import SyntheticSequence
    from relpose_ros.train.config import train_config
    from relpose_ros.train.run import fit
    seqs = {'synthetic:a': SyntheticSequence(num_frames=6, width=48, height=32, seed=1, use_depth=False)}
    cfg = train_config({
        'out_dir': str(tmp_path), 'model': {'image_size': [16, 24], 'head_channels': [32, 16], 'mlp_hidden': 16,
                                            'appearance_channels': False, 'derotate': True, 'two_way': 'eval'},
        'data': {'train': [{'dataset': 'synthetic:a'}], 'val': [{'dataset': 'synthetic:a'}],
                 'pairs': {'mode': 'gap', 'min_gap': 1, 'max_gap': 2}, 'pairs_per_epoch': 8, 'val_num_pairs': 8,
                 'batch_size': 4, 'augment': False, 'rotate_reference_deg': 10.0},
        'optim': {'lr': 3e-3},
        'train': {'max_epochs': 1, 'accelerator': 'cpu', 'progress_bar': False, 'validate_before_fit': False,
                  'log_every_n_steps': 1, 'cache_backbone': True}})
    summary = fit(cfg, sequences=seqs)
    assert np.isfinite(summary['final']['centre_med_m'])
    logs = (tmp_path / 'logs' / 'version_0' / 'metrics.csv').read_text()
    assert 'train/loss_first' in logs
    est = create('regression', {'checkpoint': str(tmp_path / 'checkpoints' / 'last.ckpt')}, device='cpu')
    seq = seqs['synthetic:a']
    ref, live = seq[0].frame, seq[2].frame
    a = est.estimate(est.prepare_reference(ref), live)
    live.K = live.K * np.array([[1.3], [1.3], [1.0]])          # another focal length: another derotation
    b = est.estimate(est.prepare_reference(ref), live)
    assert a.ok and b.ok and not np.allclose(a.R, b.R)
