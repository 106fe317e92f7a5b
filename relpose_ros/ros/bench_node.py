"""The rclpy side of ``relpose bench node``: per-stage timings of the node's own work per frame.

Stages (per frame, synthetic RGB + depth + CameraInfo):
  receive    rclpy deserialisation of the incoming Image (colour), Image (depth) and CameraInfo
  convert    messages -> Frame (validation, one copy per image)
  sync       three messages through the stamp synchroniser + hand-off to the worker mailbox
  build      TransformStamped + PoseWithCovarianceStamped + Float32
  publish    publishing those three on real rclpy publishers with a matched subscriber
and ``end_to_end``: the real RelocalizeNode fed through its subscription callbacks with the
``constant`` backend (delay 0), timed until the pose is published (includes the worker hand-off).
The table and the JSON result are made by :mod:`relpose_ros.bench.node`.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import rclpy
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rclpy.parameter import Parameter
from rclpy.serialization import deserialize_message, serialize_message
from std_msgs.msg import Float32

from ..types import Frame
from .conversions import frame_to_messages, messages_to_frame, numpy_to_image_msg
from .messages import CovarianceModel, pose_msg, transform_msg
from .node import RelocalizeNode
from .pipeline import RelocalizationPipeline
from .sync import StampSynchronizer

OVERHEAD_STAGES = ('receive', 'convert', 'sync', 'build', 'publish')  # summed into the node overhead


def time_ms(fn: Callable[[int], object], frames: int, warmup: int) -> np.ndarray:
    """Milliseconds of ``fn(i)`` for ``frames`` calls after ``warmup`` untimed ones."""
    for i in range(warmup):
        fn(i)
    out = np.empty(frames)
    for i in range(frames):
        t0 = time.perf_counter()
        fn(warmup + i)
        out[i] = time.perf_counter() - t0
    return out * 1e3


def measure_stages(width: int = 640, height: int = 480, frames: int = 300, warmup: int = 20,
                   encoding: str = 'rgb8', depth_encoding: str = '16UC1') -> dict[str, np.ndarray]:
    """Per-frame milliseconds of every stage in :data:`OVERHEAD_STAGES` and of ``end_to_end``.

    Runs its own rclpy context (localhost discovery unless the environment says otherwise). Raises
    RuntimeError when the node skipped a benchmark frame (the timings would not mean anything).
    """
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')  # read when the context starts
    h, w, n, warm = height, width, frames, warmup
    rng = np.random.default_rng(0)
    K = np.array([[525.0, 0, w / 2], [0, 525.0, h / 2], [0, 0, 1]])
    frame = Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K,
                  rng.uniform(0.3, 5.0, (h, w)).astype(np.float32), 1_000_000_000, 'camera_color_optical_frame')
    image, info, depth = frame_to_messages(frame, depth_encoding=depth_encoding)
    if encoding == 'bgr8':
        image = numpy_to_image_msg(np.ascontiguousarray(frame.rgb[..., ::-1]), 'bgr8', frame.stamp_ns, frame.frame_id)
    elif encoding != 'rgb8':
        raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    wire = [(serialize_message(m), type(m)) for m in (image, info, depth)]
    T = np.eye(4)
    T[:3, 3] = [0.1, 0.2, 0.3]
    model = CovarianceModel()
    stages: dict[str, np.ndarray] = {}

    stages['receive'] = time_ms(lambda i: [deserialize_message(b, t) for b, t in wire], n, warm)
    stages['convert'] = time_ms(lambda i: messages_to_frame(image, info, depth), n, warm)

    pipeline = RelocalizationPipeline(None, lambda *a: None)  # not started: just the mailbox
    sync = StampSynchronizer(('image', 'camera_info', 'depth'), 0.02, 10,
                             lambda msgs: pipeline.submit_live(frame))

    def sync_step(i: int) -> None:
        stamp = i * 33_000_000
        sync.add('image', stamp, image)
        sync.add('camera_info', stamp, info)
        sync.add('depth', stamp, depth)
    stages['sync'] = time_ms(sync_step, n, warm)

    def build(i: int):
        return (transform_msg(T, frame.stamp_ns, 'reference', frame.frame_id),
                pose_msg(T, frame.stamp_ns, 'reference', 0.8, model), Float32(data=0.8))
    stages['build'] = time_ms(build, n, warm)

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        pub_node = rclpy.create_node('bench_node_publisher', context=context)
        sub_node = rclpy.create_node('bench_node_subscriber', context=context)
        types = (TransformStamped, PoseWithCovarianceStamped, Float32)
        pubs = [pub_node.create_publisher(t, f'bench/out{k}', 10) for k, t in enumerate(types)]
        subs = [sub_node.create_subscription(t, f'bench/out{k}', lambda m: None, 10) for k, t in enumerate(types)]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs):
            time.sleep(0.01)
        msgs = build(0)
        stages['publish'] = time_ms(lambda i: [p.publish(m) for p, m in zip(pubs, msgs)], n, warm)
        del subs

        node = RelocalizeNode(context=context, namespace='/bench', parameter_overrides=[
            Parameter('backend', value='constant'), Parameter('min_confidence', value=0.0)])
        callbacks = {s.topic_name.rsplit('/', 1)[-1]: s.callback for s in node.subscriptions
                     if '/reference/' not in s.topic_name}
        node.pipeline.submit_reference(frame)
        node.pipeline.wait_idle()

        def end_to_end(i: int) -> None:
            stamp = (i + 2) * 33_000_000
            for m in (image, info, depth):
                m.header.stamp.sec, m.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            target = node.published_poses + 1
            callbacks['image'](image)
            callbacks['camera_info'](info)
            callbacks['depth'](depth)
            while node.published_poses < target:
                time.sleep(0)
        stages['end_to_end'] = time_ms(end_to_end, n, warm)
        skipped = dict(node.skipped)
        node.shutdown()
        node.destroy_node()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    if skipped:
        raise RuntimeError(f'benchmark frames were skipped by the node: {skipped}')
    return stages
