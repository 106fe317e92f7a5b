"""rgbd backend: exact synthetic pairs, real 7-Scenes pairs, and every bad input (failure, never raise / NaN)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from relpose_ros.backends import create
from relpose_ros.backends.rgbd import RGBDEstimator, sample_triplets_gumbel
from relpose_ros.backends.rgbd_pose import soft_inlier_confidence
from relpose_ros.errors import ConfigError, FrameError
from relpose_ros.geometry import camera_centre_error, rotation_error_deg
from relpose_ros.types import Frame, PoseEstimate


@pytest.fixture(scope='module')
def pair():
    from relpose_ros.data.synthetic import render_pair

    return render_pair(width=320, height=240, seed=3, translation=(0.25, 0.05, 0.15), yaw_deg=12.0, pitch_deg=4.0)


@pytest.fixture(scope='module')
def estimator() -> RGBDEstimator:
    return create('rgbd', device='cpu')


def errors(est: PoseEstimate, T: np.ndarray) -> tuple[float, float]:
    return rotation_error_deg(est.R, T[:3, :3]), camera_centre_error(est.R, est.t, T[:3, :3], T[:3, 3])


def without_depth(f: Frame) -> Frame:
    return Frame(rgb=f.rgb, K=f.K, depth=None, stamp_ns=f.stamp_ns, frame_id=f.frame_id)


def assert_clean_failure(est: PoseEstimate, *words: str) -> None:
    assert not est.ok
    assert est.confidence == 0.0
    assert np.all(np.isfinite(est.R)) and np.all(np.isfinite(est.t))
    assert any(w in est.reason for w in words), est.reason


def test_synthetic_pair_3d3d_is_exact(pair, estimator):
    ref = estimator.prepare_reference(pair.reference.frame)
    est = estimator.estimate(ref, pair.query.frame)
    rot, centre = errors(est, pair.T_query_from_ref)
    assert est.ok, est.reason
    assert rot < 0.2 and centre < 0.005, (rot, centre)
    assert est.num_inliers >= 100 and 0.7 < est.confidence <= 1.0
    assert {'extract', 'match', 'ransac'} <= set(est.timings)


def test_synthetic_sequence_with_kinect_like_noise(estimator):
    """Depth noise std 1.2 mm + 1.9 mm (z - 0.4)^2, pixel noise 2 grey levels: still sub-cm, sub-0.2 deg."""
    from relpose_ros.data.synthetic import SyntheticSequence

    seq = SyntheticSequence(num_frames=25, width=320, height=240, seed=2, depth_noise=1.0, rgb_noise=2.0, max_depth=6.0)
    ref = estimator.prepare_reference(seq[0].frame)
    for i in (8, 16):
        est = estimator.estimate(ref, seq[i].frame)
        rot, centre = errors(est, seq.gt_relative_pose(0, i))
        assert est.ok and est.reason == '3d-3d', est.reason
        assert rot < 0.2 and centre < 0.01, (i, rot, centre)
        assert est.confidence > 0.5


def test_synthetic_pair_pnp_with_reference_depth_only(pair, estimator):
    est = estimator.estimate_pair(pair.reference.frame, without_depth(pair.query.frame))
    rot, centre = errors(est, pair.T_query_from_ref)
    assert est.ok and est.reason == 'pnp', est.reason
    assert rot < 0.3 and centre < 0.01, (rot, centre)


def test_invalid_query_depth_falls_back_to_pnp(pair, estimator):
    q = pair.query.frame
    nan_depth = np.full_like(q.depth, np.nan)
    est = estimator.estimate_pair(pair.reference.frame, Frame(q.rgb, q.K, nan_depth, q.stamp_ns, q.frame_id))
    assert est.ok and est.reason == 'pnp', est.reason
    assert errors(est, pair.T_query_from_ref)[1] < 0.01


def test_identical_frames_give_identity_with_high_confidence(pair, estimator):
    f = pair.reference.frame
    est = estimator.estimate_pair(f, f)
    assert est.ok
    assert rotation_error_deg(est.R, np.eye(3)) < 0.01 and np.linalg.norm(est.t) < 1e-3
    assert est.confidence > 0.9


def test_reference_without_depth_is_a_clear_error(pair, estimator):
    with pytest.raises(FrameError, match='depth on the reference'):
        estimator.prepare_reference(without_depth(pair.reference.frame))


def test_textureless_query(pair, estimator):
    q = pair.query.frame
    grey = np.full_like(q.rgb, 128)
    est = estimator.estimate_pair(pair.reference.frame, Frame(grey, q.K, q.depth))
    assert_clean_failure(est, 'textureless query')


def test_textureless_reference(pair, estimator):
    r = pair.reference.frame
    est = estimator.estimate_pair(Frame(np.full_like(r.rgb, 90), r.K, r.depth), pair.query.frame)
    assert_clean_failure(est, 'textureless reference')


def test_too_few_matches(pair, estimator):
    """Keypoints exist (identical blobs on grey), but none is distinctive enough to match."""
    q = pair.query.frame
    img = np.full_like(q.rgb, 100)
    rng = np.random.default_rng(0)
    for x, y in rng.integers(10, [310, 230], size=(80, 2)):
        cv2.circle(img, (int(x), int(y)), 3, (220, 220, 220), -1)
    est = estimator.estimate_pair(pair.reference.frame, Frame(img, q.K, q.depth))
    assert_clean_failure(est, 'too few matches')


def test_no_valid_depth_at_matches(pair, estimator):
    r = pair.reference.frame
    ref = Frame(r.rgb, r.K, np.full_like(r.depth, np.nan))
    est = estimator.estimate_pair(ref, pair.query.frame)
    assert_clean_failure(est, 'no valid depth')


def test_no_overlap(estimator):
    from relpose_ros.data.synthetic import render_pair

    p = render_pair(width=320, height=240, seed=3, translation=(0.0, 0.0, 0.0), yaw_deg=180.0, pitch_deg=0.0)
    est = estimator.estimate_pair(p.reference.frame, p.query.frame)
    assert_clean_failure(est, 'too few matches', 'too few inliers')


def test_random_noise_query_never_raises(pair, estimator):
    q = pair.query.frame
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, q.rgb.shape, dtype=np.uint8)
    est = estimator.estimate_pair(pair.reference.frame, Frame(noise, q.K, q.depth))
    assert_clean_failure(est, 'too few matches', 'too few inliers')


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown extractor 'surf'"):
        create('rgbd', {'extractor': 'surf'}, device='cpu')
    with pytest.raises(ConfigError, match="unknown parameter 'ratio_test'"):
        create('rgbd', {'ratio_test': 0.8}, device='cpu')
    with pytest.raises(ConfigError, match="cannot match 'opencv_sift'"):
        create('rgbd', {'extractor': 'opencv_sift', 'matcher': 'lightglue'}, device='cpu')


def test_confidence_formula():
    assert soft_inlier_confidence(0.0, 100, 30.0) == 0.0
    assert soft_inlier_confidence(5.0, 0, 30.0) == 0.0
    assert soft_inlier_confidence(float('nan'), 10, 30.0) == 0.0
    hi = soft_inlier_confidence(500.0, 500, 30.0)
    assert 0.99 < hi <= 1.0
    # same ratio, less support -> lower; same support, lower ratio -> lower
    assert soft_inlier_confidence(10.0, 10, 30.0) < hi
    assert soft_inlier_confidence(250.0, 500, 30.0) < hi


def test_gumbel_triplets_are_distinct_and_follow_weights():
    import torch

    w = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1e-9])
    g = torch.Generator().manual_seed(0)
    tri = sample_triplets_gumbel(w, 2000, g)[0]
    assert tri.shape == (2000, 3)
    assert all(len(set(t)) == 3 for t in tri.tolist())
    assert not bool((tri >= 4).any())        # (almost) zero-weight points are never drawn
    counts = torch.bincount(tri.flatten(), minlength=6)[:4].float()
    assert float(counts.std() / counts.mean()) < 0.1


@pytest.mark.data
@pytest.mark.parametrize('ref_index, gap', [(0, 30), (480, 60)])
def test_real_7scenes_pairs(seven_scenes, estimator, ref_index, gap):
    from relpose_ros.bench.rgbd import KINECT_COLOUR_FOCAL, RegisteredSequence
    from relpose_ros.data.seven_scenes import SevenScenesSequence

    base = SevenScenesSequence(seven_scenes)
    K = base.K.copy()
    K[0, 0] = K[1, 1] = KINECT_COLOUR_FOCAL
    seq = RegisteredSequence(base, K)
    est = estimator.estimate_pair(seq[ref_index].frame, seq[ref_index + gap].frame)
    rot, centre = errors(est, seq.gt_relative_pose(ref_index, ref_index + gap))
    assert est.ok, est.reason
    assert rot < 3.0 and centre < 0.10, (rot, centre)
    assert est.confidence > 0.1


def test_node_config_section_mirrors_default_config():
    import yaml

    from relpose_ros.ros.params import flatten

    path = __import__('pathlib').Path(__file__).resolve().parents[1] / 'config' / 'relocalize.yaml'
    section = yaml.safe_load(path.read_text())['relocalize_node']['ros__parameters']['rgbd']
    assert flatten(section) == flatten(RGBDEstimator.default_config)


@pytest.mark.data
def test_bench_command_prints_table_and_writes_json(seven_scenes, tmp_path, capsys):
    import json

    from relpose_ros.cli import main

    out = tmp_path / 'bench.json'
    rc = main(['bench', 'rgbd', '--data', str(seven_scenes), '--gaps', '30', '--stride', '480', '--json', str(out)])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    assert 'centre cm' in printed and 'baseline' in printed
    result = json.loads(out.read_text())
    (row,) = result['rows']
    assert row['gap'] == 30 and row['pairs'] == 3          # i = 0, 480, 960
    assert 0.0 <= row['within_25cm_5deg'] <= 1.0 and row['median_seconds'] > 0
    assert result['colour_focal'] == 525.0 and result['backend']['backend'] == 'rgbd'


def test_depth_in_millimetres_is_named_in_the_reason(pair, estimator):
    r = pair.reference.frame
    est = estimator.estimate_pair(Frame(r.rgb, r.K, r.depth * 1000.0), pair.query.frame)
    assert_clean_failure(est, 'no valid depth')
    assert 'metres' in est.reason


def test_query_of_another_size_and_intrinsics(pair, estimator):
    """A half-resolution live camera against a full-resolution reference (K scaled accordingly)."""
    from relpose_ros.geometry import scale_intrinsics

    q = pair.query.frame
    rgb = cv2.resize(q.rgb, (160, 120), interpolation=cv2.INTER_AREA)
    depth = cv2.resize(q.depth, (160, 120), interpolation=cv2.INTER_NEAREST)
    K = scale_intrinsics(q.K, 0.5)
    K[0, 2], K[1, 2] = (q.K[0, 2] + 0.5) * 0.5 - 0.5, (q.K[1, 2] + 0.5) * 0.5 - 0.5   # pixel-centre convention
    est = estimator.estimate_pair(pair.reference.frame, Frame(rgb, K, depth))
    rot, centre = errors(est, pair.T_query_from_ref)
    assert est.ok, est.reason
    assert rot < 0.5 and centre < 0.02, (rot, centre)
