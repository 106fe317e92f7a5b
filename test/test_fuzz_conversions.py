"""Property-based fuzzing (hypothesis): >= 1,000 random, mostly malformed Image / CameraInfo / depth
messages go through conversion + validation and through the node's real subscription callbacks.

Properties: nothing but a FrameError ever leaves conversion; no exception ever leaves a callback;
the node accepts a frame exactly when conversion accepts it, otherwise counts it as skipped; and
an accepted frame is consistent with its messages (sizes, step, data length, K, pixel values).
"""
from __future__ import annotations

import array
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

rclpy = pytest.importorskip('rclpy')

from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from relpose_ros.errors import FrameError  # noqa: E402
from relpose_ros.ros.conversions import COLOR_ENCODINGS, DEPTH_ENCODINGS, ENCODINGS, messages_to_frame  # noqa: E402
from relpose_ros.ros.node import RelocalizeNode  # noqa: E402

pytestmark = pytest.mark.ros
N_EXAMPLES = 1200
ENCODING_CHOICES = sorted(ENCODINGS) + ['', 'yuv422', '8UC3', 'RGB8', 'bgr16', 'rgb16', '64FC1', 'bayer_rggb8']
SPECIAL_FLOATS = [0.0, -1.0, 1.0, 60.0, 1e-300, 1e300, float('nan'), float('inf'), float('-inf')]


def _pixel_bytes(encoding: str) -> int:
    channels, kind = ENCODINGS.get(encoding, (1, 'u1'))
    return channels * np.dtype(kind).itemsize


@st.composite
def image_msgs(draw, encodings, valid_encodings, valid: bool, max_side=9):
    """A random Image; ``valid`` draws a well-formed one (sizes, step, data length all consistent)."""
    if valid:
        enc = draw(st.sampled_from(valid_encodings))
        h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        row = w * _pixel_bytes(enc)
        step = draw(st.integers(row, row + 9))
        n = step * h
    else:
        enc = draw(st.sampled_from(encodings))
        h = draw(st.one_of(st.integers(0, max_side), st.just(70000)))
        w = draw(st.one_of(st.integers(0, max_side), st.just(1 << 20)))
        row = min(w, 64) * _pixel_bytes(enc)
        step = draw(st.one_of(st.just(row), st.integers(row, row + 9), st.integers(0, 300)))
        exact = min(step * min(h, 64), 4096)
        n = draw(st.one_of(st.just(exact), st.integers(max(0, exact - 3), exact + 3), st.integers(0, 600)))
    data = draw(st.binary(min_size=n, max_size=n))
    msg = Image(height=h, width=w, encoding=enc, step=step, is_bigendian=draw(st.sampled_from([0, 1, 255])))
    msg.data = array.array('B', data)
    msg.header.stamp.sec = draw(st.integers(-(1 << 31), (1 << 31) - 1))
    msg.header.stamp.nanosec = draw(st.integers(0, (1 << 32) - 1))
    msg.header.frame_id = draw(st.sampled_from(['', 'cam', 'ref']))
    return msg


@st.composite
def camera_infos(draw, image: Image, valid: bool):
    K = [60.0, 0.0, 4.0, 0.0, 61.0, 3.0, 0.0, 0.0, 1.0]
    if not valid:
        if draw(st.booleans()):
            for i in draw(st.lists(st.integers(0, 8), min_size=1, max_size=2)):
                K[i] = draw(st.sampled_from(SPECIAL_FLOATS))
        else:
            K = draw(st.lists(st.sampled_from(SPECIAL_FLOATS), min_size=9, max_size=9))
    msg = CameraInfo(k=K)
    same = valid or draw(st.booleans())
    msg.width = image.width if same else draw(st.integers(0, 12))
    msg.height = image.height if same else draw(st.integers(0, 12))
    return msg


def _expected_rgb_pixel(msg: Image, row: int, col: int) -> list[int]:
    """Independent byte-level decoding of one pixel (struct, not numpy)."""
    channels, kind = ENCODINGS[msg.encoding]
    size = np.dtype(kind).itemsize
    offset = row * msg.step + col * channels * size
    fmt = ('>' if msg.is_bigendian else '<') + {'u1': 'B', 'u2': 'H'}[kind] * channels
    vals = list(struct.unpack_from(fmt, bytes(msg.data), offset))
    if msg.encoding == 'mono16':
        vals = [vals[0] >> 8]
    if channels == 1:
        vals = vals * 3
    if msg.encoding.startswith('bgr'):
        vals = vals[2::-1]
    return vals[:3]


