"""TUM RGB-D and Map-free readers on folders the tests write themselves (from a synthetic scene),
plus open_dataset dispatch, wrong-layout errors and 7-Scenes when present."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from relpose_ros.backends import create
from relpose_ros.data.datasets import open_dataset, parse_options
from relpose_ros.data.synthetic import SyntheticSequence
from relpose_ros.errors import ConfigError, DatasetError
from relpose_ros.eval.offline import evaluate_offline
from relpose_ros.eval.protocols import build_pairs
from relpose_ros.geometry import inverse_T, matrix_to_quat


@pytest.fixture(scope='module')
def synth():
    seq = SyntheticSequence(num_frames=7, width=64, height=48, seed=3)
    return [seq[i] for i in range(len(seq))]


def write_tum(root, frames, drop_gt=(), drop_depth=(), intrinsics=True, depth=True):
    (root / 'rgb').mkdir(parents=True)
    (root / 'depth').mkdir()
    rgb_lines, depth_lines, gt_lines = ['# color images'], ['# depth maps'], ['# timestamp tx ty tz qx qy qz qw']
    for i, pf in enumerate(frames):
        t = 1305031102.0 + i / 30
        cv2.imwrite(str(root / f'rgb/{t:.6f}.png'), cv2.cvtColor(pf.frame.rgb, cv2.COLOR_RGB2BGR))
        rgb_lines.append(f'{t:.6f} rgb/{t:.6f}.png')
        if i not in drop_depth:
            td = t + 0.004  # depth stamped slightly later, as in TUM
            d = np.nan_to_num(pf.frame.depth * 5000).round().astype(np.uint16)
            cv2.imwrite(str(root / f'depth/{td:.6f}.png'), d)
            depth_lines.append(f'{td:.6f} depth/{td:.6f}.png')
        if i not in drop_gt:
            q = matrix_to_quat(pf.T_world_from_cam[:3, :3])
            x, y, z = pf.T_world_from_cam[:3, 3]
            gt_lines.append(f'{t - 0.003:.6f} {x} {y} {z} {q[1]} {q[2]} {q[3]} {q[0]}')
    (root / 'rgb.txt').write_text('\n'.join(rgb_lines) + '\n')
    if depth:
        (root / 'depth.txt').write_text('\n'.join(depth_lines) + '\n')
    (root / 'groundtruth.txt').write_text('\n'.join(gt_lines) + '\n')
    if intrinsics:
        K = frames[0].frame.K
        (root / 'intrinsics.txt').write_text(f'{K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n')


def test_tum_reader_associates_and_reads_back(tmp_path, synth):
    write_tum(tmp_path / 'seq', synth, drop_gt=(2,), drop_depth=(4,))
    seq = open_dataset(f'tum:{tmp_path / "seq"}')
    assert len(seq) == 6 and seq.skipped_no_depth == 1 and seq.frames_without_gt == 1
    for j, i in enumerate([0, 1, 2, 3, 5, 6]):
        pf, ref = seq[j], synth[i]
        assert np.array_equal(pf.frame.rgb, ref.frame.rgb)
        np.testing.assert_allclose(pf.frame.K, ref.frame.K)
        np.testing.assert_allclose(pf.frame.depth, ref.frame.depth, atol=1.1e-4, equal_nan=True)
        if i == 2:
            assert not pf.has_pose
        else:
            np.testing.assert_allclose(pf.T_world_from_cam, ref.T_world_from_cam, atol=1e-9)
    assert seq.gt_relative_pose(0, 2) is None


def test_tum_monocular_and_presets(tmp_path, synth):
    root = tmp_path / 'rgbd_dataset_freiburg2_xyz'
    write_tum(root, synth, intrinsics=False, depth=False)
    seq = open_dataset(f'tum:{root}')
    assert len(seq) == 7 and seq[0].frame.depth is None
    assert seq.K[0, 0] == pytest.approx(520.9)                  # inferred from 'freiburg2'
    assert open_dataset(f'tum:{root}', camera='fr3').K[0, 0] == pytest.approx(535.4)
    with pytest.raises(ConfigError, match='fr1'):
        open_dataset(f'tum:{root}', camera='kinect9')
    plain = tmp_path / 'plain'
    write_tum(plain, synth, intrinsics=False)
    with pytest.raises(DatasetError, match='intrinsics.txt'):
        open_dataset(f'tum:{plain}')


def write_mapfree(root, frames, test_split=False):
    (root / 'seq0').mkdir(parents=True)
    (root / 'seq1').mkdir()
    T_ref = frames[0].T_world_from_cam
    intr, poses = [], []
    for i, pf in enumerate(frames):
        rel = 'seq0/frame_00000.jpg' if i == 0 else f'seq1/frame_{i - 1:05d}.jpg'
        cv2.imwrite(str(root / rel).replace('.jpg', '.png'), cv2.cvtColor(pf.frame.rgb, cv2.COLOR_RGB2BGR))
        (root / rel.replace('.jpg', '.png')).rename(root / rel)  # lossless content under the .jpg name
        K = pf.frame.K
        intr.append(f'{rel} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]} {pf.frame.width} {pf.frame.height}')
        T_cw = inverse_T(pf.T_world_from_cam) @ T_ref  # world = reference camera
        q = matrix_to_quat(T_cw[:3, :3])
        if i == 0 or not test_split:
            poses.append(f'{rel} ' + ' '.join(str(v) for v in [*q, *T_cw[:3, 3]]))
    (root / 'intrinsics.txt').write_text('\n'.join(intr) + '\n')
    (root / 'poses.txt').write_text('\n'.join(poses) + '\n')


def test_mapfree_reader_and_protocol(tmp_path, synth):
    root = tmp_path / 's00460'
    write_mapfree(root, synth)
    seq = open_dataset(f'mapfree:{root}')
    assert len(seq) == 7 and seq.frames[0] == 'seq0/frame_00000.jpg'
    np.testing.assert_allclose(seq[0].T_world_from_cam, np.eye(4), atol=1e-12)
    for i in range(7):
        assert np.array_equal(seq[i].frame.rgb, synth[i].frame.rgb)
        expected = inverse_T(synth[i].T_world_from_cam) @ synth[0].T_world_from_cam
        np.testing.assert_allclose(seq.gt_relative_pose(0, i), expected, atol=1e-9)
    pairs = build_pairs('mapfree', seq)
    assert [(p.reference, p.query, p.gap) for p in pairs] == [(0, 1, 0), (0, 6, 5)]  # seq1 0 and 5
    test_root = tmp_path / 's00999'
    write_mapfree(test_root, synth, test_split=True)
    assert open_dataset(f'mapfree:{test_root}').frames_without_gt == 6


def test_wrong_layout_errors_name_expected_layout(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError, match='TUM RGB-D layout.*missing: rgb.txt, groundtruth.txt'):
        open_dataset(f'tum:{tmp_path / "empty"}')
    with pytest.raises(DatasetError, match='Map-free layout.*missing: intrinsics.txt, seq0, seq1'):
        open_dataset(f'mapfree:{tmp_path / "empty"}')
    with pytest.raises(DatasetError, match='7-Scenes layout'):
        open_dataset(f'7scenes:{tmp_path / "empty"}')
    with pytest.raises(DatasetError, match='does not exist'):
        open_dataset(f'tum:{tmp_path / "nope"}')
    with pytest.raises(ConfigError, match='FORMAT:PATH'):
        open_dataset('just/a/path')
    with pytest.raises(ConfigError, match='unknown dataset format'):
        open_dataset('kitti:/x')
    assert parse_options(['a=1', 'b=0.5', 'c=true', 'd=/topic']) == {'a': 1, 'b': 0.5, 'c': True, 'd': '/topic'}


def test_synthetic_spec():
    seq = open_dataset('synthetic:4', width=32, height=24)
    assert len(seq) == 4 and seq[0].frame.rgb.shape == (24, 32, 3) and seq[0].has_pose
    assert seq.frames_without_gt == 0
    lost = SyntheticSequence(num_frames=3, width=16, height=16, poses=np.stack([np.eye(4), np.full((4, 4), np.nan),
                                                                                 np.eye(4)]))
    assert lost.frames_without_gt == 1


def write_seven_scenes(root, frames, inf_pose=(), no_pose=()):
    """7-Scenes layout: colour PNG, depth PNG (uint16 mm), pose.txt (inf rows where tracking was lost)."""
    root.mkdir(parents=True)
    for i, pf in enumerate(frames):
        stem = root / f'frame-{i:06d}'
        cv2.imwrite(f'{stem}.color.png', cv2.cvtColor(pf.frame.rgb, cv2.COLOR_RGB2BGR))
        cv2.imwrite(f'{stem}.depth.png', np.nan_to_num(pf.frame.depth * 1000).round().astype(np.uint16))
        if i not in no_pose:
            T = np.full((4, 4), np.inf) if i in inf_pose else pf.T_world_from_cam
            np.savetxt(f'{stem}.pose.txt', T)
    K = frames[0].frame.K
    np.savetxt(root / 'camera-intrinsics.txt', K)


def test_seven_scenes_counts_frames_without_ground_truth(tmp_path, synth):
    write_seven_scenes(tmp_path / 'seq', synth[:5], inf_pose=(1,), no_pose=(3,))
    seq = open_dataset(f'7scenes:{tmp_path / "seq"}')
    assert len(seq) == 5 and seq.frames_without_gt == 2
    assert [seq[i].has_pose for i in range(5)] == [True, False, True, False, True]
    np.testing.assert_allclose(seq[2].T_world_from_cam, synth[2].T_world_from_cam, atol=1e-6)
    registered = open_dataset(f'7scenes:{tmp_path / "seq"}', colour_focal=45)   # RegisteredSequence over it
    assert registered.frames_without_gt == 2 and not hasattr(registered, 'skipped_no_depth')
    result = evaluate_offline(create('constant', device='cpu'), registered, build_pairs('fixed', registered),
                              progress=False)
    assert result.meta['frames_without_gt'] == 2 and sum(not p.has_gt for p in result.pairs) == 2


@pytest.mark.data
def test_seven_scenes_through_open_dataset(seven_scenes):
    seq = open_dataset(f'7scenes:{seven_scenes}')
    assert len(seq) == 1000 and seq.frames_without_gt == 0
    pf = seq[30]
    assert pf.frame.rgb.shape == (480, 640, 3) and pf.frame.depth.shape == (480, 640) and pf.has_pose
    T = seq.gt_relative_pose(0, 30)
    assert 0.01 < np.linalg.norm(T[:3, 3]) < 2.0


@pytest.mark.data
def test_seven_scenes_colour_focal_option(seven_scenes):
    seq = open_dataset(f'7scenes:{seven_scenes}', colour_focal=525)
    pf = seq[10]
    assert pf.frame.K[0, 0] == 525 and pf.frame.K[1, 1] == 525 and pf.frame.depth.shape == (480, 640)
    assert np.isfinite(pf.frame.depth).mean() > 0.5 and pf.has_pose
