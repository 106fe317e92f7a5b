"""The MicKey backend inside relocalize_node over real rclpy / DDS: weights errors refuse, RGB-only poses publish."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

rclpy = pytest.importorskip('rclpy')

from geometry_msgs.msg import TransformStamped  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from relpose_ros.models.mickey import MickeyConfig, MickeyModel, export_official  # noqa: E402
from relpose_ros.ros.conversions import frame_to_messages, stamp_to_ns  # noqa: E402
from relpose_ros.ros.node import RelocalizeNode  # noqa: E402
from relpose_ros.types import Frame  # noqa: E402

from test_mickey_model import textured_image  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.usefixtures('one_torch_thread')]
K = np.array([[200.0, 0.0, 100.0], [0.0, 200.0, 75.0], [0.0, 0.0, 1.0]])






@pytest.fixture(scope='module')
def small_weights(tmp_path_factory):
    """A small (ViT-S-sized) MicKey saved in the official two-file layout."""
    torch.manual_seed(0)
    heads, backbone = export_official(MickeyModel(MickeyConfig('vits14')))
    d = tmp_path_factory.mktemp('mickey_node')
    torch.save({'state_dict': heads}, d / 'mickey.ckpt')
    torch.save(backbone, d / 'dinov2.pth')
    return d


def make_node(context, ns: str, params: dict) -> RelocalizeNode:
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return RelocalizeNode(context=context, namespace=ns, parameter_overrides=overrides)


def test_missing_or_wrong_weights_refuse_with_reason(context, small_weights, tmp_path):
    (tmp_path / 'broken.ckpt').write_bytes(b'\x00' * 100)
    cases = [({}, 'mickey.checkpoint is not set'),
             ({'mickey.checkpoint': str(tmp_path / 'none.ckpt')}, 'none.ckpt'),
             ({'mickey.checkpoint': str(tmp_path / 'broken.ckpt')}, 'cannot read weights file'),
             ({'mickey.checkpoint': str(small_weights / 'mickey.ckpt'),                # ViT-S files, ViT-L model
               'mickey.dinov2_weights': str(small_weights / 'dinov2.pth')}, 'mis-shaped')]
    for i, (params, needle) in enumerate(cases):
        node = make_node(context, f'/mk{i}', {'backend': 'mickey', 'use_depth': False, **params})
        try:
            assert node.backend_error and needle in node.backend_error, node.backend_error
            assert node.pipeline.estimator is None
            assert needle in node.diagnostics_values()['backend_error']
        finally:
            node.shutdown()
            node.destroy_node()


def test_rgb_only_pose_published(context, small_weights):
    ns = '/mk_ok'
    node = make_node(context, ns, {
        'backend': 'mickey', 'use_depth': False, 'min_confidence': 0.0,
        'mickey.checkpoint': str(small_weights / 'mickey.ckpt'),
        'mickey.dinov2_weights': str(small_weights / 'dinov2.pth'), 'mickey.backbone': 'vits14',
        'mickey.image_size': [168, 126], 'mickey.num_sample_sets': 4, 'mickey.min_inliers': 0})
    tester = rclpy.create_node('tester', namespace=ns, context=context)
    received: list[TransformStamped] = []
    lock = threading.Lock()

    def on_tf(msg):
        with lock:
            received.append(msg)

    reliable = QoSProfile(depth=10)
    tester.create_subscription(TransformStamped, 'relpose', on_tf, reliable)
    live = (tester.create_publisher(Image, 'image', qos_profile_sensor_data),
            tester.create_publisher(CameraInfo, 'camera_info', qos_profile_sensor_data))
    ref = (tester.create_publisher(Image, 'reference/image', reliable),
           tester.create_publisher(CameraInfo, 'reference/camera_info', reliable))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(tester)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()

    def wait(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            time.sleep(0.02)
        return pred()

    try:
        assert node.backend_error is None, node.backend_error
        assert wait(lambda: all(p.get_subscription_count() > 0 for p in live + ref), 10), 'DDS discovery timed out'
        image, info, _ = frame_to_messages(Frame(textured_image(150, 200), K, stamp_ns=time.time_ns(),
                                                 frame_id='ref_cam'))
        ref[0].publish(image)
        ref[1].publish(info)
        assert wait(lambda: node.pipeline.stats.references_set > 0, 30), 'reference not taken'
        stamp = time.time_ns()
        image, info, _ = frame_to_messages(Frame(textured_image(150, 200, dx=6, dy=2), K, stamp_ns=stamp,
                                                 frame_id='live_cam'))
        for _ in range(3):                      # sensor-data QoS is best effort: repeat until one pose arrives
            live[0].publish(image)
            live[1].publish(info)
            if wait(lambda: bool(received), 20):
                break
        with lock:
            assert received, f'no pose published: {node.diagnostics_values()}'
            msg = received[0]
        assert stamp_to_ns(msg.header.stamp) == stamp
        assert msg.header.frame_id == 'ref_cam' and msg.child_frame_id == 'live_cam'
        q = msg.transform.rotation
        assert abs(np.linalg.norm([q.w, q.x, q.y, q.z]) - 1.0) < 1e-6
        t = msg.transform.translation
        assert np.all(np.isfinite([t.x, t.y, t.z]))
    finally:
        node.shutdown()
        executor.remove_node(tester)
        executor.remove_node(node)
        executor.shutdown(timeout_sec=5.0)
        thread.join(5.0)
        node.destroy_node()
        tester.destroy_node()
