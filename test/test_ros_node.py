"""relocalize_node end to end with real rclpy + Fast DDS: a tester node publishes camera frames, the
node (constant test backend with a known pose) publishes relpose, relpose/pose, relpose/confidence
and /diagnostics. One rclpy context for the module; each test gets its own namespace."""
from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import Float32  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from relpose_ros.backends.constant import ConstantEstimator  # noqa: E402
from relpose_ros.geometry import quat_to_matrix  # noqa: E402
from relpose_ros.ros.conversions import (depth_to_compressed_msg, frame_to_messages, numpy_to_image_msg,  # noqa: E402
                                         rgb_to_compressed_msg, stamp_to_ns)
from relpose_ros.ros.node import RelocalizeNode  # noqa: E402
from relpose_ros.ros.params import NODE_PARAMS  # noqa: E402
from relpose_ros.types import Frame  # noqa: E402

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]
H, W = 48, 64
K = np.array([[60.0, 0.0, 32.0], [0.0, 60.0, 24.0], [0.0, 0.0, 1.0]])
Q_WXYZ = [np.cos(np.radians(15)), 0.0, np.sin(np.radians(15)), 0.0]  # 30 deg about y
T_XYZ = [0.1, -0.2, 0.5]
_ns = itertools.count()




def make_frame(stamp_ns: int, frame_id: str = 'live_cam', seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.5, 4.0, (H, W)).astype(np.float32)
    return Frame(rgb=rng.integers(0, 256, (H, W, 3), dtype=np.uint8), K=K, depth=depth, stamp_ns=stamp_ns,
                 frame_id=frame_id)


def now_ns() -> int:
    return time.time_ns()


