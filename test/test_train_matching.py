"""Matching pre-training of the LoFTR coarse stage: exact GT coarse matches, the dual-softmax loss, the stage."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.data.synthetic import SyntheticSequence, render_pair
from relpose_ros.errors import ConfigError
from relpose_ros.geometry import inverse_T
from relpose_ros.models.regression.loftr import LoFTRCoarse
from relpose_ros.train import matching as M
from relpose_ros.train.config import train_config


def plane_pair(shift_m: float, h: int = 64, w: int = 80, depth: float = 2.0):
    """A fronto-parallel plane at ``depth``; the query sits ``shift_m`` along +x of the reference camera."""
    K = np.array([[80.0, 0.0, w / 2], [0.0, 80.0, h / 2], [0.0, 0.0, 1.0]])
    d = np.full((h, w), depth, np.float32)
    T_ref_from_query = np.eye(4)
    T_ref_from_query[0, 3] = shift_m
    return d, d.copy(), K, T_ref_from_query


def test_gt_matches_of_a_known_motion_are_known_cells():
    # X_ref = X_query + (0.4, 0, 0) at depth 2 m, f = 80 px: every point moves +16 px = 2 cells to the right
    dq, dr, K, T = plane_pair(0.4)
    gt = M.gt_coarse_matches(dq, dr, K, K, T, stride=8).reshape(8, 10)
    rows, cols = np.mgrid[0:8, 0:10]
    expected = np.where(cols + 2 < 10, rows * 10 + cols + 2, -1)
    assert np.array_equal(gt, expected)
    # no query depth, or a reference surface in front of the point (occlusion): no match
    dq[0:8, 0:8] = np.nan
    dr[:, 36:44] = 1.0                     # a surface at 1 m where query column 2 (centre 20 px) lands (36 px)
    gt = M.gt_coarse_matches(dq, dr, K, K, T, stride=8).reshape(8, 10)
    assert gt[0, 0] == -1 and gt[1, 0] == 1 * 10 + 2
    assert np.all(gt[:, 2] == -1) and np.all(gt[1:, 3] == np.arange(1, 8) * 10 + 5)
    # the identity motion matches every cell to itself
    dq, dr, K, _ = plane_pair(0.0)
    assert np.array_equal(M.gt_coarse_matches(dq, dr, K, K, np.eye(4)), np.arange(80))


def test_gt_matches_on_a_rendered_pair_agree_with_the_exact_depth():
    pair = render_pair(width=80, height=64, seed=3, translation=(0.15, 0.0, 0.05), yaw_deg=6.0)
    T_ref_from_query = inverse_T(pair.T_query_from_ref)
    gt = M.gt_coarse_matches(pair.query.frame.depth, pair.reference.frame.depth, pair.query.frame.K, pair.reference.frame.K,
                             T_ref_from_query)
    valid = gt >= 0
    assert valid.mean() > 0.5
    # the reverse direction maps the matched reference cells back to (near) the query cells
    back = M.gt_coarse_matches(pair.reference.frame.depth, pair.query.frame.depth, pair.reference.frame.K, pair.query.frame.K,
                               pair.T_query_from_ref)
    cells = np.flatnonzero(valid)
    ok = back[gt[cells]] >= 0
    round_trip = back[gt[cells]][ok]
    assert ok.mean() > 0.8
    assert np.mean((np.abs(round_trip // 10 - cells[ok] // 10) <= 1) & (np.abs(round_trip % 10 - cells[ok] % 10) <= 1)) > 0.95


def test_dual_softmax_loss_and_accuracy():
    gt = torch.tensor([[2, 0, -1, 1]])
    perfect_r = torch.eye(4)[None] * 40.0                  # reference tokens: one-hot per cell
    perfect_q = perfect_r[:, [2, 0, 3, 1]]                 # query cell i looks like reference cell gt(i)
    assert M.match_accuracy(perfect_q, perfect_r, gt, w_r=4) == (3, 3)
    assert float(M.dual_softmax_nll(perfect_q, perfect_r, gt)) < 1e-3
    assert float(M.dual_softmax_nll(perfect_q, perfect_r[:, [1, 2, 3, 0]], gt)) > 1.0
    assert float(M.dual_softmax_nll(perfect_q, perfect_r, torch.full((1, 4), -1))) == 0.0


def test_a_few_matching_steps_lower_the_loss():
    torch.manual_seed(0)
    pair = render_pair(width=48, height=40, seed=1, translation=(0.1, 0.0, 0.0), yaw_deg=4.0)
    gt = torch.from_numpy(M.gt_coarse_matches(pair.query.frame.depth, pair.reference.frame.depth, pair.query.frame.K,
                                              pair.reference.frame.K, inverse_T(pair.T_query_from_ref)))[None]
    gray = [torch.from_numpy(f.frame.rgb.mean(axis=2) / 255.0).float()[None, None] for f in (pair.query, pair.reference)]
    loftr = LoFTRCoarse(seed=0).train()
    opt = torch.optim.Adam(loftr.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        fq, fr = loftr.extract(torch.cat(gray)).chunk(2)
        loss = M.dual_softmax_nll(*loftr.attend(fq, fr), gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_matching_stage_writes_loftr_weights_the_model_loads(tmp_path):
    seq = SyntheticSequence(num_frames=5, width=64, height=48, seed=2)
    cfg = train_config({
        'out_dir': str(tmp_path), 'model': {'image_size': [48, 64]},
        'data': {'train': [{'dataset': 'synthetic:m'}], 'val': []},
        'pretrain_matching': {'steps': 2, 'batch_size': 2, 'min_gap': 1, 'max_gap': 2, 'eval_every': 1,
                              'eval_pairs': 2, 'augment': False,
                              'warmup_steps': 1, 'warmup_size': [24, 32]},
    })
    summary = M.pretrain_matching(cfg, {'synthetic:m': seq})
    assert summary['steps'] == {'warmup': 1, 'main': 2} and 0.0 <= summary['after']['accuracy'] <= 1.0
    loaded = LoFTRCoarse(weights=summary['weights'])           # the same key format model.loftr_weights reads
    saved = torch.load(summary['weights'], weights_only=False)['state_dict']
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    assert not torch.equal(loaded.state_dict()['loftr_coarse.layers.0.q_proj.weight'],
                           LoFTRCoarse(seed=0).state_dict()['loftr_coarse.layers.0.q_proj.weight'])
    with pytest.raises(ConfigError, match='pretrain_matching'):
        train_config({'pretrain_matching': {'min_gap': 3, 'max_gap': 1}})
    with pytest.raises(ConfigError, match='warmup_size'):
        train_config({'pretrain_matching': {'warmup_steps': 5, 'warmup_size': [24]}})


def test_relpose_train_stage_matching_cli(tmp_path):
    import json

    import yaml

    from relpose_ros.cli import main
    cfg = {'out_dir': str(tmp_path / 'run'), 'model': {'image_size': [48, 64]},
           'data': {'train': [{'dataset': 'synthetic:5', 'frames': [0, 5]}], 'val': []},
           'pretrain_matching': {'steps': 1, 'batch_size': 1, 'min_gap': 1, 'max_gap': 1, 'eval_pairs': 1}}
    path = tmp_path / 'cfg.yaml'
    path.write_text(yaml.safe_dump(cfg))
    assert main(['train', '--config', str(path), '--stage', 'matching']) == 0
    summary = json.loads((tmp_path / 'run' / 'matching_summary.json').read_text())
    assert summary['steps'] == {'main': 1} and (tmp_path / 'run' / 'loftr_matching.pth').is_file()
    assert not (tmp_path / 'run' / 'checkpoints').exists()          # the head stage did not run
    assert main(['train', '--config', str(path), '--stage', 'matching', '--set', 'pretrain_matching.steps=0']) == 2
