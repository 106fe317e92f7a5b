"""Replay a ROS 2 bag into ``relocalize_node`` over DDS and record everything it publishes.

:func:`replay_bag` streams the camera topics of a bag (MCAP or SQLite3; :mod:`relpose_ros.data.bag_stream`,
default topic names in :mod:`relpose_ros.data.bag_writer`), optionally spawns the real node as a subprocess
(``relocalize_node --ros-args -r __ns:=... -p ...``, :mod:`relpose_ros.ros.node_process`), publishes one chosen frame on the node's
``reference/*`` topics, waits until the node reports (``/diagnostics``) that the reference is set, then plays
the live frames on ``image`` / ``camera_info`` / ``depth`` at the recorded rate (or a chosen one), and records
``relpose`` (TransformStamped), ``relpose/confidence`` and ``/diagnostics`` with arrival times.

Messages are published as the bag's serialized CDR bytes (like ``ros2 bag play``); with ``restamp=True`` the
header stamp is rewritten to the send time (a 8-byte patch of the CDR header), so the node's own latency
diagnostics are meaningful. The result (:class:`ReplayResult`) has one :class:`ReplayFrame` per played frame:
its stamps, the published pose (or None), its confidence, the latency from sending the frame to receiving the
pose, and the bag's ground truth when it has one. A truncated MCAP bag is played up to its last complete frame
and the result is marked ``partial`` (with ``partial_reason``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# re-exported: the bag side and the node process used to live here
from ..data.bag_stream import (BagFrame, BagStream, cdr_restamp, cdr_stamp_ns, index_bag,  # noqa: F401
                               iter_frame_data, read_bag_stream)
from ..data.bag_writer import BagTopics
from ..errors import ConfigError, RelposeError
from ..geometry import make_T, quat_to_matrix, relative_pose
from .node_process import NodeProcess, node_command  # noqa: F401

CONFIDENCE_MATCH_S = 0.5        # a confidence belongs to the pose received at most this long before it
REORDER_S = 0.01                # ... or this long after it (different topics may arrive in either order)


# Fast DDS puts a message into shared memory only when it fits the *sender's* segment (default 512 KiB); a
# 640x480 rgb8 image (900 KiB) then goes over UDP in fragments, and a best-effort (sensor-data) subscriber such as
# the node loses most of them. The replay publisher therefore uses a participant profile with a large segment.
FASTDDS_SEGMENT_BYTES = 16 * 1024 * 1024
FASTDDS_PROFILE = f"""<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>relpose_large_shm</transport_id>
      <type>SHM</type>
      <segment_size>{FASTDDS_SEGMENT_BYTES}</segment_size>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="relpose_replay" is_default_profile="true">
    <rtps>
      <userTransports><transport_id>relpose_large_shm</transport_id></userTransports>
      <useBuiltinTransports>true</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""
_PROFILE_VARS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


@contextlib.contextmanager
def large_message_transport():
    """While active, Fast DDS participants created by this process use a profile with a large shared-memory
    segment, unless the user configured Fast DDS or chose another RMW. Only the first participant of a process
    reads the profile (Fast DDS loads it once), and child processes do not inherit it. Yields the profile path
    or None."""
    env = os.environ
    if any(v in env for v in _PROFILE_VARS) or env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        yield None
        return
    path = Path(tempfile.gettempdir()) / f'relpose_replay_fastdds_{FASTDDS_SEGMENT_BYTES >> 20}mb.xml'
    if not path.is_file() or path.read_text() != FASTDDS_PROFILE:
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(FASTDDS_PROFILE)
        tmp.replace(path)
    env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(path)
    try:
        yield str(path)
    finally:
        env.pop('FASTDDS_DEFAULT_PROFILES_FILE', None)


class ReplayError(RelposeError):
    """The node could not be started, never became ready, or the replay could not run."""


# ----------------------------------------------------------------------------- results