class Harness:
    """The node under test + a tester node (publishers, subscribers, service clients), spun in a thread."""

    def __init__(self, context, params: dict, cli_args: list[str] | None = None, compressed: bool = False,
                 live_topics: tuple[str, str, str] = ('image', 'camera_info', 'depth')) -> None:
        self.ns = f'/t{next(_ns)}'
        overrides = [Parameter(k, value=v) for k, v in {'backend': 'constant', **params}.items()]
        self.node = RelocalizeNode(context=context, namespace=self.ns, parameter_overrides=overrides,
                                   cli_args=cli_args)
        self.tester = rclpy.create_node('tester', namespace=self.ns, context=context)
        self.compressed = compressed
        img_type = CompressedImage if compressed else Image
        reliable = QoSProfile(depth=10)
        self.live_pubs = (self.tester.create_publisher(img_type, live_topics[0], qos_profile_sensor_data),
                          self.tester.create_publisher(CameraInfo, live_topics[1], qos_profile_sensor_data),
                          self.tester.create_publisher(img_type, live_topics[2], qos_profile_sensor_data))
        ref_suffix = ('/compressed', '/compressedDepth') if compressed else ('', '')
        self.ref_pubs = (self.tester.create_publisher(img_type, 'reference/image' + ref_suffix[0], reliable),
                         self.tester.create_publisher(CameraInfo, 'reference/camera_info', reliable),
                         self.tester.create_publisher(img_type, 'reference/depth' + ref_suffix[1], reliable))
        self.lock = threading.Lock()
        self.transforms: list[tuple[float, TransformStamped]] = []
        self.poses: list[tuple[float, PoseWithCovarianceStamped]] = []
        self.confidences: list[tuple[float, float]] = []
        self.diagnostics: list[dict[str, str]] = []
        self.subs = [
            self.tester.create_subscription(TransformStamped, 'relpose', self._recorder(self.transforms), reliable),
            self.tester.create_subscription(PoseWithCovarianceStamped, 'relpose/pose', self._recorder(self.poses),
                                            reliable),
            self.tester.create_subscription(Float32, 'relpose/confidence', self._conf, reliable),
            self.tester.create_subscription(DiagnosticArray, '/diagnostics', self._diag, reliable),
        ]
        self.set_client = self.tester.create_client(Trigger, f'{self.ns}/relocalize_node/set_reference')
        self.clear_client = self.tester.create_client(Trigger, f'{self.ns}/relocalize_node/clear_reference')
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.tester)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        assert self.wait(lambda: all(p.get_subscription_count() > 0 for p in self.live_pubs + self.ref_pubs)
                         and all(s.get_publisher_count() > 0 for s in self.subs[:3]), 10), 'DDS discovery timed out'

    def _recorder(self, store):
        def cb(msg):
            with self.lock:
                store.append((time.time(), msg))
        return cb

    def _conf(self, msg):
        with self.lock:
            self.confidences.append((time.time(), msg.data))

    def _diag(self, msg):
        for status in msg.status:
            if status.name == f'{self.ns}/relocalize_node: relocalisation':
                with self.lock:
                    self.diagnostics.append({'level': status.level[0], 'message': status.message,
                                             **{kv.key: kv.value for kv in status.values}})

    @staticmethod
    def wait(predicate, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return bool(predicate())

    def messages(self, frame: Frame):
        if self.compressed:
            _, info, _ = frame_to_messages(frame)
            return (rgb_to_compressed_msg(frame.rgb, 'png', frame.stamp_ns, frame.frame_id), info,
                    depth_to_compressed_msg(frame.depth, frame.stamp_ns, frame.frame_id))
        return frame_to_messages(frame)

    def publish(self, pubs, msgs) -> None:
        for pub, msg in zip(pubs, msgs):
            if msg is not None:
                pub.publish(msg)

    def publish_live(self, frame: Frame) -> None:
        self.publish(self.live_pubs, self.messages(frame))

    def set_reference_topic(self, frame: Frame) -> None:
        before = self.node.pipeline.stats.references_set
        self.publish(self.ref_pubs, self.messages(frame))
        assert self.wait(lambda: self.node.pipeline.stats.references_set > before), 'reference not taken'

    def call(self, client) -> Trigger.Response:
        assert client.wait_for_service(timeout_sec=5.0)
        future = client.call_async(Trigger.Request())
        assert self.wait(future.done, 5.0)
        return future.result()

    def transform_for(self, stamp_ns: int, timeout: float = 5.0) -> TransformStamped | None:
        def find():
            with self.lock:
                return next((m for _, m in self.transforms if stamp_to_ns(m.header.stamp) == stamp_ns), None)
        self.wait(lambda: find() is not None, timeout)
        return find()

    def close(self) -> None:
        self.node.shutdown()  # stop the worker first: it publishes from its own thread
        self.executor.remove_node(self.tester)
        self.executor.remove_node(self.node)
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(5.0)
        self.node.destroy_node()
        self.tester.destroy_node()


@pytest.fixture
def harness(context):
    made: list[Harness] = []

    def make(**kwargs) -> Harness:
        h = Harness(context, **kwargs)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def expected_T_ref_from_query() -> np.ndarray:
    R = quat_to_matrix(Q_WXYZ)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R.T, -R.T @ np.asarray(T_XYZ)
    return T


def msg_T(translation, rotation) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix([rotation.w, rotation.x, rotation.y, rotation.z])
    T[:3, 3] = [translation.x, translation.y, translation.z]
    return T


# ----------------------------------------------------------------------------- tests


def test_end_to_end_pose_stamp_frame_ids_covariance_confidence(harness):
    h = harness(params={'constant.rotation_wxyz': Q_WXYZ, 'constant.translation': T_XYZ,
                        'constant.confidence': 0.9, 'min_confidence': 0.5})
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam', seed=1))
    stamp = now_ns()
    h.publish_live(make_frame(stamp, 'live_cam', seed=2))
    tmsg = h.transform_for(stamp)
    assert tmsg is not None, 'no relpose for the live frame'
    assert tmsg.header.frame_id == 'ref_cam' and tmsg.child_frame_id == 'live_cam'
    T = msg_T(tmsg.transform.translation, tmsg.transform.rotation)
    np.testing.assert_allclose(T, expected_T_ref_from_query(), atol=1e-9)
    # round trip of the convention: mapping the live camera's origin into the reference frame
    R, t = quat_to_matrix(Q_WXYZ), np.asarray(T_XYZ)
    X_ref = np.array([0.3, -0.1, 2.0])
    np.testing.assert_allclose(T[:3, :3] @ (R @ X_ref + t) + T[:3, 3], X_ref, atol=1e-12)

    assert h.wait(lambda: any(stamp_to_ns(m.header.stamp) == stamp for _, m in h.poses))
    pose = next(m for _, m in h.poses if stamp_to_ns(m.header.stamp) == stamp)
    assert pose.header.frame_id == 'ref_cam'
    np.testing.assert_allclose(msg_T(pose.pose.pose.position, pose.pose.pose.orientation), T, atol=1e-9)
    cov = np.asarray(pose.pose.covariance).reshape(6, 6)
    sp, sr = 0.05 * (2.0 / 0.05) ** 0.1, 0.02 * (0.5 / 0.02) ** 0.1
    np.testing.assert_allclose(cov, np.diag([sp ** 2] * 3 + [sr ** 2] * 3), rtol=1e-9)
    assert h.wait(lambda: len(h.confidences) >= 1)
    assert h.confidences[0][1] == pytest.approx(0.9, abs=1e-6)


def test_covariance_grows_as_confidence_falls():
    from relpose_ros.ros.messages import CovarianceModel

    model = CovarianceModel()
    traces = [np.trace(np.reshape(model.covariance(c), (6, 6))) for c in np.linspace(1.0, 0.0, 11)]
    assert all(b > a for a, b in zip(traces, traces[1:]))
    assert model.stds(1.0) == pytest.approx((0.05, 0.02)) and model.stds(0.0) == pytest.approx((2.0, 0.5))


def test_set_and_clear_reference_services(harness):
    h = harness(params={'reference_frame_id': 'keyframe'})
    first = now_ns()
    h.publish_live(make_frame(first))  # no reference yet: nothing published
    assert h.wait(lambda: h.node.pipeline.stats.frames_without_reference >= 1)
    assert h.wait(lambda: h.diagnostics and h.diagnostics[-1]['reference_set'] == 'false', 3)
    assert h.diagnostics[-1]['message'].startswith('no reference')
    assert h.call(h.set_client).success
    before = h.node.pipeline.stats.references_set
    h.publish_live(make_frame(now_ns(), seed=3))  # becomes the reference
    assert h.wait(lambda: h.node.pipeline.stats.references_set == before + 1)
    stamp = now_ns()
    h.publish_live(make_frame(stamp, seed=4))
    tmsg = h.transform_for(stamp)
    assert tmsg is not None and tmsg.header.frame_id == 'keyframe' and tmsg.child_frame_id == 'live_cam'
    assert not h.transforms or all(stamp_to_ns(m.header.stamp) != first for _, m in h.transforms)

    assert h.call(h.clear_client).success
    assert not h.node.pipeline.has_reference
    n = len(h.transforms)
    stamp = now_ns()
    h.publish_live(make_frame(stamp, seed=5))
    assert h.wait(lambda: h.node.pipeline.stats.frames_without_reference >= 2)
    time.sleep(0.2)
    assert len(h.transforms) == n
    assert h.wait(lambda: h.diagnostics[-1]['reference_set'] == 'false', 3)


def test_clear_reference_during_a_slow_estimate_publishes_nothing_for_that_frame(harness):
    """~/clear_reference arrives while the backend is estimating a frame: no pose and no confidence for it."""
    h = harness(params={'constant.delay_s': 1.5})
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    stamp = now_ns()
    h.publish_live(make_frame(stamp))
    assert h.wait(lambda: h.node.pipeline.stats.live_frames == 1 and h.node.pipeline.wait_idle(0.0) is False, 5)
    assert h.call(h.clear_client).success  # well inside the 1.5 s estimate
    assert h.node.pipeline.wait_idle(5.0)
    time.sleep(0.2)
    assert h.transforms == [] and h.poses == [] and h.confidences == [] and h.node.published_poses == 0
    assert h.node.pipeline.stats.estimates == 1 and h.node.pipeline.stats.stale_frames == 1
    assert h.wait(lambda: h.diagnostics and h.diagnostics[-1]['stale_frames'] == '1', 3)


def test_confidence_gate_and_runtime_parameter_change(harness):
    h = harness(params={'constant.confidence': 0.3, 'min_confidence': 0.5})
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    h.publish_live(make_frame(now_ns()))
    assert h.wait(lambda: len(h.confidences) == 1)
    assert h.confidences[0][1] == pytest.approx(0.3, abs=1e-6)
    time.sleep(0.2)
    assert h.transforms == [] and h.poses == [] and h.node.gated_poses == 1
    # invalid runtime values are rejected with the reason; valid ones apply
    bad = h.node.set_parameters([Parameter('min_confidence', value=1.5)])[0]
    assert not bad.successful and 'min_confidence' in bad.reason
    ro = h.node.set_parameters([Parameter('backend', value='rgbd')])[0]
    assert not ro.successful
    assert h.node.set_parameters([Parameter('min_confidence', value=0.25)])[0].successful
    assert h.node.set_parameters([Parameter('covariance.position_std_min', value=0.1)])[0].successful
    stamp = now_ns()
    h.publish_live(make_frame(stamp))
    assert h.transform_for(stamp) is not None
    assert h.wait(lambda: any(stamp_to_ns(m.header.stamp) == stamp for _, m in h.poses))
    cov = next(m for _, m in h.poses if stamp_to_ns(m.header.stamp) == stamp).pose.covariance
    assert cov[0] == pytest.approx((0.1 * (2.0 / 0.1) ** 0.7) ** 2)  # the new std at confidence 0.3


def test_reference_replaced_mid_stream(harness):
    h = harness(params={})
    h.set_reference_topic(make_frame(now_ns(), 'ref_a'))
    stamps_a = []
    for _ in range(3):
        stamps_a.append(now_ns())
        h.publish_live(make_frame(stamps_a[-1]))
        assert h.transform_for(stamps_a[-1]) is not None
    h.set_reference_topic(make_frame(now_ns(), 'ref_b'))  # last wins
    stamps_b = []
    for _ in range(3):
        stamps_b.append(now_ns())
        h.publish_live(make_frame(stamps_b[-1]))
        assert h.transform_for(stamps_b[-1]) is not None
    ids = {stamp_to_ns(m.header.stamp): m.header.frame_id for _, m in h.transforms}
    assert [ids[s] for s in stamps_a] == ['ref_a'] * 3
    assert [ids[s] for s in stamps_b] == ['ref_b'] * 3


def test_latest_only_with_slow_estimator(harness):
    period = 0.2
    h = harness(params={'constant.delay_s': period})
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    # Warm-up, not timed: the first frames page in every code path of the pipeline (a cold first call can take a
    # second on a machine that evicts page cache), so the timed loop measures the steady state.
    for s in range(3):
        h.publish_live(make_frame(now_ns(), seed=s))
        time.sleep(0.05)
    assert h.wait(lambda: len(h.transforms) >= 1, 10.0) and h.node.pipeline.wait_idle(2.0)
    received0, dropped0 = h.node.pipeline.stats.live_frames, h.node.pipeline.stats.dropped_frames
    sent, dropped_seen, loop_start_ns = 0, [], now_ns()
    t_end = time.monotonic() + 2.5
    next_t = time.monotonic()
    frames = [frame_to_messages(make_frame(0, seed=s)) for s in range(3)]
    while time.monotonic() < t_end:
        image, info, depth = frames[sent % 3]
        stamp = now_ns()
        for m in (image, info, depth):
            m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        h.publish(h.live_pubs, (image, info, depth))
        sent += 1
        if sent % 30 == 0:
            dropped_seen.append(h.node.pipeline.stats.dropped_frames)
        next_t += 1 / 30
        time.sleep(max(0.0, next_t - time.monotonic()))
    assert h.node.pipeline.wait_idle(2.0)
    with h.lock:
        ages = [recv - stamp_to_ns(m.header.stamp) * 1e-9 for recv, m in h.transforms
                if stamp_to_ns(m.header.stamp) >= loop_start_ns]          # poses of the timed frames only
    received = h.node.pipeline.stats.live_frames - received0
    assert received >= sent * 0.8, f'only {received} of {sent} frames arrived'
    assert 5 <= len(ages) <= 2.5 / period + 2, f'{len(ages)} poses for a {period} s estimator over 2.5 s'
    assert max(ages) <= 2 * period + 0.25, f'stale pose: {max(ages):.3f} s old (estimator period {period} s)'
    assert dropped_seen == sorted(dropped_seen) and dropped_seen[-1] > dropped_seen[0]
    assert h.node.pipeline.stats.dropped_frames - dropped0 >= received - len(ages) - 2


def _mutations():
    """(cause, how to break one live set (image, info, depth))."""
    def enc(m):
        m[0].encoding = 'yuv422'

    def short(m):
        m[0].data = m[0].data[:-10]

    def empty(m):
        m[0].height = m[0].width = m[0].step = 0
        m[0].data = m[0].data[:0]

    def k_zero(m):
        m[1].k = [0.0] * 9

    def info_size(m):
        m[1].width = W * 2

    def depth_size(m):
        d = numpy_to_image_msg(np.full((H // 2, W // 2), 1000, np.uint16), '16UC1')
        d.header = m[2].header
        m[2] = d

    def k_nan(m):
        m[1].k = [np.nan, 0, 32, 0, 60, 24, 0, 0, 1]

    def k_inf(m):
        m[1].k = [60, 0, 32, 0, np.inf, 24, 0, 0, 1]

    return [('unsupported_encoding', enc), ('data_size', short), ('empty_image', empty),
            ('camera_info_invalid', k_zero), ('camera_info_size_mismatch', info_size),
            ('depth_size_mismatch', depth_size), ('camera_info_nonfinite', k_nan), ('camera_info_nonfinite', k_inf)]


def test_every_bad_input_is_skipped_counted_and_survived(harness):
    h = harness(params={})
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    expected: dict[str, int] = {}
    for i, (cause, mutate) in enumerate(_mutations()):
        stamp = now_ns()
        msgs = list(frame_to_messages(make_frame(stamp, seed=10 + i)))
        mutate(msgs)
        before = h.node.skipped[cause]
        h.publish(h.live_pubs, msgs)
        assert h.wait(lambda: h.node.skipped[cause] == before + 1), f'{cause} not counted'
        expected[cause] = expected.get(cause, 0) + 1
        ok = now_ns()  # the node survives: a good frame right after still gets its pose
        h.publish_live(make_frame(ok, seed=50 + i))
        assert h.transform_for(ok) is not None, f'node stopped publishing after {cause}'
        assert all(stamp_to_ns(m.header.stamp) != stamp for _, m in h.transforms), f'published a pose for {cause}'
    assert dict(h.node.skipped) == expected
    assert h.node.published_poses == len(_mutations())  # one per good frame, none for the bad ones
    assert h.wait(lambda: h.diagnostics and h.diagnostics[-1].get('skipped_frames') == str(sum(expected.values())),
                  3)
    diag = h.diagnostics[-1]
    for cause, n in expected.items():
        assert diag[f'skipped.{cause}'] == str(n)


def test_compressed_transport_and_remapped_topics(harness):
    h = harness(params={'image_transport': 'compressed', 'depth_transport': 'compressedDepth'},
                cli_args=['--ros-args', '-r', 'image:=cam/color', '-r', 'depth:=cam/depth'], compressed=True,
                live_topics=('cam/color/compressed', 'camera_info', 'cam/depth/compressedDepth'))
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    stamp = now_ns()
    h.publish_live(make_frame(stamp))
    tmsg = h.transform_for(stamp)
    assert tmsg is not None and tmsg.header.frame_id == 'ref_cam'
    # a corrupt compressed image is skipped and counted
    bad = rgb_to_compressed_msg(np.zeros((H, W, 3), np.uint8), 'png', now_ns(), 'live_cam')
    bad.data = bad.data[:20]
    _, info, _ = frame_to_messages(make_frame(stamp_to_ns(bad.header.stamp)))
    h.publish(h.live_pubs, (bad, info, depth_to_compressed_msg(np.ones((H, W), np.float32),
                                                                stamp_to_ns(bad.header.stamp))))
    assert h.wait(lambda: h.node.skipped['decode_failed'] == 1)


def test_backend_config_error_keeps_node_alive_and_reports(harness):
    h = harness(params={'constant.confidence': 2.0})
    assert 'confidence' in h.node.backend_error
    assert h.wait(lambda: h.diagnostics and h.diagnostics[-1]['level'] == 2, 3)
    assert 'confidence' in h.diagnostics[-1]['backend_error']
    response = h.call(h.set_client)
    assert not response.success and 'confidence' in response.message
    h.publish(h.ref_pubs, frame_to_messages(make_frame(now_ns(), 'ref_cam')))
    h.publish_live(make_frame(now_ns()))
    assert h.wait(lambda: h.node.pipeline.stats.live_frames == 1)
    time.sleep(0.2)
    assert h.transforms == [] and h.confidences == []


def test_publish_tf_without_tf2_ros_logs_once_and_keeps_publishing(harness):
    import importlib.util

    h = harness(params={'publish_tf': True, 'reference_frame_id': 'keyframe'})
    have_tf2 = importlib.util.find_spec('tf2_ros') is not None
    assert h.node.tf_status == ('broadcasting' if have_tf2 else 'unavailable: tf2_ros not importable')
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    stamp = now_ns()
    h.publish_live(make_frame(stamp))
    assert h.transform_for(stamp) is not None
    assert h.wait(lambda: h.diagnostics and h.diagnostics[-1]['tf'] == h.node.tf_status, 3)


def test_unusable_backend_configs_are_reported_not_fatal(context):
    """Unknown backend, unknown backend key, missing depth, unavailable device: the node lives, refuses."""
    import torch

    cases = [([Parameter('backend', value='nope')], 'available'),
             ([Parameter('backend', value='rgbd'), Parameter('use_depth', value=False)], 'use_depth is false'),
             ([Parameter('backend', value='constant'), Parameter('constant.bogus', value=1)], 'constant.bogus')]
    if not torch.cuda.is_available():
        cases.append(([Parameter('backend', value='constant'), Parameter('device', value='cuda')],
                      'CUDA is not available'))
    for overrides, needle in cases:
        node = RelocalizeNode(context=context, namespace=f'/u{next(_ns)}', parameter_overrides=overrides)
        try:
            assert node.backend_error and needle in node.backend_error
            assert node.pipeline.estimator is None
        finally:
            node.shutdown()
            node.destroy_node()


def test_invalid_parameter_at_start_is_rejected_with_reason(context):
    from rclpy.exceptions import ParameterException

    for name, value, needle in (('device', 'tpu', 'device must be one of'),
                                ('image_transport', 'theora', 'image_transport must be one of'),
                                ('sync_slop', -1.0, 'sync_slop'),
                                ('min_confidence', 'high', 'min_confidence must be a float'),
                                ('max_image_size', 1.5, 'max_image_size')):
        with pytest.raises(ParameterException, match=needle):
            RelocalizeNode(context=context, namespace=f'/v{next(_ns)}',
                           parameter_overrides=[Parameter(name, value=value)])


def _same(a, b) -> bool:
    """Equal values of equal types (1, 1.0 and True differ); lists, tuples and arrays compare by items."""
    if not isinstance(a, (str, bytes)) and hasattr(a, '__len__') and hasattr(b, '__len__') \
            and not isinstance(b, (str, bytes)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def test_same_compares_types():
    assert _same([1.0, 2.0], (1.0, 2.0)) and _same('a', 'a') and _same(0, 0)
    assert not _same(1, 1.0) and not _same(True, 1) and not _same([720, 540], [720.0, 540.0])
    assert not _same([1.0], [1.0, 2.0]) and not _same('', None)


def test_config_yaml_holds_every_default_and_loads(context):
    from relpose_ros.backends import available, backend_class
    from relpose_ros.ros.params import flatten

    config = yaml.safe_load((REPO / 'config' / 'relocalize.yaml').read_text())
    params = config['relocalize_node']['ros__parameters']

    def get(key):
        node = params
        for part in key.split('.'):
            node = node[part]
        return node
    for spec in NODE_PARAMS:
        assert _same(get(spec.name), spec.default), f'{spec.name}: yaml {get(spec.name)!r} != node {spec.default!r}'
    assert params['constant'] == dict(ConstantEstimator.default_config)

    # every backend section, key by key, equals the defaults the node declares for that backend
    for name in available():
        assert name in params, f'config/relocalize.yaml has no section for the {name} backend'
        defaults, in_yaml = flatten(backend_class(name).default_config), flatten(params[name])
        assert set(in_yaml) == set(defaults), (f'config/relocalize.yaml {name}: missing '
                                               f'{sorted(set(defaults) - set(in_yaml))}, unknown '
                                               f'{sorted(set(in_yaml) - set(defaults))}')
        wrong = {k: (in_yaml[k], v) for k, v in defaults.items() if not _same(in_yaml[k], v)}
        assert not wrong, f'config/relocalize.yaml {name}: (yaml, backend default) differ: {wrong}'
        node = RelocalizeNode(context=context, namespace=f'/c{next(_ns)}',  # no params file: declared defaults
                              parameter_overrides=[Parameter('backend', value=name)])
        try:
            declared = {k: node.get_parameter(f'{name}.{k}').value for k in defaults}
        finally:
            node.shutdown()
            node.destroy_node()
        wrong = {k: (in_yaml[k], v) for k, v in declared.items() if v is not None and not _same(in_yaml[k], v)}
        assert not wrong, f'config/relocalize.yaml {name}: (yaml, declared by the node) differ: {wrong}'
    node = RelocalizeNode(context=context, cli_args=['--ros-args', '--params-file', str(REPO / 'config/relocalize.yaml'),
                                                     '-p', 'backend:=constant', '-p', 'constant.confidence:=0.7',
                                                     '-p', 'min_confidence:=1'])  # an int for a float is fine
    try:
        assert node.backend_error is None
        assert node.get_parameter('covariance.position_std_max').value == 2.0
        assert node.pipeline.estimator.confidence == pytest.approx(0.7)
        assert node.p['min_confidence'] == 1.0 and isinstance(node.p['min_confidence'], float)
    finally:
        node.shutdown()
        node.destroy_node()


@pytest.mark.data
def test_real_7scenes_frames_through_the_node_with_rgbd(harness, seven_scenes):
    """Real RGB-D frames over DDS (bgr8 with row padding, 16UC1 depth) with the rgbd backend: the
    published transform is the ground-truth T_ref_from_query within centimetres / a degree."""
    from relpose_ros.data.seven_scenes import SevenScenesSequence
    from relpose_ros.geometry import camera_centre_error, inverse_T, rotation_error_deg

    seq = SevenScenesSequence(seven_scenes)
    h = harness(params={'backend': 'rgbd', 'min_confidence': 0.1})
    assert h.node.backend_error is None, h.node.backend_error
    ref = seq.load(0).frame
    h.set_reference_topic(Frame(ref.rgb, ref.K, ref.depth, now_ns(), 'ref_cam'))
    for query_i in (15, 30):
        q = seq.load(query_i).frame
        stamp = now_ns()
        image, info, depth = frame_to_messages(Frame(q.rgb, q.K, q.depth, stamp, 'live_cam'))
        bgr = numpy_to_image_msg(np.ascontiguousarray(q.rgb[..., ::-1]), 'bgr8', stamp, 'live_cam',
                                 step=q.width * 3 + 32)
        h.publish(h.live_pubs, (bgr, info, depth))
        tmsg = h.transform_for(stamp, timeout=60)
        assert tmsg is not None, f'no pose for frame {query_i}: {h.node.diagnostics_values()}'
        T = msg_T(tmsg.transform.translation, tmsg.transform.rotation)
        T_gt = inverse_T(seq.gt_relative_pose(0, query_i))  # T_ref_from_query
        T_inv, T_gt_inv = inverse_T(T), inverse_T(T_gt)
        assert rotation_error_deg(T[:3, :3], T_gt[:3, :3]) < 2.0
        assert camera_centre_error(T_inv[:3, :3], T_inv[:3, 3], T_gt_inv[:3, :3], T_gt_inv[:3, 3]) < 0.05
    assert h.node.skipped == {}


def test_missing_depth_is_reported_on_rosout_and_diagnostics(harness):
    from rcl_interfaces.msg import Log

    h = harness(params={'sync_queue_size': 2})
    logs: list[str] = []
    h.tester.create_subscription(Log, '/rosout', lambda m: logs.append(m.msg), QoSProfile(depth=100))
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    for k in range(4):  # colour + camera_info only: nothing can be synchronised
        image, info, _ = frame_to_messages(make_frame(now_ns(), seed=k))
        h.publish(h.live_pubs[:2], (image, info))
        time.sleep(0.05)
    assert h.wait(lambda: h.node.live_sync.unmatched >= 2)
    assert h.wait(lambda: any('images without matching camera_info/depth' in m and 'depth' in m for m in logs), 5), logs
    assert h.wait(lambda: h.diagnostics and int(h.diagnostics[-1]['unsynchronised_frames']) >= 2, 3)
    assert h.transforms == [] and h.node.pipeline.stats.live_frames == 0


def test_distorted_camera_info_is_warned_once_and_still_used(harness):
    from rcl_interfaces.msg import Log

    h = harness(params={})
    logs: list[str] = []
    h.tester.create_subscription(Log, '/rosout', lambda m: logs.append(m.msg), QoSProfile(depth=100))
    h.set_reference_topic(make_frame(now_ns(), 'ref_cam'))
    stamps = []
    for k in range(2):
        image, info, depth = frame_to_messages(make_frame(now_ns(), seed=k))
        info.d = [0.1, -0.05, 0.0, 0.0, 0.0]
        stamps.append(stamp_to_ns(image.header.stamp))
        h.publish(h.live_pubs, (image, info, depth))
        assert h.transform_for(stamps[-1]) is not None
    assert h.wait(lambda: any('assumes rectified' in m for m in logs), 5)
    time.sleep(0.2)
    assert sum('assumes rectified' in m for m in logs) == 1
