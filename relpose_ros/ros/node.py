"""``relocalize_node``: metric 6-DoF pose of the live camera relative to one reference keyframe.

Subscribes (relative, remappable): ``image``, ``camera_info``, ``depth`` (live) and
``reference/image``, ``reference/camera_info``, ``reference/depth``; publishes ``relpose``
(TransformStamped, T_ref_from_query), ``relpose/pose`` (PoseWithCovarianceStamped),
``relpose/confidence`` (Float32) and ``/diagnostics``; services ``~/set_reference`` and
``~/clear_reference`` (std_srvs/Trigger). See docs/node.md.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import Trigger

from ..backends import backend_class, create
from ..errors import ConfigError, FrameError
from ..types import Frame, PoseEstimate
from .conversions import InputError, messages_to_frame, stamp_to_ns
from .messages import CovarianceModel, diagnostic_array, pose_msg, transform_msg
from .params import (NODE_PARAM_NAMES, NODE_PARAMS, SPECS, ParamSpec, check_covariance, check_value,
                     coerce_backend_value, flatten, ros_default, unflatten)
from .pipeline import RelocalizationPipeline
from .sync import StampSynchronizer

LOG_THROTTLE_S = 5.0
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
_IGNORED_OVERRIDES = ('use_sim_time', 'start_type_description_service', 'qos_overrides.')


class RelocalizeNode(Node):
    """The relocalisation node. ``Node`` keyword arguments (e.g. ``parameter_overrides``) pass through."""

    def __init__(self, node_name: str = 'relocalize_node', **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.skipped: Counter[str] = Counter()  # bad input frames by cause
        self.published_poses = 0
        self.gated_poses = 0
        self.last_confidence = float('nan')
        self.last_inliers = 0
        self.last_latency_s = float('nan')
        self._max_latency_s = 0.0
        self._last_log: dict[str, float] = {}
        self._logged_once: set[str] = set()
        self._rate_mark = (time.monotonic(), 0, 0)  # (time, live frames, estimates)
        self._rates = (0.0, 0.0)

        self.p: dict[str, Any] = {}
        self.add_on_set_parameters_callback(self._validate_parameters)
        self._declare_node_parameters()
        self.add_post_set_parameters_callback(self._parameters_changed)
        self.covariance = self._covariance_model()

        self.backend = self.p['backend']
        estimator, self.backend_error = self._configure_backend()
        self.device = str(estimator.device) if estimator is not None else self.p['device']
        if self.backend_error:
            self.get_logger().error(f"backend '{self.backend}' is not usable: {self.backend_error} -- the node runs "
                                    'but publishes no pose until this is fixed (see /diagnostics)')
        self.pipeline = RelocalizationPipeline(estimator, self._on_result, self.p['max_image_size'],
                                               on_error=lambda m: self._log_throttled('worker', m))

        self.pub_transform = self.create_publisher(TransformStamped, 'relpose', OUTPUT_QOS)
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, 'relpose/pose', OUTPUT_QOS)
        self.pub_confidence = self.create_publisher(Float32, 'relpose/confidence', OUTPUT_QOS)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', OUTPUT_QOS)

        self.live_sync = self._subscribe_camera('', self._on_live_set)
        self.reference_sync = self._subscribe_camera('reference/', self._on_reference_set)
        self.create_service(Trigger, '~/set_reference', self._srv_set_reference)
        self.create_service(Trigger, '~/clear_reference', self._srv_clear_reference)
        self._tf_broadcaster = self._make_tf_broadcaster() if self.p['publish_tf'] else None
        self.tf_status = ('off' if not self.p['publish_tf'] else
                          'broadcasting' if self._tf_broadcaster is not None else 'unavailable: tf2_ros not importable')
        self.create_timer(self.p['diagnostics_period'], self.publish_diagnostics)
        self.pipeline.start()
        self.get_logger().info(
            f"relocalize_node ready: backend={self.backend} device={self.device} "
            f"image_transport={self.p['image_transport']} use_depth={self.p['use_depth']}; "
            f"waiting for a reference on {self.resolve_topic_name('reference/image')} or ~/set_reference")

    # ------------------------------------------------------------------ parameters

    def _descriptor(self, spec: ParamSpec) -> ParameterDescriptor:
        # floats are dynamically typed so that YAML / command-line integers (min_confidence: 1) are
        # accepted; _validate_parameters checks the type and range of every value itself
        d = ParameterDescriptor(description=spec.description, read_only=spec.read_only,
                                dynamic_typing=isinstance(spec.default, float))
        if spec.choices:
            d.additional_constraints = 'one of: ' + ', '.join(spec.choices)
        if spec.range is not None:
            if isinstance(spec.default, float):
                d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]),
                                                             to_value=float(spec.range[1]), step=0.0)]
            else:
                d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
        return d

    def _declare_node_parameters(self) -> None:
        for spec in NODE_PARAMS:
            self.declare_parameter(spec.name, spec.default, self._descriptor(spec))
            self.p[spec.name] = _typed(spec, self.get_parameter(spec.name).value)
        overrides = getattr(self, '_parameter_overrides', {}) or {}
        backends = tuple(n + '.' for n in _known_backend_names())
        unknown = sorted(k for k in overrides if k not in NODE_PARAM_NAMES and not k.startswith(backends)
                         and not k.startswith(_IGNORED_OVERRIDES))
        if unknown:
            self.get_logger().warning(f"ignoring unknown parameters: {', '.join(unknown)} (known: "
                                      f"{', '.join(sorted(NODE_PARAM_NAMES))} and <backend>.<key>)")

    def _validate_parameters(self, params: list) -> SetParametersResult:
        merged = {k: self.p.get(k, SPECS[k].default) for k in SPECS}
        for param in params:
            spec = SPECS.get(param.name)
            if spec is None:
                continue
            reason = check_value(spec, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
            merged[param.name] = param.value
        reason = check_covariance(merged)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _parameters_changed(self, params: list) -> None:
        for param in params:
            if param.name in SPECS:
                self.p[param.name] = _typed(SPECS[param.name], param.value)
        if not hasattr(self, 'pipeline'):
            return
        self.covariance = self._covariance_model()
        self.live_sync.slop_s = self.reference_sync.slop_s = float(self.p['sync_slop'])

    def _covariance_model(self) -> CovarianceModel:
        return CovarianceModel(*(float(self.p[f'covariance.{k}']) for k in
                                 ('position_std_min', 'position_std_max', 'rotation_std_min', 'rotation_std_max')))

    def _configure_backend(self):
        """(estimator, None) or (None, reason). Never raises: a bad backend config must not kill the node."""
        name = self.backend
        try:
            cls = backend_class(name)
        except ConfigError as exc:
            return None, str(exc)
        except Exception as exc:  # e.g. the backend module fails to import
            return None, f'cannot load backend {name!r}: {type(exc).__name__}: {exc}'
        try:
            defaults = flatten(cls.default_config)
            flat: dict[str, Any] = {}
            for key, default in defaults.items():
                pname = f'{name}.{key}'
                desc = ParameterDescriptor(description=f'{name} backend parameter {key} (default {default!r}); '
                                                       'read at start-up', dynamic_typing=True, read_only=True)
                self.declare_parameter(pname, ros_default(default), desc)
                flat[key] = coerce_backend_value(pname, default, self.get_parameter(pname).value)
            overrides = getattr(self, '_parameter_overrides', {}) or {}
            unknown = sorted(k for k in overrides if k.startswith(name + '.') and k[len(name) + 1:] not in defaults)
            if unknown:
                raise ConfigError(f"unknown parameters for backend '{name}': {', '.join(unknown)}; known: "
                                  f"{', '.join(sorted(defaults)) or '(none)'}")
            if cls.depth_usage == 'reference' and not self.p['use_depth']:
                raise ConfigError(f"backend '{name}' needs a reference depth image but use_depth is false; set "
                                  'use_depth: true and provide the depth topics, or choose another backend')
            return create(name, unflatten(flat), self.p['device']), None
        except ConfigError as exc:
            return None, str(exc)
        except Exception as exc:
            return None, f'{type(exc).__name__}: {exc}'

    # ------------------------------------------------------------------ inputs

    def _subscribe_camera(self, prefix: str, on_set) -> StampSynchronizer:
        channels = ('image', 'camera_info', 'depth') if self.p['use_depth'] else ('image', 'camera_info')
        sync = StampSynchronizer(channels, self.p['sync_slop'], self.p['sync_queue_size'], on_set)
        qos = qos_profile_sensor_data
        if self.p['image_transport'] == 'compressed':
            self.create_subscription(CompressedImage, self.resolve_topic_name(prefix + 'image') + '/compressed',
                                     self._input_callback(sync, 'image'), qos)
        else:
            self.create_subscription(Image, prefix + 'image', self._input_callback(sync, 'image'), qos)
        self.create_subscription(CameraInfo, prefix + 'camera_info', self._input_callback(sync, 'camera_info'), qos)
        if self.p['use_depth']:
            if self.p['depth_transport'] == 'compressedDepth':
                self.create_subscription(CompressedImage,
                                         self.resolve_topic_name(prefix + 'depth') + '/compressedDepth',
                                         self._input_callback(sync, 'depth'), qos)
            else:
                self.create_subscription(Image, prefix + 'depth', self._input_callback(sync, 'depth'), qos)
        return sync

    def _input_callback(self, sync: StampSynchronizer, channel: str):
        def callback(msg) -> None:
            try:
                unmatched = sync.unmatched
                sync.add(channel, stamp_to_ns(msg.header.stamp), msg)
                if sync.unmatched > unmatched:
                    self._log_unsynchronised(sync)
            except Exception as exc:  # never let a message kill the executor
                self._skip('internal_error', f'{channel} message dropped: {type(exc).__name__}: {exc}')
        return callback

    def _log_unsynchronised(self, sync: StampSynchronizer) -> None:
        kind = 'reference' if sync is self.reference_sync else 'live'
        silent = [c for c, s in sync.last_stamps.items() if s is None]
        if silent:
            hint = (f"nothing received yet on {', '.join(silent)}: check the topic remaps"
                    + (' (or set use_depth:=false)' if 'depth' in silent else ''))
        else:
            stamps = ', '.join(f'{c} {s * 1e-9:.3f}' for c, s in sync.last_stamps.items())
            hint = (f'latest stamps: {stamps} s; publish them with the image stamp or raise sync_slop '
                    f'(now {sync.slop_s:g} s)')
        self._log_throttled(f'unsynchronised_{kind}', f'{kind} images without matching '
                            f"{'/'.join(sync.channels[1:])} within sync_slop ({sync.unmatched} so far): {hint}")

    def _to_frame(self, msgs: dict, kind: str) -> Frame | None:
        try:
            return messages_to_frame(msgs['image'], msgs['camera_info'], msgs.get('depth'), self.p['depth_scale'])
        except InputError as exc:
            self._skip(exc.cause, f'{kind} frame skipped: {exc}')
        except FrameError as exc:
            self._skip('invalid_frame', f'{kind} frame skipped: {exc}')
        except Exception as exc:
            self._skip('conversion_error', f'{kind} frame skipped: {type(exc).__name__}: {exc}')
        return None

    def _warn_if_distorted(self, info: CameraInfo) -> None:
        if 'distortion' not in self._logged_once and any(abs(float(v)) > 1e-9 for v in info.d):
            self._log_once('distortion', f'camera_info has distortion coefficients ({info.distortion_model}: '
                                         f'{[round(float(v), 4) for v in info.d]}); relpose assumes rectified '
                                         'images: subscribe to the rectified image topic (e.g. image_rect)')

    def _on_live_set(self, msgs: dict) -> None:
        self._warn_if_distorted(msgs['camera_info'])
        frame = self._to_frame(msgs, 'live')
        if frame is not None:
            self.pipeline.submit_live(frame)

    def _on_reference_set(self, msgs: dict) -> None:
        frame = self._to_frame(msgs, 'reference')
        if frame is not None:
            self.pipeline.submit_reference(frame)
            self.get_logger().info(f'new reference from the reference topics (frame_id={frame.frame_id!r}, '
                                   f'{frame.width}x{frame.height})')

    def _skip(self, cause: str, message: str) -> None:
        self.skipped[cause] += 1
        self._log_throttled(cause, f'{message} [cause {cause}: {self.skipped[cause]} so far; '
                                   f'logged at most every {LOG_THROTTLE_S:g} s]')

    def _log_throttled(self, key: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= LOG_THROTTLE_S:
            self._last_log[key] = now
            self.get_logger().warning(message)

    def _log_once(self, key: str, message: str, error: bool = False) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            (self.get_logger().error if error else self.get_logger().warning)(message)

    # ------------------------------------------------------------------ services

    def _srv_set_reference(self, request, response):
        if self.backend_error:
            response.success, response.message = False, f'backend not usable: {self.backend_error}'
            return response
        self.pipeline.request_reference()
        response.success, response.message = True, 'the next live frame becomes the reference'
        self.get_logger().info('set_reference: the next live frame becomes the reference')
        return response

    def _srv_clear_reference(self, request, response):
        self.pipeline.clear_reference()
        response.success, response.message = True, 'reference cleared; publishing nothing until a new one is set'
        self.get_logger().info('clear_reference: reference cleared')
        return response

    # ------------------------------------------------------------------ outputs (worker thread)

    def _on_result(self, live: Frame, est: PoseEstimate, reference: Frame) -> None:
        frame_id = self.p['reference_frame_id'] or reference.frame_id
        confidence = float(est.confidence)
        self.last_confidence, self.last_inliers = confidence, est.num_inliers
        self.last_latency_s = (self.get_clock().now().nanoseconds - live.stamp_ns) * 1e-9
        self._max_latency_s = max(self._max_latency_s, self.last_latency_s)
        if est.ok and confidence >= self.p['min_confidence']:
            T = est.T_ref_from_query
            tmsg = transform_msg(T, live.stamp_ns, frame_id, live.frame_id)
            self.pub_transform.publish(tmsg)
            self.pub_pose.publish(pose_msg(T, live.stamp_ns, frame_id, confidence, self.covariance))
            self.published_poses += 1
            if self._tf_broadcaster is not None:
                if frame_id == live.frame_id or not frame_id or not live.frame_id:
                    self._log_once('tf_ids', f'publish_tf: not broadcasting: reference frame {frame_id!r} and live '
                                             f'frame {live.frame_id!r} must differ and be non-empty; set the '
                                             'reference_frame_id parameter', error=True)
                else:
                    self._tf_broadcaster.sendTransform(tmsg)
        else:
            self.gated_poses += 1
            if not est.ok:
                self._log_throttled('estimate_failed', f'no pose for the frame at {live.stamp_ns} ns: {est.reason}')
        self.pub_confidence.publish(Float32(data=confidence))

    def _make_tf_broadcaster(self):
        try:
            from tf2_ros import TransformBroadcaster
        except ImportError:
            self._log_once('tf2', 'publish_tf is true but tf2_ros is not importable: not broadcasting /tf '
                                  '(the relpose topic still carries the same transform)')
            return None
        return TransformBroadcaster(self)

    # ------------------------------------------------------------------ diagnostics

    def diagnostics_values(self) -> dict[str, Any]:
        """Everything /diagnostics reports, as a dict (also handy for tests and tools)."""
        s = self.pipeline.stats
        now = time.monotonic()
        t0, live0, est0 = self._rate_mark
        if now - t0 >= 0.5:
            self._rates = ((s.live_frames - live0) / (now - t0), (s.estimates - est0) / (now - t0))
            self._rate_mark = (now, s.live_frames, s.estimates)
        ref = self.pipeline.reference_frame
        values: dict[str, Any] = {
            'backend': self.backend, 'device': self.device,
            'backend_error': self.backend_error or '',
            'reference_set': ref is not None,
            'reference_frame_id': (self.p['reference_frame_id'] or ref.frame_id) if ref is not None else '',
            'reference_requested': self.pipeline.reference_requested,
            'input_rate_hz': self._rates[0], 'processing_rate_hz': self._rates[1],
            'latency_ms': self.last_latency_s * 1e3, 'max_latency_ms': self._max_latency_s * 1e3,
            'live_frames': s.live_frames, 'dropped_frames': s.dropped_frames,
            'frames_without_reference': s.frames_without_reference, 'stale_frames': s.stale_frames,
            'estimates': s.estimates, 'failed_estimates': s.failed_estimates,
            'published_poses': self.published_poses, 'gated_poses': self.gated_poses,
            'last_confidence': self.last_confidence, 'last_inliers': self.last_inliers,
            'last_estimate_ms': s.last_estimate_s * 1e3,
            'references_set': s.references_set, 'reference_errors': s.reference_errors,
            'last_reference_error': s.last_reference_error, 'tf': self.tf_status,
            'unsynchronised_frames': self.live_sync.unmatched,
            'skipped_frames': sum(self.skipped.values()),
        }
        for cause, n in sorted(self.skipped.items()):
            values[f'skipped.{cause}'] = n
        return values

    def publish_diagnostics(self) -> None:
        try:
            values = self.diagnostics_values()
            self._max_latency_s = 0.0
            if self.backend_error:
                level, message = DiagnosticStatus.ERROR, f'backend not usable: {self.backend_error}'
            elif not values['reference_set']:
                level, message = DiagnosticStatus.WARN, 'no reference set: publishing nothing'
            elif values['skipped_frames'] and values['live_frames'] == 0:
                level, message = DiagnosticStatus.WARN, 'all input frames are skipped (see skipped.*)'
            else:
                level, message = DiagnosticStatus.OK, 'relocalising'
            self.pub_diagnostics.publish(diagnostic_array(
                self.get_clock().now().nanoseconds, f'{self.get_fully_qualified_name()}: relocalisation',
                f'{self.backend}@{self.device}', level[0], message, values))
        except Exception as exc:
            self._log_throttled('diagnostics', f'diagnostics failed: {type(exc).__name__}: {exc}')

    def shutdown(self) -> None:
        """Stop the worker thread (call before destroy_node)."""
        self.pipeline.stop()


def _typed(spec: ParamSpec, value: Any) -> Any:
    """An integer given for a float parameter, as float."""
    return float(value) if isinstance(spec.default, float) and isinstance(value, int) else value


def _known_backend_names() -> list[str]:
    from ..backends import available
    return available()


def main(args: list[str] | None = None) -> int:
    """Console entry point ``relocalize_node`` (accepts ``--ros-args ...``)."""
    from rclpy.exceptions import ParameterException

    with rclpy.init(args=args if args is not None else sys.argv):
        try:
            node = RelocalizeNode()
        except (ParameterException, ConfigError) as exc:
            print(f'relocalize_node: invalid parameter: {exc}', file=sys.stderr)
            return 2
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            node.shutdown()
            executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
    return 0


if __name__ == '__main__':
    sys.exit(main())
