"""ROS 2 bag reader on bags the tests write themselves with rosbags: round trip with the bag writer (MCAP and
SQLite3), compressed images, Odometry / TransformStamped / /tf ground truth, and every bad input."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from relpose_ros.data import bag_writer as bw
from relpose_ros.data.bag_reader import BagSequence
from relpose_ros.data.datasets import open_dataset
from relpose_ros.data.synthetic import SyntheticSequence
from relpose_ros.errors import DatasetError
from relpose_ros.eval.offline import evaluate_offline
from relpose_ros.eval.protocols import build_pairs
from relpose_ros.backends import create

T = bw.TYPESTORE.types


@pytest.fixture(scope='module')
def synth():
    return SyntheticSequence(num_frames=6, width=64, height=48, seed=5)


def assert_same(read, ref, depth_atol):
    assert np.array_equal(read.frame.rgb, ref.frame.rgb)
    np.testing.assert_allclose(read.frame.K, ref.frame.K)
    assert read.frame.stamp_ns == ref.frame.stamp_ns and read.frame.frame_id == ref.frame.frame_id
    np.testing.assert_allclose(read.frame.depth, ref.frame.depth, atol=depth_atol, equal_nan=True)
    np.testing.assert_allclose(read.T_world_from_cam, ref.T_world_from_cam, atol=1e-9)


@pytest.mark.parametrize('storage,encoding,atol', [('mcap', '16UC1', 5.1e-4), ('sqlite3', '32FC1', 0.0)])
def test_round_trip_with_bag_writer(tmp_path, synth, storage, encoding, atol):
    bw.write_bag(synth, tmp_path / 'bag', storage=storage, depth_encoding=encoding)
    seq = open_dataset(f'bag:{tmp_path / "bag"}')
    assert len(seq) == len(synth) and not seq.partial and seq.frames_without_gt == 0
    assert (seq.image_topic, seq.depth_topic, seq.gt_topic) == (bw.TOPIC_IMAGE, bw.TOPIC_DEPTH, bw.TOPIC_GT_POSE)
    for i in range(len(synth)):
        assert_same(seq[i], synth[i], atol)
    via_tf = BagSequence(tmp_path / 'bag', gt_topic='/tf', gt_frame='world')
    np.testing.assert_allclose(via_tf[4].T_world_from_cam, synth[4].T_world_from_cam, atol=1e-9)


def write_custom_bag(path, synth, gt_kind, skip_gt=(), info_width=None):
    """Compressed PNG images on /cam/image/compressed, camera_info, ground truth of ``gt_kind``."""
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        def conn(topic, msgtype):
            return w.add_connection(topic, msgtype, typestore=bw.TYPESTORE)
        c_img = conn('/cam/image/compressed', 'sensor_msgs/msg/CompressedImage')
        c_info = conn('/cam/camera_info', bw.CAMERA_INFO)
        c_gt = conn({'odom': '/mocap/odom', 'tf_stamped': '/mocap/transform', 'tf': '/tf'}[gt_kind],
                    {'odom': 'nav_msgs/msg/Odometry', 'tf_stamped': 'geometry_msgs/msg/TransformStamped',
                     'tf': bw.TF_MESSAGE}[gt_kind])
        for i in range(len(synth)):
            pf = synth[i]
            f, s = pf.frame, pf.frame.stamp_ns
            ok, png = cv2.imencode('.png', cv2.cvtColor(f.rgb, cv2.COLOR_RGB2BGR))
            img = T['sensor_msgs/msg/CompressedImage'](header=bw.header(s, 'cam_optical'), format='png',
                                                       data=png.reshape(-1))
            w.write(c_img, s, bw.TYPESTORE.serialize_cdr(img, 'sensor_msgs/msg/CompressedImage'))
            info = bw.camera_info_message(f.K, info_width or f.width, f.height, s, 'cam_optical')
            w.write(c_info, s, bw.TYPESTORE.serialize_cdr(info, bw.CAMERA_INFO))
            if i in skip_gt:
                continue
            gt_s = s + 3_000_000  # mocap stamped 3 ms later: associated by nearest stamp
            tf = bw.tf_message(pf.T_world_from_cam, gt_s, 'map', 'cam_optical')
            if gt_kind == 'tf':
                msg, mt = tf, bw.TF_MESSAGE
                other = bw.tf_message(np.eye(4), gt_s, 'map', 'base_link')  # an unrelated edge on /tf
                msg = T[bw.TF_MESSAGE](transforms=[other.transforms[0], tf.transforms[0]])
            elif gt_kind == 'tf_stamped':
                msg, mt = tf.transforms[0], 'geometry_msgs/msg/TransformStamped'
            else:
                ps = bw.pose_stamped_message(pf.T_world_from_cam, gt_s, 'map')
                cov = T['geometry_msgs/msg/PoseWithCovariance'](pose=ps.pose, covariance=np.zeros(36))
                twist = T['geometry_msgs/msg/TwistWithCovariance'](
                    twist=T['geometry_msgs/msg/Twist'](linear=T['geometry_msgs/msg/Vector3'](x=0, y=0, z=0),
                                                       angular=T['geometry_msgs/msg/Vector3'](x=0, y=0, z=0)),
                    covariance=np.zeros(36))
                msg, mt = T['nav_msgs/msg/Odometry'](header=ps.header, child_frame_id='cam_optical', pose=cov,
                                                     twist=twist), 'nav_msgs/msg/Odometry'
            w.write(c_gt, gt_s, bw.TYPESTORE.serialize_cdr(msg, mt))


@pytest.mark.parametrize('gt_kind', ['odom', 'tf_stamped', 'tf'])
def test_compressed_images_and_ground_truth_kinds(tmp_path, synth, gt_kind):
    write_custom_bag(tmp_path / 'b', synth, gt_kind, skip_gt=(2,))
    seq = open_dataset(f'bag:{tmp_path / "b"}', gt_frame='map' if gt_kind == 'tf' else None, gt_max_dt=0.01)
    assert seq.depth_topic is None and len(seq) == len(synth)
    assert seq.frames_without_gt == 1 and not seq[2].has_pose
    for i in (0, 1, 3, 5):
        pf = seq[i]
        assert np.array_equal(pf.frame.rgb, synth[i].frame.rgb) and pf.frame.frame_id == 'cam_optical'
        np.testing.assert_allclose(pf.T_world_from_cam, synth[i].T_world_from_cam, atol=1e-9)
    # ground truth 3 ms off the image stamps, tolerance 2 ms: every frame lacks ground truth, counted
    strict = open_dataset(f'bag:{tmp_path / "b"}', gt_frame='map' if gt_kind == 'tf' else None, gt_max_dt=0.002)
    assert strict.frames_without_gt == len(synth) and not strict[0].has_pose


@pytest.mark.parametrize('gt_kind', ['odom', 'tf_stamped'])
def test_child_frame_of_ground_truth_must_be_the_camera_frame(tmp_path, synth, gt_kind):
    write_custom_bag(tmp_path / 'b', synth, gt_kind)
    seq = open_dataset(f'bag:{tmp_path / "b"}', camera_frame='cam_optical', gt_max_dt=0.01)
    assert seq.frames_without_gt == 0
    np.testing.assert_allclose(seq[3].T_world_from_cam, synth[3].T_world_from_cam, atol=1e-9)
    with pytest.raises(DatasetError, match=r'no ground truth on /mocap/\w+ is <any frame> -> base_link '
                                           r'\(gt_frame -> camera_frame\); its messages have: map -> cam_optical'):
        open_dataset(f'bag:{tmp_path / "b"}', camera_frame='base_link')
    with pytest.raises(DatasetError, match=r'is odom -> <any child>.*map -> cam_optical'):
        open_dataset(f'bag:{tmp_path / "b"}', gt_frame='odom')


def write_robot_bag(path, synth, T_base_from_cam, tf_delay_ns=3_000_000, with_static=True):
    """A typical robot bag: raw images, camera_info, ``world -> base_link`` on /tf (plus an unrelated edge),
    ``base_link -> cam_optical`` once on /tf_static (stamped long before the first image)."""
    from relpose_ros.geometry import inverse_T

    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        def conn(topic, msgtype):
            return w.add_connection(topic, msgtype, typestore=bw.TYPESTORE)
        c_img, c_info = conn('/cam/image', bw.IMAGE), conn('/cam/camera_info', bw.CAMERA_INFO)
        c_tf = conn('/tf', bw.TF_MESSAGE)
        s0 = synth[0].frame.stamp_ns
        if with_static:
            c_static = conn('/tf_static', bw.TF_MESSAGE)
            static = bw.tf_message(T_base_from_cam, s0 - 10_000_000_000, 'base_link', 'cam_optical')
            w.write(c_static, s0, bw.TYPESTORE.serialize_cdr(static, bw.TF_MESSAGE))
        for i in range(len(synth)):
            pf = synth[i]
            f, s = pf.frame, pf.frame.stamp_ns
            f.frame_id = 'cam_optical'
            image, info, _ = bw.frame_messages(f, '16UC1', 'raw')
            w.write(c_img, s, bw.TYPESTORE.serialize_cdr(image, bw.IMAGE))
            w.write(c_info, s, bw.TYPESTORE.serialize_cdr(info, bw.CAMERA_INFO))
            T_world_from_base = pf.T_world_from_cam @ inverse_T(T_base_from_cam)
            base = bw.tf_message(T_world_from_base, s + tf_delay_ns, 'world', 'base_link').transforms[0]
            other = bw.tf_message(np.eye(4), s + tf_delay_ns, 'world', 'charger').transforms[0]
            msg = T[bw.TF_MESSAGE](transforms=[other, base])
            w.write(c_tf, s + tf_delay_ns, bw.TYPESTORE.serialize_cdr(msg, bw.TF_MESSAGE))


def test_tf_ground_truth_composes_the_chain_over_tf_and_tf_static(tmp_path, synth):
    from relpose_ros.geometry import make_T, quat_to_matrix

    T_base_from_cam = make_T(quat_to_matrix([0.5, -0.5, 0.5, -0.5]), [0.2, 0.0, 0.5])  # optical frame on a base
    write_robot_bag(tmp_path / 'robot', synth, T_base_from_cam)
    for gt_frame in ('world', None):                          # None: the root of the camera's tree
        seq = open_dataset(f'bag:{tmp_path / "robot"}', gt_frame=gt_frame, gt_max_dt=0.01)
        assert seq.gt_topic == '/tf' and seq.frames_without_gt == 0 and len(seq) == len(synth)
        for i in range(len(synth)):
            np.testing.assert_allclose(seq.pose(i), synth[i].T_world_from_cam, atol=1e-9)
    np.testing.assert_allclose(seq[2].T_world_from_cam, synth[2].T_world_from_cam, atol=1e-9)
    # a static-only chain applies at every stamp; the dynamic edge obeys gt_max_dt (3 ms late, 2 ms allowed)
    on_base = open_dataset(f'bag:{tmp_path / "robot"}', gt_frame='base_link', gt_max_dt=0.002)
    assert on_base.frames_without_gt == 0
    np.testing.assert_allclose(on_base.pose(4), T_base_from_cam, atol=1e-12)
    strict = open_dataset(f'bag:{tmp_path / "robot"}', gt_frame='world', gt_max_dt=0.002)
    assert strict.frames_without_gt == len(synth) and not strict[0].has_pose
    # the chain between two frames below a common ancestor: charger -> base_link -> cam_optical
    via = open_dataset(f'bag:{tmp_path / "robot"}', gt_frame='charger', gt_max_dt=0.01)
    np.testing.assert_allclose(via.pose(1), synth[1].T_world_from_cam, atol=1e-9)   # charger = world here
    with pytest.raises(DatasetError, match=r'no transform map -> cam_optical on /tf and /tf_static.*'
                                           r'Transforms seen: base_link -> cam_optical \(static\), world -> '
                                           r'base_link, world -> charger'):
        open_dataset(f'bag:{tmp_path / "robot"}', gt_frame='map')
    # without /tf_static the camera is not connected to the world: a clear error, not a wrong pose
    write_robot_bag(tmp_path / 'nostatic', synth, T_base_from_cam, with_static=False)
    with pytest.raises(DatasetError, match=r'no transform world -> cam_optical on /tf;'):
        open_dataset(f'bag:{tmp_path / "nostatic"}', gt_frame='world')


def test_tf_tree_rejects_a_frame_with_two_parents():
    from relpose_ros.data.tf_chain import TfTree

    tree = TfTree()
    v, q = T['geometry_msgs/msg/Vector3'](x=0, y=0, z=0), T['geometry_msgs/msg/Quaternion'](x=0, y=0, z=0, w=1)
    tree.add(0, '/world', 'base', v, q)
    tree.add(0, 'odom', 'base', v, q)
    tree.add(0, 'base', 'cam', v, q, static=True)
    with pytest.raises(DatasetError, match=r'several parents for base \(odom, world\)'):
        tree.lookup('world', 'cam', [0], 0.01)
    assert tree.ancestors('cam') == ['cam', 'base', 'world']


def test_missing_topics_list_what_the_bag_has(tmp_path, synth):
    bw.write_bag(synth, tmp_path / 'bag', with_depth=False)
    with pytest.raises(DatasetError, match=r"no image topic '/camera/rgb'; it has: .*/camera/color/camera_info"):
        BagSequence(tmp_path / 'bag', image_topic='/camera/rgb')
    with pytest.raises(DatasetError, match=r"no depth topic '/depth'.*/ground_truth/pose"):
        BagSequence(tmp_path / 'bag', depth_topic='/depth')
    with pytest.raises(DatasetError, match='expected one of'):
        BagSequence(tmp_path / 'bag', gt_topic=bw.TOPIC_CAMERA_INFO)
    with pytest.raises(DatasetError, match=r'no transform map -> camera_color_optical_frame.*world -> camera_color'):
        BagSequence(tmp_path / 'bag', gt_topic='/tf', gt_frame='map')
    with pytest.raises(DatasetError, match='not a ROS 2 bag'):
        BagSequence(tmp_path)
    with pytest.raises(DatasetError, match='does not exist'):
        open_dataset(f'bag:{tmp_path / "nope"}')


def test_camera_info_inconsistent_with_image(tmp_path, synth):
    write_custom_bag(tmp_path / 'b', synth, 'tf_stamped', info_width=80)
    seq = BagSequence(tmp_path / 'b')
    with pytest.raises(DatasetError, match=r'camera_info size 80x48 differs from image size 64x48'):
        seq[0]


def test_truncated_bag_keeps_partial_results(tmp_path):
    synth = SyntheticSequence(num_frames=30, width=160, height=120, seed=1)   # ~3 MCAP chunks
    bw.write_bag(synth, tmp_path / 'bag')
    shutil.copytree(tmp_path / 'bag', tmp_path / 'cut')
    f = tmp_path / 'cut' / 'bag.mcap'
    data = f.read_bytes()
    f.write_bytes(data[:len(data) * 2 // 3])
    seq = open_dataset(f'bag:{tmp_path / "cut"}')
    assert seq.partial and 'truncated' in seq.partial_reason
    assert 0 < len(seq) < 30
    assert_same(seq[len(seq) - 2], synth[len(seq) - 2], 5.1e-4)
    assert np.array_equal(seq[len(seq) - 1].frame.rgb, synth[len(seq) - 1].frame.rgb)
    result = evaluate_offline(create('constant', device='cpu'), seq, build_pairs('fixed', seq), progress=False)
    assert result.partial and 'truncated' in result.partial_reason
    assert len(result.pairs) == len(seq) - 1
    (tmp_path / 'cut' / 'bag.mcap').write_bytes(data[:100])
    with pytest.raises(DatasetError, match='no image topic found.*truncated'):
        open_dataset(f'bag:{tmp_path / "cut"}')
    bw.write_bag(synth, tmp_path / 'db', storage='sqlite3', indices=range(4))
    db = tmp_path / 'db' / 'db.db3'
    db.write_bytes(db.read_bytes()[:db.stat().st_size // 2])
    with pytest.raises(DatasetError, match='cannot read bag .*truncated .db3 cannot be recovered'):
        open_dataset(f'bag:{tmp_path / "db"}')
