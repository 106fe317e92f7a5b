"""Regression model: shapes (any size, portrait and landscape), gradients, matching, loss, pose convention."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relpose_ros.geometry import make_T, quat_to_matrix
from relpose_ros.models.regression import RegressionModel, T_to_targets, pose_loss, pose_to_T_query_from_ref
from relpose_ros.models.regression.matching import hard_match_and_warp, match_confidence, normalised_grid

SMALL = {'image_size': [32, 48], 'head_channels': [32, 16], 'mlp_hidden': 16}


@pytest.fixture(scope='module')
def model() -> RegressionModel:
    torch.manual_seed(0)
    return RegressionModel(SMALL)


@pytest.mark.parametrize('hw', [(32, 48), (48, 32), (40, 40), (35, 61)])
def test_output_shapes_any_size(model, hw):
    model.eval()
    out = model(torch.rand(2, 1, *hw), torch.rand(2, 1, *hw))
    assert out['quat'].shape == (2, 4) and out['dir'].shape == (2, 3) and out['scale'].shape == (2,)
    assert torch.allclose(out['quat'].norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out['dir'].norm(dim=1), torch.ones(2), atol=1e-5)
    assert bool((out['scale'] > 0).all())
    assert bool(((out['confidence'] >= 0) & (out['confidence'] <= 1)).all())


def test_query_and_reference_may_differ_in_size(model):
    model.eval()
    out = model(torch.rand(1, 1, 32, 48), torch.rand(1, 1, 48, 32))
    assert torch.isfinite(out['quat']).all()


def test_correspondence_map_layout():
    tok_a, tok_b = torch.randn(2, 12, 8), torch.randn(2, 20, 8)
    cmap, stats = hard_match_and_warp(tok_a, tok_b, (3, 4), (4, 5))
    assert cmap.shape == (2, 2 * 8 + 5, 3, 4)
    assert cmap[:, 18:20].abs().max() <= 1.0 and cmap[:, 8:10].abs().max() <= 1.0   # normalised positions
    assert stats['mutual'].shape == (2, 12) and stats['softmax_conf'].shape == (2, 12)


def test_hard_matching_recovers_a_permutation():
    h, w, c = 3, 5, 16
    tok_b = torch.nn.functional.normalize(torch.randn(1, h * w, c), dim=2) * 10
    perm = torch.randperm(h * w)
    tok_a = tok_b[:, perm]                                   # cell i of A is cell perm[i] of B
    cmap, stats = hard_match_and_warp(tok_a, tok_b, (h, w), (h, w))
    warped_pos = cmap[0, 2 * c + 2:2 * c + 4].reshape(2, -1).T
    assert torch.allclose(warped_pos, normalised_grid(h, w)[perm])
    assert torch.allclose(cmap[0, c + 2:2 * c + 2].reshape(c, -1).T, tok_b[0, perm])
    assert bool(stats['mutual'].all())
    assert float(match_confidence(stats, 'mutual')) == 1.0
    assert 0 < float(match_confidence(stats, 'softmax')) <= 1.0


def test_gradients_reach_the_head_only_when_loftr_frozen(model):
    model.train()
    out = model(torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48))
    pose_loss(out['quat'], out['dir'], out['scale'], torch.tensor([[1.0, 0, 0, 0]] * 2),
              torch.tensor([[0.1, 0.0, 0.2]] * 2))['loss'].backward()
    head_grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in head_grads)
    assert any(float(g.abs().sum()) > 0 for g in head_grads)
    assert all(p.grad is None for p in model.loftr.parameters())
    model.zero_grad()


def test_unfrozen_transformer_gets_gradients_backbone_does_not():
    m = RegressionModel({**SMALL, 'unfreeze_loftr': 'transformer'}).train()
    out = m(torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48))
    (out['quat'].sum() + out['scale'].sum()).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in m.loftr.loftr_coarse.parameters())
    assert all(p.grad is None for p in m.loftr.backbone.parameters())
    assert not m.loftr.backbone.training          # frozen BatchNorm statistics stay frozen


def test_loss_is_zero_for_a_perfect_prediction():
    q = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1, -0.3, 0.2]]), dim=1)
    t = torch.tensor([[0.3, -0.1, 0.5]])
    terms = pose_loss(q, t / t.norm(), t.norm(dim=1), q, t)
    assert float(terms['loss']) == pytest.approx(0.0, abs=1e-6)


def test_quaternion_sign_flip_costs_nothing():
    q = torch.nn.functional.normalize(torch.tensor([[0.2, 0.5, -0.3, 0.7]]), dim=1)
    t = torch.tensor([[0.0, 0.0, 1.0]])
    same = pose_loss(-q, t, torch.tensor([1.0]), q, t)
    assert float(same['rot']) == pytest.approx(0.0, abs=1e-6)


def test_loss_terms_on_hand_made_errors():
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    t_gt = torch.tensor([[2.0, 0.0, 0.0]])
    terms = pose_loss(q, torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.5]), q, t_gt)
    assert float(terms['dir']) == pytest.approx(1.0)       # orthogonal direction: 1 - cos = 1
    assert float(terms['scale']) == pytest.approx(1.5)     # |0.5 - 2|
    assert float(terms['loss']) == pytest.approx(2.5)
    q90 = torch.tensor([[np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0]], dtype=torch.float32)
    rot = pose_loss(q90, torch.tensor([[1.0, 0, 0]]), torch.tensor([2.0]), q, t_gt)['rot']
    assert float(rot) == pytest.approx(float((q90 - q).norm()), rel=1e-5)


def test_targets_and_output_conversion_round_trip():
    rng = np.random.default_rng(3)
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    T = make_T(quat_to_matrix(q), rng.normal(size=3))         # T_query_from_ref
    quat, centre = T_to_targets(T)
    assert quat[0] >= 0
    # the target centre is the query camera centre in the reference frame
    assert np.allclose(centre, -T[:3, :3].T @ T[:3, 3])
    R, t = pose_to_T_query_from_ref(quat, centre / np.linalg.norm(centre), np.linalg.norm(centre))
    assert np.allclose(R, T[:3, :3], atol=1e-9) and np.allclose(t, T[:3, 3], atol=1e-9)


def test_centre_term_is_the_camera_centre_error_and_off_in_the_paper_loss():
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    t_gt = torch.tensor([[1.0, 0.0, 0.0]])
    d, s = torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.5])
    paper = pose_loss(q, d, s, q, t_gt)
    assert float(paper['centre']) == pytest.approx(np.sqrt(1.25))      # |(0, 0.5, 0) - (1, 0, 0)|
    assert float(paper['loss']) == pytest.approx(1.0 + 0.5)            # rot 0 + dir 1 + scale 0.5, no centre
    both = pose_loss(q, d, s, q, t_gt, weights={'centre': 2.0, 'scale': 0.0})
    assert float(both['loss']) == pytest.approx(1.0 + 2.0 * np.sqrt(1.25))
    # a shorter prediction in a wrong direction costs less centre error: the term pulls towards the reference
    shorter = pose_loss(q, d, torch.tensor([0.1]), q, t_gt)
    assert float(shorter['centre']) < float(paper['centre'])


def test_head_dropout_is_training_only_and_adds_no_weights():
    torch.manual_seed(0)
    plain, dropped = RegressionModel(SMALL), RegressionModel({**SMALL, 'head_dropout': 0.5})
    assert set(plain.state_dict()) == set(dropped.state_dict())      # checkpoints stay interchangeable
    dropped.load_state_dict(plain.state_dict())
    g = torch.rand(2, 1, 32, 48)
    plain.eval(), dropped.eval()
    with torch.no_grad():
        assert torch.allclose(plain(g, g)['scale'], dropped(g, g)['scale'])       # inference: no dropout
        dropped.head.train()
        a, b = dropped(g, g)['scale'], dropped(g, g)['scale']
    assert not torch.allclose(a, b)                                            # training: random masks


def test_subcell_positions_refine_the_hard_match():
    from relpose_ros.models.regression.matching import subcell_positions
    h, w = 3, 4
    grid = normalised_grid(h, w)
    prob = torch.zeros(1, 3, h * w)
    prob[0, 0, 5] = 1.0                          # peaked: exactly the matched cell (row 1, col 1)
    prob[0, 1, 5], prob[0, 1, 6] = 0.5, 0.5      # split between two neighbours: half-way
    prob[0, 2, 0], prob[0, 2, 11] = 0.6, 0.4     # the far cell (not a 3x3 neighbour) is ignored
    match = torch.tensor([[5, 5, 0]])
    pos = subcell_positions(prob, match, h, w, grid)[0]
    assert torch.allclose(pos[0], grid[5])
    assert torch.allclose(pos[1], (grid[5] + grid[6]) / 2)
    assert torch.allclose(pos[2], grid[0])       # corner cell: out-of-map neighbours left out
    # through the model: the map's warped-position channels change, the rest does not
    tok_a, tok_b = torch.randn(1, 6, 8), torch.randn(1, 12, 8)
    hard, _ = hard_match_and_warp(tok_a, tok_b, (2, 3), (h, w), temperature=1.0)
    soft, _ = hard_match_and_warp(tok_a, tok_b, (2, 3), (h, w), temperature=1.0, subcell=True)
    c = 8
    keep = [i for i in range(2 * c + 5) if i not in (2 * c + 2, 2 * c + 3)]
    assert torch.equal(hard[:, keep], soft[:, keep]) and not torch.allclose(hard, soft)


def test_geometry_only_head_ignores_the_features():
    torch.manual_seed(0)
    m = RegressionModel({**SMALL, 'appearance_channels': False}).eval()
    c = m.loftr.dim
    cmap = torch.randn(2, 2 * c + 5, 4, 6)
    other = cmap.clone()
    other[:, :c] = torch.randn(2, c, 4, 6)                      # other query features
    other[:, c + 2:2 * c + 2] = torch.randn(2, c, 4, 6)         # other warped reference features
    with torch.no_grad():
        a, b = m.head(m.head_input(cmap)), m.head(m.head_input(other))
        assert torch.equal(a['dir'], b['dir']) and torch.equal(a['scale'], b['scale'])
        moved = cmap.clone()
        moved[:, 2 * c + 2:2 * c + 4] += 0.3                    # other warped positions: another pose
        assert not torch.allclose(m.head(m.head_input(moved))['dir'], a['dir'])
    full = RegressionModel(SMALL).eval()
    assert torch.equal(full.head_input(cmap), cmap)            # the paper's map is untouched by default