@dataclass
class ReplayFrame:
    """What happened to one played frame. Times are seconds since the first live frame was sent."""

    index: int                                  # position in the bag's frame list
    stamp_ns: int                               # header stamp in the bag
    sent_stamp_ns: int                          # header stamp as sent (differs with restamp)
    sent_s: float
    T_ref_from_query: np.ndarray | None = None  # published pose (relpose), None if nothing was published
    confidence: float | None = None
    received_s: float | None = None
    T_world_from_cam: np.ndarray | None = None  # ground truth from the bag, when present

    @property
    def published(self) -> bool:
        return self.T_ref_from_query is not None

    @property
    def status(self) -> str:
        """'published'; 'not published' (the node estimated it but the estimate failed or was gated: only its
        confidence came); 'dropped' (no output: replaced by a newer frame before the worker took it, or lost)."""
        if self.published:
            return 'published'
        return 'not published' if self.confidence is not None else 'dropped'

    @property
    def latency_s(self) -> float | None:
        return None if self.received_s is None else self.received_s - self.sent_s

    @property
    def T_query_from_ref(self) -> np.ndarray | None:
        """The estimate in the estimator convention (X_query = R X_ref + t)."""
        if self.T_ref_from_query is None:
            return None
        return np.linalg.inv(self.T_ref_from_query)


@dataclass
class ReplayResult:
    """Everything recorded during one replay."""

    bag: str
    reference_index: int
    reference_stamp_ns: int
    reference_T_world_from_cam: np.ndarray | None
    rate_hz: float
    frames: list[ReplayFrame]
    unmatched_confidences: list[float] = field(default_factory=list)  # of estimates not published (gated / failed)
    diagnostics: dict[str, str] = field(default_factory=dict)          # the node's last diagnostics values
    diagnostics_history: list[tuple[float, dict[str, str]]] = field(default_factory=list)  # (arrival s, values)
    node_command: list[str] = field(default_factory=list)
    node_log: str = ''
    startup_s: float = 0.0
    duration_s: float = 0.0
    partial: bool = False                   # only the intact prefix of a truncated bag was played
    partial_reason: str = ''

    @property
    def published(self) -> int:
        return sum(f.published for f in self.frames)

    @property
    def latencies_s(self) -> list[float]:
        return [f.latency_s for f in self.frames if f.latency_s is not None]

    @property
    def dropped_frames(self) -> int:
        """Frames without any output (the node's own latest-only count is ``diagnostics['dropped_frames']``)."""
        return sum(f.status == 'dropped' for f in self.frames)

    @property
    def node_dropped_frames(self) -> int | None:
        """The node's own count of frames its latest-only queue replaced (last diagnostics), None if unknown."""
        value = self.diagnostics.get('dropped_frames')
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    def gt_T_query_from_ref(self, frame: ReplayFrame) -> np.ndarray | None:
        """Ground-truth ``T_query_from_ref`` of a frame, when the bag has ground truth for it and the reference."""
        if frame.T_world_from_cam is None or self.reference_T_world_from_cam is None:
            return None
        return relative_pose(self.reference_T_world_from_cam, frame.T_world_from_cam)

    def to_dict(self) -> dict[str, Any]:
        def mat(T):
            return None if T is None else np.asarray(T).tolist()
        return {
            'bag': self.bag, 'reference_index': self.reference_index, 'reference_stamp_ns': self.reference_stamp_ns,
            'rate_hz': self.rate_hz, 'published': self.published, 'frames_sent': len(self.frames),
            'dropped_frames': self.dropped_frames, 'node_dropped_frames': self.node_dropped_frames,
            'unmatched_confidences': self.unmatched_confidences, 'partial': self.partial,
            'partial_reason': self.partial_reason,
            'startup_s': self.startup_s, 'duration_s': self.duration_s, 'diagnostics': self.diagnostics,
            'node_command': self.node_command,
            'frames': [{'index': f.index, 'stamp_ns': f.stamp_ns, 'sent_stamp_ns': f.sent_stamp_ns, 'sent_s': f.sent_s,
                        'status': f.status, 'confidence': f.confidence, 'latency_s': f.latency_s,
                        'T_ref_from_query': mat(f.T_ref_from_query), 'T_world_from_cam': mat(f.T_world_from_cam)}
                       for f in self.frames],
        }


# ----------------------------------------------------------------------------- replay


