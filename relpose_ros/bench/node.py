"""``relpose bench node``: the node's own overhead per RGB + depth frame, estimator excluded.

Stages (per frame, synthetic 640x480 by default):
  receive    rclpy deserialisation of the incoming Image (rgb8), Image (depth) and CameraInfo
  convert    messages -> Frame (validation, one copy per image)
  sync       three messages through the stamp synchroniser + hand-off to the worker mailbox
  build      TransformStamped + PoseWithCovarianceStamped + Float32
  publish    publishing those three on real rclpy publishers with a matched subscriber
and ``end_to_end``: the real RelocalizeNode fed through its subscription callbacks with the
``constant`` backend (delay 0), timed until the pose is published (includes the worker hand-off).
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

TARGET_MS = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--frames', type=int, default=300, help='timed frames per stage (default 300)')
    parser.add_argument('--warmup', type=int, default=20, help='untimed frames first (default 20)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--encoding', choices=('rgb8', 'bgr8'), default='rgb8')
    parser.add_argument('--depth-encoding', choices=('16UC1', '32FC1'), default='16UC1')


def _time(fn, frames: int, warmup: int) -> np.ndarray:
    for i in range(warmup):
        fn(i)
    out = np.empty(frames)
    for i in range(frames):
        t0 = time.perf_counter()
        fn(warmup + i)
        out[i] = time.perf_counter() - t0
    return out * 1e3


def _summary(ms: np.ndarray) -> dict[str, float]:
    return {'mean_ms': float(ms.mean()), 'median_ms': float(np.median(ms)), 'p95_ms': float(np.percentile(ms, 95))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    import rclpy
    from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message, serialize_message
    from std_msgs.msg import Float32

    from ..ros.conversions import frame_to_messages, messages_to_frame, numpy_to_image_msg
    from ..ros.messages import CovarianceModel, pose_msg, transform_msg
    from ..ros.node import RelocalizeNode
    from ..ros.pipeline import RelocalizationPipeline
    from ..ros.sync import StampSynchronizer
    from ..types import Frame

    h, w, n, warm = args.height, args.width, args.frames, args.warmup
    rng = np.random.default_rng(0)
    K = np.array([[525.0, 0, w / 2], [0, 525.0, h / 2], [0, 0, 1]])
    frame = Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), K,
                  rng.uniform(0.3, 5.0, (h, w)).astype(np.float32), 1_000_000_000, 'camera_color_optical_frame')
    image, info, depth = frame_to_messages(frame, depth_encoding=args.depth_encoding)
    if args.encoding == 'bgr8':
        image = numpy_to_image_msg(np.ascontiguousarray(frame.rgb[..., ::-1]), 'bgr8', frame.stamp_ns, frame.frame_id)
    wire = [(serialize_message(m), type(m)) for m in (image, info, depth)]
    T = np.eye(4)
    T[:3, 3] = [0.1, 0.2, 0.3]
    model = CovarianceModel()
    stages: dict[str, np.ndarray] = {}

    stages['receive'] = _time(lambda i: [deserialize_message(b, t) for b, t in wire], n, warm)
    stages['convert'] = _time(lambda i: messages_to_frame(image, info, depth), n, warm)

    pipeline = RelocalizationPipeline(None, lambda *a: None)  # not started: just the mailbox
    sync = StampSynchronizer(('image', 'camera_info', 'depth'), 0.02, 10,
                             lambda msgs: pipeline.submit_live(frame))

    def sync_step(i: int) -> None:
        stamp = i * 33_000_000
        sync.add('image', stamp, image)
        sync.add('camera_info', stamp, info)
        sync.add('depth', stamp, depth)
    stages['sync'] = _time(sync_step, n, warm)

    def build(i: int):
        return (transform_msg(T, frame.stamp_ns, 'reference', frame.frame_id),
                pose_msg(T, frame.stamp_ns, 'reference', 0.8, model), Float32(data=0.8))
    stages['build'] = _time(build, n, warm)

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
        stages['publish'] = _time(lambda i: [p.publish(m) for p, m in zip(pubs, msgs)], n, warm)
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
        stages['end_to_end'] = _time(end_to_end, n, warm)
        skipped = dict(node.skipped)
        node.shutdown()
        node.destroy_node()
        pub_node.destroy_node()
        sub_node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    if skipped:
        raise RuntimeError(f'benchmark frames were skipped by the node: {skipped}')

    parts = ('receive', 'convert', 'sync', 'build', 'publish')
    result: dict[str, Any] = {
        'image': f'{w}x{h} {args.encoding} + {args.depth_encoding} depth + CameraInfo',
        'frames': n, 'cpu_count': os.cpu_count(), 'load_average_1min': os.getloadavg()[0],
        'stages': {k: _summary(v) for k, v in stages.items()},
    }
    result['overhead_ms'] = sum(result['stages'][k]['mean_ms'] for k in parts)
    result['target_ms'] = TARGET_MS
    result['meets_target'] = result['overhead_ms'] <= TARGET_MS
    _print_table(result, parts)
    return result


def _print_table(result: dict[str, Any], parts: tuple[str, ...]) -> None:
    print(f"relpose bench node: {result['image']}, {result['frames']} frames, "
          f"load average {result['load_average_1min']:.2f} on {result['cpu_count']} CPUs")
    print(f"{'stage':<12}{'mean ms':>10}{'median ms':>11}{'p95 ms':>9}")
    for name, s in result['stages'].items():
        if name == 'end_to_end':
            continue
        print(f"{name:<12}{s['mean_ms']:>10.3f}{s['median_ms']:>11.3f}{s['p95_ms']:>9.3f}")
    print(f"{'overhead':<12}{result['overhead_ms']:>10.3f}   (sum of stage means; target <= {result['target_ms']:g} ms: "
          f"{'OK' if result['meets_target'] else 'MISSED'})")
    e = result['stages']['end_to_end']
    print(f"{'end_to_end':<12}{e['mean_ms']:>10.3f}{e['median_ms']:>11.3f}{e['p95_ms']:>9.3f}"
          '   (node callbacks -> pose published, constant backend, no DDS receive)')
