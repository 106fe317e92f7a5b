"""Replay a real bag into a real relocalize_node subprocess over DDS ('constant' backend: known output)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from relpose_ros.data.bag_writer import BagTopics, write_bag
from relpose_ros.data.synthetic import SyntheticScene, SyntheticSequence
from relpose_ros.errors import DatasetError
from relpose_ros.geometry import inverse_T, relative_pose
from relpose_ros.data.bag_stream import cdr_restamp, cdr_stamp_ns, index_bag, iter_frame_data, read_bag_stream
from relpose_ros.ros.node_process import NodeProcess, node_command
from relpose_ros.ros.replay import ReplayError, ReplayOptions, match_confidences, replay_bag

pytestmark = pytest.mark.ros

CONSTANT_T = [0.1, -0.05, 0.3]        # T_query_from_ref translation returned by the constant backend


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    seq = SyntheticSequence(num_frames=6, width=64, height=48, fps=20.0, scene=SyntheticScene(seed=2, num_boxes=2))
    path = tmp_path_factory.mktemp('replay') / 'synthetic'
    write_bag(seq, path)
    return path, seq


def test_read_bag_stream_matches_frames_and_ground_truth(bag):
    path, seq = bag
    stream = read_bag_stream(path)
    assert len(stream.frames) == 6 and stream.image_transport == 'raw' and stream.depth_transport == 'raw'
    for k, f in enumerate(stream.frames):
        assert f.stamp_ns == seq[k].frame.stamp_ns == cdr_stamp_ns(f.camera_info) == cdr_stamp_ns(f.depth)
        np.testing.assert_allclose(f.T_world_from_cam, seq.poses[k], atol=1e-12)
    raw = cdr_restamp(stream.frames[0].image, 1_234_567_890_123)
    assert cdr_stamp_ns(raw) == 1_234_567_890_123 and raw[12:] == stream.frames[0].image[12:]
    assert len(read_bag_stream(path, use_depth=False, max_frames=2).frames) == 2
    index = index_bag(path)                                   # stamps only, data streamed on demand
    assert all(f.image is None for f in index.frames)
    subset = list(iter_frame_data(index, [1, 4]))
    assert [f.index for f in subset] == [1, 4]
    assert subset[1].image == stream.frames[4].image and subset[1].depth == stream.frames[4].depth
    with pytest.raises(DatasetError, match='no topic /nope; it has: .*/camera/color/camera_info'):
        read_bag_stream(path, topics=BagTopics(image='/nope'))


def cut_bag(tmp_path, num_frames=30, fraction=2 / 3):
    """A synthetic MCAP bag (160x120: ~3 chunks) cut at ``fraction`` of its size, as a crash mid-recording
    leaves it (no footer); returns (bag folder, sequence)."""
    import shutil

    seq = SyntheticSequence(num_frames=num_frames, width=160, height=120, seed=1)
    write_bag(seq, tmp_path / 'full')
    shutil.copytree(tmp_path / 'full', tmp_path / 'cut')
    f = tmp_path / 'cut' / 'full.mcap'
    data = f.read_bytes()
    f.write_bytes(data[:int(len(data) * fraction)])
    return tmp_path / 'cut', seq


def test_truncated_mcap_is_streamed_up_to_its_last_complete_frame(tmp_path):
    from relpose_ros.data.bag_reader import BagSequence

    path, seq = cut_bag(tmp_path)
    offline = BagSequence(path)
    stream = index_bag(path)
    assert stream.partial and 'truncated' in stream.partial_reason and offline.partial
    assert 0 < len(stream.frames) == len(offline) < 30
    assert not index_bag(tmp_path / 'full').partial
    frames = list(iter_frame_data(stream, range(len(stream.frames))))
    assert [f.index for f in frames] == list(range(len(offline)))
    for f in frames:                                    # stamps and ground truth as the offline reader sees them
        k = f.index
        assert f.stamp_ns == offline.stamp_ns(k) == cdr_stamp_ns(f.image) == cdr_stamp_ns(f.depth)
        if offline.pose(k) is None:                     # the cut fell between its images and its ground truth
            assert f.T_world_from_cam is None and k == len(frames) - 1
        else:
            np.testing.assert_allclose(f.T_world_from_cam, seq.poses[k], atol=1e-12)
    full = read_bag_stream(tmp_path / 'full', max_frames=len(frames))
    assert [f.image for f in frames] == [f.image for f in full.frames]
    (path / 'full.mcap').write_bytes((path / 'full.mcap').read_bytes()[:100])
    with pytest.raises(DatasetError, match=r'no topic /camera/color/image_raw; it has: \(none\) .*truncated'):
        index_bag(path)


def test_replay_through_the_node_records_every_pose(bag, tmp_path):
    path, seq = bag
    opts = ReplayOptions(backend='constant', reference_index=1, restamp=True, node_log=tmp_path / 'node.log',
                         node_params={'constant.translation': CONSTANT_T, 'constant.confidence': 0.75})
    result = replay_bag(path, opts)
    assert result.reference_index == 1 and result.rate_hz == pytest.approx(20.0, rel=1e-6)
    assert [f.index for f in result.frames] == list(range(6))
    assert result.published >= 5                         # best-effort camera QoS may lose one frame under load
    assert result.dropped_frames == 6 - result.published
    T_expected = inverse_T(np.array([[1, 0, 0, CONSTANT_T[0]], [0, 1, 0, CONSTANT_T[1]],
                                     [0, 0, 1, CONSTANT_T[2]], [0, 0, 0, 1.0]]))
    for f in result.frames:
        np.testing.assert_allclose(f.T_world_from_cam, seq.poses[f.index], atol=1e-12)
        assert f.sent_stamp_ns != f.stamp_ns             # restamped to the send time
        if f.published:
            np.testing.assert_allclose(f.T_ref_from_query, T_expected, atol=1e-9)
            assert f.confidence == pytest.approx(0.75)
            assert 0.0 < f.latency_s < 5.0
    np.testing.assert_allclose(result.gt_T_query_from_ref(result.frames[3]), relative_pose(seq.poses[1], seq.poses[3]))
    assert result.diagnostics['backend'] == 'constant' and result.diagnostics['reference_set'] == 'true'
    history = result.diagnostics_history
    assert len(history) >= 2 and history[0][0] < history[-1][0] and history[-1][1] == result.diagnostics
    assert 'new reference' in result.node_log and (tmp_path / 'node.log').is_file()
    d = result.to_dict()
    assert d['frames_sent'] == 6 and d['published'] == result.published


def test_gated_estimates_are_counted_not_published(bag):
    path, _ = bag
    opts = ReplayOptions(backend='constant', min_confidence=0.9, include_reference=False, rate_hz=30.0,
                         node_params={'constant.confidence': 0.5})
    result = replay_bag(path, opts)
    assert len(result.frames) == 5 and result.published == 0
    assert len(result.unmatched_confidences) >= 4 and set(result.unmatched_confidences) == {0.5}
    assert int(result.diagnostics['gated_poses']) >= 4
    assert sum(f.status == 'not published' for f in result.frames) == len(result.unmatched_confidences)
    assert result.dropped_frames == 5 - len(result.unmatched_confidences)


def test_unusable_backend_fails_loudly(bag):
    path, _ = bag
    opts = ReplayOptions(backend='no_such_backend', reference_timeout_s=2.0)
    with pytest.raises(ReplayError, match="cannot estimate: .*no_such_backend"):
        replay_bag(path, opts)


def test_replay_into_an_already_running_node(bag, tmp_path):
    path, _ = bag
    ns = f'/running_node_test_{os.getpid()}'
    node = NodeProcess(node_command(ns, {'backend': 'constant', 'diagnostics_period': 0.2}), tmp_path / 'n.log')
    try:
        result = replay_bag(path, ReplayOptions(spawn=False, namespace=ns, max_frames=3))
    finally:
        assert node.stop() == 0                        # SIGINT: clean shutdown
    assert result.node_command == [] and len(result.frames) == 3 and result.published >= 2
    for f in result.frames:
        if f.published:
            np.testing.assert_allclose(f.T_ref_from_query, np.eye(4), atol=1e-12)


def test_confidences_are_matched_to_poses_in_order():
    # estimates at 0.0 (published), 0.2 (gated), 0.4 (published, confidence delivered 2 ms before the pose),
    # 0.6 (published, confidence lost), 1.5 (gated)
    poses = [0.001, 0.402, 0.601]
    confidences = [0.002, 0.2, 0.400, 1.5]
    assert match_confidences(poses, confidences) == [0, None, 1, None]


def test_compressed_bag_through_the_node(tmp_path):
    seq = SyntheticSequence(num_frames=4, width=64, height=48, scene=SyntheticScene(seed=5, num_boxes=2))
    write_bag(seq, tmp_path / 'c', image_format='jpeg', depth_encoding='compressedDepth')
    stream = index_bag(tmp_path / 'c')
    assert stream.image_transport == 'compressed' and stream.depth_transport == 'compressedDepth'
    assert stream.topics.image.endswith('/compressed') and stream.topics.depth.endswith('/compressedDepth')
    result = replay_bag(tmp_path / 'c', ReplayOptions(backend='constant', rate_hz=20.0))
    assert result.published >= 3                            # decoded by the node's compressed transport
    assert result.diagnostics.get('skipped_frames') == '0'