@dataclass
class ReplayOptions:
    """How to replay. ``rate_hz`` None plays at the recorded rate times ``speed``; ``spawn`` False talks to a
    node already running in ``namespace`` (its inputs must be the default relative names)."""

    reference_index: int = 0
    rate_hz: float | None = None
    speed: float = 1.0
    max_frames: int | None = None
    include_reference: bool = True          # also play the reference frame as a live frame
    use_depth: bool = True
    restamp: bool = False
    namespace: str | None = None            # None: /relpose_replay_<pid> (concurrent replays never collide)
    node_name: str = 'relocalize_node'
    spawn: bool = True
    backend: str = 'rgbd'
    min_confidence: float = 0.0             # of the spawned node: 0 records every ok estimate
    node_params: dict[str, Any] = field(default_factory=dict)
    node_log: Path | None = None
    startup_timeout_s: float = 60.0
    reference_timeout_s: float = 30.0
    drain_timeout_s: float = 10.0
    quiet_s: float = 1.5                    # stop draining after this long without output
    topics: BagTopics = field(default_factory=BagTopics)


class _Recorder:
    """rclpy side: publishers for the node's inputs, subscriptions to its outputs (own context and thread)."""

    def __init__(self, opts: ReplayOptions, image_transport: str, depth_transport: str | None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import TransformStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image
        from std_msgs.msg import Float32

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f'relpose_replay_{os.getpid()}', context=self.context)
        ns = opts.namespace.rstrip('/')
        self.ns = ns
        reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)   # small history: shared memory
        record = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        image_type = CompressedImage if image_transport == 'compressed' else Image
        image_suffix = '/compressed' if image_transport == 'compressed' else ''
        depth_type = CompressedImage if depth_transport == 'compressedDepth' else Image
        depth_suffix = '/compressedDepth' if depth_transport == 'compressedDepth' else ''

        def publishers(prefix: str) -> dict[str, Any]:
            pubs = {'image': self.node.create_publisher(image_type, f'{ns}/{prefix}image{image_suffix}', reliable),
                    'camera_info': self.node.create_publisher(CameraInfo, f'{ns}/{prefix}camera_info', reliable)}
            if depth_transport is not None:
                pubs['depth'] = self.node.create_publisher(depth_type, f'{ns}/{prefix}depth{depth_suffix}', reliable)
            return pubs

        self.live = publishers('')
        self.reference = publishers('reference/')
        self.lock = threading.Lock()
        self.poses: list[tuple[float, int, np.ndarray]] = []        # (arrival, stamp, T_ref_from_query)
        self.confidences: list[tuple[float, float]] = []            # (arrival, confidence)
        self.diagnostics: dict[str, str] = {}
        self.diagnostics_history: list[tuple[float, dict[str, str]]] = []   # (arrival, values)
        self.last_output = time.monotonic()
        self.relpose_topic = f'{ns}/relpose'
        self.node.create_subscription(TransformStamped, self.relpose_topic, self._on_pose, record)
        self.node.create_subscription(Float32, f'{ns}/relpose/confidence', self._on_confidence, record)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, record)
        self._status_names = {opts.node_name, f'{ns}/{opts.node_name}'}   # as get_name() / fully qualified
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, name='relpose-replay-spin', daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down while spinning
            pass

    def _on_pose(self, msg) -> None:
        t = msg.transform
        T = make_T(quat_to_matrix([t.rotation.w, t.rotation.x, t.rotation.y, t.rotation.z]),
                   [t.translation.x, t.translation.y, t.translation.z])
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        with self.lock:
            self.last_output = now = time.monotonic()
            self.poses.append((now, stamp, T))

    def _on_confidence(self, msg) -> None:
        with self.lock:
            self.last_output = now = time.monotonic()
            self.confidences.append((now, float(msg.data)))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.split(':', 1)[0].strip() in self._status_names:
                values = {kv.key: kv.value for kv in status.values}
                with self.lock:
                    self.diagnostics = values
                    self.diagnostics_history.append((time.monotonic(), values))

    def inputs_connected(self) -> bool:
        pubs = list(self.live.values()) + list(self.reference.values())
        return all(p.get_subscription_count() > 0 for p in pubs) and self.node.count_publishers(self.relpose_topic) > 0

    def publish(self, pubs: dict[str, Any], frame: BagFrame, stamp_ns: int | None) -> None:
        def data(raw: bytes) -> bytes:
            return raw if stamp_ns is None else cdr_restamp(raw, stamp_ns)
        pubs['camera_info'].publish(data(frame.camera_info))
        if 'depth' in pubs and frame.depth is not None:
            pubs['depth'].publish(data(frame.depth))
        pubs['image'].publish(data(frame.image))

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def match_confidences(pose_arrivals: list[float], confidence_arrivals: list[float],
                      window_s: float = CONFIDENCE_MATCH_S, reorder_s: float = REORDER_S) -> list[int | None]:
    """For each confidence (arrival order), the index of its pose or None (an estimate that was not published).

    The node publishes ``relpose`` then ``relpose/confidence`` for every published estimate and only the confidence
    for the others, so poses are an ordered subsequence of the confidences. A confidence takes the next unmatched
    pose if that pose arrived at most ``window_s`` before it (or ``reorder_s`` after it: the two topics may be
    delivered in either order); a pose much older than the confidence lost its own confidence and is skipped.
    """
    out: list[int | None] = []
    j = 0
    for c in confidence_arrivals:
        while j < len(pose_arrivals) and pose_arrivals[j] < c - window_s:
            j += 1                                       # that pose's confidence never came
        if j < len(pose_arrivals) and pose_arrivals[j] <= c + reorder_s:
            out.append(j)
            j += 1
        else:
            out.append(None)
    return out


