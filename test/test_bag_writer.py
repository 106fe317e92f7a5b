"""Bag writer: write a synthetic sequence to MCAP / SQLite3, read it back with rosbags, compare everything."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from relpose_ros.data.bag_writer import (TOPIC_CAMERA_INFO, TOPIC_DEPTH, TOPIC_GT_POSE, TOPIC_IMAGE, TOPIC_TF,
                                         TYPESTORE, WORLD_FRAME, write_bag)
from relpose_ros.data.synthetic import SyntheticScene, SyntheticSequence
from relpose_ros.errors import ConfigError, DatasetError
from relpose_ros.geometry import quat_to_matrix


@pytest.fixture(scope='module')
def sequence() -> SyntheticSequence:
    return SyntheticSequence(num_frames=4, width=80, height=60, scene=SyntheticScene(seed=1, num_boxes=3), fps=15.0)


def _read(path):
    """{topic: [(bag timestamp, message)]} and the parsed metadata.yaml."""
    out: dict[str, list] = {}
    with Reader(path) as reader:
        for conn, ts, raw in reader.messages():
            out.setdefault(conn.topic, []).append((ts, TYPESTORE.deserialize_cdr(raw, conn.msgtype)))
    return out, yaml.safe_load((path / 'metadata.yaml').read_text())


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


@pytest.mark.parametrize('storage,depth_encoding', [('mcap', '16UC1'), ('sqlite3', '32FC1')])
def test_round_trip_is_identical(tmp_path, sequence, storage, depth_encoding):
    path = tmp_path / ('bag.db3' if storage == 'sqlite3' else 'bag')
    summary = write_bag(sequence, path, depth_encoding=depth_encoding)
    assert summary.storage == storage and summary.num_frames == 4
    messages, meta = _read(path)
    info = meta['rosbag2_bagfile_information']
    assert info['storage_identifier'] == storage and info['message_count'] == 4 * 5
    assert {t['topic_metadata']['name'] for t in info['topics_with_message_count']} == {
        TOPIC_IMAGE, TOPIC_CAMERA_INFO, TOPIC_DEPTH, TOPIC_GT_POSE, TOPIC_TF}
    assert all(t['topic_metadata']['offered_qos_profiles'] for t in info['topics_with_message_count'])
    for i in range(4):
        posed = sequence[i]
        f = posed.frame
        ts, img = messages[TOPIC_IMAGE][i]
        assert ts == _stamp(img) == f.stamp_ns
        assert (img.encoding, img.height, img.width, img.step) == ('rgb8', 60, 80, 240)
        assert np.array_equal(img.data.reshape(60, 80, 3), f.rgb) and img.header.frame_id == f.frame_id
        _, ci = messages[TOPIC_CAMERA_INFO][i]
        np.testing.assert_array_equal(ci.k.reshape(3, 3), f.K)
        assert (ci.width, ci.height, _stamp(ci)) == (80, 60, f.stamp_ns)
        _, dm = messages[TOPIC_DEPTH][i]
        assert dm.encoding == depth_encoding and _stamp(dm) == f.stamp_ns
        if depth_encoding == '16UC1':
            mm = dm.data.view('<u2').reshape(60, 80)
            np.testing.assert_array_equal(mm, np.rint(f.depth.astype(np.float64) * 1000).astype(np.uint16))
        else:
            np.testing.assert_array_equal(dm.data.view('<f4').reshape(60, 80), f.depth)
        _, ps = messages[TOPIC_GT_POSE][i]
        q = ps.pose.orientation
        np.testing.assert_allclose(quat_to_matrix([q.w, q.x, q.y, q.z]), posed.T_world_from_cam[:3, :3], atol=1e-12)
        p = ps.pose.position
        np.testing.assert_allclose([p.x, p.y, p.z], posed.T_world_from_cam[:3, 3], atol=1e-12)
        assert ps.header.frame_id == WORLD_FRAME
        _, tf = messages[TOPIC_TF][i]
        (tr,) = tf.transforms
        assert (tr.header.frame_id, tr.child_frame_id) == (WORLD_FRAME, f.frame_id)
        assert tr.transform.translation.x == p.x and tr.transform.rotation.w == q.w


def test_rate_and_start_override_stamps(tmp_path, sequence):
    summary = write_bag(sequence, tmp_path / 'b', rate_hz=10.0, start_ns=5_000_000_000, indices=[0, 2],
                        with_depth=False, with_ground_truth=False)
    messages, _ = _read(tmp_path / 'b')
    assert set(messages) == {TOPIC_IMAGE, TOPIC_CAMERA_INFO}
    assert [ts for ts, _ in messages[TOPIC_IMAGE]] == [5_000_000_000, 5_100_000_000]
    assert summary.duration_s == pytest.approx(0.1)
    np.testing.assert_array_equal(messages[TOPIC_IMAGE][1][1].data.reshape(60, 80, 3), sequence[2].frame.rgb)


def test_bad_arguments_are_named(tmp_path, sequence):
    write_bag(sequence, tmp_path / 'x', indices=[0])
    with pytest.raises(DatasetError, match='already exists'):
        write_bag(sequence, tmp_path / 'x', indices=[0])
    write_bag(sequence, tmp_path / 'x', indices=[1], overwrite=True)       # a bag folder may be replaced
    (tmp_path / 'notabag').mkdir()
    with pytest.raises(DatasetError, match='not a ROS 2 bag'):
        write_bag(sequence, tmp_path / 'notabag', overwrite=True)
    with pytest.raises(ConfigError, match='depth_encoding'):
        write_bag(sequence, tmp_path / 'y', depth_encoding='mono8')
    with pytest.raises(ConfigError, match='storage'):
        write_bag(sequence, tmp_path / 'z', storage='bag1')


def test_depth_encodings_mark_invalid_values():
    from relpose_ros.data.bag_writer import depth_image

    d = np.array([[0.5, np.nan, 70.0, -1.0, 0.0004, 1.2344]], dtype=np.float32)
    np.testing.assert_array_equal(depth_image(d, '16UC1'), [[500, 0, 0, 0, 0, 1234]])
    np.testing.assert_array_equal(depth_image(d, '32FC1'), d)


def test_compressed_image_and_depth(tmp_path, sequence):
    import cv2

    write_bag(sequence, tmp_path / 'c', image_format='png', depth_encoding='compressedDepth', indices=[1])
    messages, _ = _read(tmp_path / 'c')
    assert TOPIC_IMAGE not in messages and TOPIC_DEPTH not in messages
    (_, img), = messages[TOPIC_IMAGE + '/compressed']
    (_, dm), = messages[TOPIC_DEPTH + '/compressedDepth']
    f = sequence[1].frame
    assert img.format == 'rgb8; png compressed bgr8' and _stamp(img) == f.stamp_ns
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imdecode(img.data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), f.rgb)
    assert dm.format == '16UC1; compressedDepth png'
    mm = cv2.imdecode(dm.data[12:], cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(mm, np.rint(f.depth.astype(np.float64) * 1000).astype(np.uint16))
    write_bag(sequence, tmp_path / 'j', image_format='jpeg', indices=[1])
    (_, jpg), = _read(tmp_path / 'j')[0][TOPIC_IMAGE + '/compressed']
    decoded = cv2.imdecode(jpg.data, cv2.IMREAD_GRAYSCALE).astype(float)      # jpeg: lossy, chroma subsampled
    assert np.abs(decoded - cv2.cvtColor(f.rgb, cv2.COLOR_RGB2GRAY)).mean() < 10.0
    with pytest.raises(ConfigError, match='image_format'):
        write_bag(sequence, tmp_path / 'k', image_format='bmp')