def _check_consistent(frame, image: Image, info: CameraInfo, depth: Image | None) -> None:
    h, w = image.height, image.width
    assert image.encoding in COLOR_ENCODINGS
    assert frame.rgb.shape == (h, w, 3) and frame.rgb.dtype == np.uint8
    assert image.step >= w * _pixel_bytes(image.encoding) and len(image.data) == image.step * h
    assert (info.width, info.height) == (w, h)
    K = np.asarray(info.k).reshape(3, 3)
    assert np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0 and np.array_equal(frame.K, K)
    for r, c in ((0, 0), (h - 1, w - 1)):
        assert frame.rgb[r, c].tolist() == _expected_rgb_pixel(image, r, c)
    if depth is None:
        assert frame.depth is None
    else:
        assert depth.encoding in DEPTH_ENCODINGS and (depth.height, depth.width) == (h, w)
        assert len(depth.data) == depth.step * h
        assert frame.depth.shape == (h, w) and frame.depth.dtype == np.float32
        d = frame.depth[np.isfinite(frame.depth)]
        assert np.all(d > 0) and not np.any(np.isinf(frame.depth))


@pytest.fixture(scope='module')
def nodes():
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    made = {}
    for use_depth in (True, False):
        node = RelocalizeNode(context=ctx, namespace=f'/fuzz{int(use_depth)}', parameter_overrides=[
            Parameter('backend', value='constant'), Parameter('use_depth', value=use_depth)])
        callbacks = {s.topic_name.rsplit('/', 1)[-1]: s.callback for s in node.subscriptions
                     if '/reference/' not in s.topic_name}
        made[use_depth] = (node, callbacks)
    yield made
    for node, _ in made.values():
        node.shutdown()
        node.destroy_node()
    rclpy.try_shutdown(context=ctx)


counts = {'examples': 0, 'accepted': 0}


@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_conversion_and_node_callbacks(nodes, data):
    # each part is well-formed or fuzzed independently, so every mix of faults (and none) occurs
    image = data.draw(image_msgs(ENCODING_CHOICES, COLOR_ENCODINGS, data.draw(st.booleans())))
    info = data.draw(camera_infos(image, data.draw(st.booleans())))
    depth = None
    if data.draw(st.booleans()):
        depth = data.draw(image_msgs(sorted(DEPTH_ENCODINGS) + ['rgb8', '8UC1', ''], DEPTH_ENCODINGS, False))
        if image.height <= 64 and image.width <= 64 and data.draw(st.booleans()):  # well-formed, image's size
            enc = data.draw(st.sampled_from(DEPTH_ENCODINGS))
            step = image.width * _pixel_bytes(enc) + data.draw(st.integers(0, 5))
            depth.encoding, depth.height, depth.width, depth.step = enc, image.height, image.width, step
            depth.data = array.array('B', data.draw(st.binary(min_size=step * image.height,
                                                               max_size=step * image.height)))
    for m in (info, depth):
        if m is not None:
            m.header = image.header

    try:
        frame = messages_to_frame(image, info, depth)
    except FrameError as exc:
        assert str(exc)
        frame = None
    else:
        _check_consistent(frame, image, info, depth)

    node, callbacks = nodes[depth is not None]
    stats = node.pipeline.stats
    before = (stats.live_frames, sum(node.skipped.values()))
    callbacks['image'](image)
    callbacks['camera_info'](info)
    if depth is not None:
        callbacks['depth'](depth)
    after = (stats.live_frames, sum(node.skipped.values()))
    assert 'internal_error' not in node.skipped and 'conversion_error' not in node.skipped
    if frame is not None:
        assert after == (before[0] + 1, before[1]), 'node refused a frame that conversion accepts'
    else:
        assert after == (before[0], before[1] + 1), 'node accepted (or lost) a frame that conversion rejects'
    counts['examples'] += 1
    counts['accepted'] += frame is not None


def test_fuzz_ran_enough_examples_and_reached_acceptance(nodes):
    if counts['examples'] == 0:
        pytest.skip('run together with test_fuzz_conversion_and_node_callbacks')
    assert counts['examples'] >= 1000, counts
    print(f"fuzz: {counts['examples']} messages, {counts['accepted']} accepted")
    assert counts['accepted'] >= 50, counts  # the generator also reaches valid frames