def _int(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _wait(condition, timeout_s: float, node: NodeProcess | None, what: str, poll_s: float = 0.05) -> float:
    t0 = time.monotonic()
    while not condition():
        if node is not None and not node.alive():
            raise ReplayError(f'relocalize_node exited (code {node.proc.returncode}) while {what}; its output:\n'
                              f'{node.log_text()}')
        if time.monotonic() - t0 > timeout_s:
            tail = f'; node output:\n{node.log_text()}' if node is not None else ''
            raise ReplayError(f'timed out after {timeout_s:g} s {what}{tail}')
        time.sleep(poll_s)
    return time.monotonic() - t0


def replay_bag(bag: str | Path, options: ReplayOptions | None = None, progress=None) -> ReplayResult:
    """Play ``bag`` into a (spawned) relocalize_node and return what it published per frame.

    progress: optional callable ``(k, n)`` called after each live frame is sent.
    """
    opts = options or ReplayOptions()
    if opts.namespace is None:
        opts = dataclasses.replace(opts, namespace=f'/relpose_replay_{os.getpid()}')
    if opts.rate_hz is not None and not opts.rate_hz > 0:
        raise ConfigError(f'rate_hz must be positive, got {opts.rate_hz}')
    if not opts.speed > 0:
        raise ConfigError(f'speed must be positive, got {opts.speed}')
    stream = index_bag(bag, opts.topics, opts.use_depth, opts.max_frames)
    frames = stream.frames
    ref_i = opts.reference_index + len(frames) if opts.reference_index < 0 else opts.reference_index
    if not 0 <= ref_i < len(frames):
        raise ConfigError(f'reference_index {opts.reference_index} is out of range for the {len(frames)} frames '
                          f'of {bag}')
    live_indices = [i for i in range(len(frames)) if opts.include_reference or i != ref_i]
    if opts.rate_hz is not None:
        rate = float(opts.rate_hz)
        offsets = [k / rate for k in range(len(live_indices))]
    else:
        t0 = frames[live_indices[0]].stamp_ns
        offsets = [(frames[i].stamp_ns - t0) / 1e9 / opts.speed for i in live_indices]
        span = offsets[-1] if len(offsets) > 1 else 0.0
        rate = (len(offsets) - 1) / span if span > 0 else 0.0

    node = None
    command: list[str] = []
    if opts.spawn:
        params = {'backend': opts.backend, 'min_confidence': float(opts.min_confidence),
                  'use_depth': stream.depth_transport is not None, 'image_transport': stream.image_transport,
                  'diagnostics_period': 0.2}
        if stream.depth_transport is not None:
            params['depth_transport'] = stream.depth_transport
        params.update(opts.node_params)
        command = node_command(opts.namespace, params, opts.node_name)
    t_start = time.monotonic()
    with large_message_transport():
        recorder = _Recorder(opts, stream.image_transport, stream.depth_transport)
    try:
        if opts.spawn:
            node = NodeProcess(command, opts.node_log)
        _wait(recorder.inputs_connected, opts.startup_timeout_s, node,
              f'waiting for relocalize_node in {opts.namespace or "/"} to subscribe to its inputs')
        startup_s = time.monotonic() - t_start

        # reference: publish, wait for the node to report it, re-send if it was lost
        reference = next(iter_frame_data(stream, [ref_i]))
        _wait(lambda: bool(recorder.diagnostics), opts.startup_timeout_s, node,
              'waiting for the first /diagnostics of relocalize_node')
        if recorder.diagnostics.get('backend_error'):
            raise ReplayError(f"relocalize_node cannot estimate: {recorder.diagnostics['backend_error']}")
        before = _int(recorder.diagnostics.get('references_set'))
        deadline = time.monotonic() + opts.reference_timeout_s
        while True:
            recorder.publish(recorder.reference, reference, recorder.now_ns() if opts.restamp else None)
            try:
                _wait(lambda: recorder.diagnostics.get('reference_set') == 'true'
                      and _int(recorder.diagnostics.get('references_set')) > before,
                      min(3.0, max(0.1, deadline - time.monotonic())), node, 'waiting for the reference')
                break
            except ReplayError:
                if time.monotonic() >= deadline or (node is not None and not node.alive()):
                    raise ReplayError(f'relocalize_node did not accept the reference within '
                                      f'{opts.reference_timeout_s:g} s (diagnostics: {recorder.diagnostics}); '
                                      f'node output:\n{node.log_text() if node else ""}') from None

        # live frames at the chosen rate
        played: list[ReplayFrame] = []
        by_sent_stamp: dict[int, ReplayFrame] = {}
        t_live = time.monotonic()
        for k, (f, offset) in enumerate(zip(iter_frame_data(stream, live_indices), offsets)):
            delay = t_live + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            i = f.index
            stamp = recorder.now_ns() if opts.restamp else f.stamp_ns
            recorder.publish(recorder.live, f, stamp if opts.restamp else None)
            rf = ReplayFrame(index=i, stamp_ns=f.stamp_ns, sent_stamp_ns=stamp, sent_s=time.monotonic() - t_live,
                             T_world_from_cam=f.T_world_from_cam)
            played.append(rf)
            by_sent_stamp[stamp] = rf
            if progress is not None:
                progress(k + 1, len(live_indices))
            if node is not None and not node.alive():
                raise ReplayError(f'relocalize_node exited (code {node.proc.returncode}) during the replay; its '
                                  f'output:\n{node.log_text()}')

        # drain: until every frame is answered, or no output for quiet_s, or the drain timeout
        t_end = time.monotonic()
        while time.monotonic() - t_end < opts.drain_timeout_s:
            with recorder.lock:
                answered = len(recorder.confidences)
                quiet = time.monotonic() - max(recorder.last_output, t_end)
            if answered >= len(played) or quiet > opts.quiet_s:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # one more diagnostics period
        duration_s = time.monotonic() - t_live
    finally:
        node_log = ''
        if node is not None:
            node.stop()
            node_log = node.log_text(20000)
        recorder.close()

    # associate outputs with frames: poses by stamp, confidences by order (see match_confidences)
    published: list[tuple[float, ReplayFrame | None]] = []
    for arrival, stamp, T in recorder.poses:
        rf = by_sent_stamp.get(stamp)
        if rf is not None and rf.T_ref_from_query is None:
            rf.T_ref_from_query, rf.received_s = T, arrival - t_live
        else:
            rf = None                                   # not one of our frames (or a duplicate): still in order
        published.append((arrival, rf))
    unmatched: list[float] = []
    matches = match_confidences([a for a, _ in published], [a for a, _ in recorder.confidences])
    for (arrival, confidence), k in zip(recorder.confidences, matches):
        if k is not None:
            if published[k][1] is not None:
                published[k][1].confidence = confidence
            continue
        unmatched.append(confidence)
        # an estimate that was not published: attribute it to the newest frame sent before it without any output
        # (the worker always takes the newest frame; approximate when frames are lost on the way)
        t = arrival - t_live
        for frame in reversed(played):
            if frame.sent_s <= t and frame.T_ref_from_query is None and frame.confidence is None:
                frame.confidence = confidence
                break
    return ReplayResult(bag=str(bag), reference_index=ref_i, reference_stamp_ns=reference.stamp_ns,
                        reference_T_world_from_cam=reference.T_world_from_cam, rate_hz=rate, frames=played,
                        unmatched_confidences=unmatched, diagnostics=dict(recorder.diagnostics),
                        diagnostics_history=[(t - t_live, v) for t, v in recorder.diagnostics_history],
                        node_command=command, node_log=node_log, startup_s=startup_s, duration_s=duration_s,
                        partial=stream.partial, partial_reason=stream.partial_reason)
