"""Output message builders: TransformStamped, PoseWithCovarianceStamped (confidence -> covariance),
DiagnosticArray. Message packages only, no rclpy.

Covariance model (diagonal, ROS order x, y, z, rot_x, rot_y, rot_z), with confidence c in [0, 1]:

    sigma(c) = sigma_min * (sigma_max / sigma_min) ** (1 - c)

separately for position (metres) and rotation (radians); the covariance is
``diag(sp^2, sp^2, sp^2, sr^2, sr^2, sr^2)``. sigma is sigma_min at c = 1, sigma_max at c = 0 and
grows geometrically (monotonically) as the confidence falls.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped

from ..geometry import matrix_to_quat
from .conversions import ns_to_stamp


@dataclass(frozen=True)
class CovarianceModel:
    """Standard deviations at confidence 1 (``*_min``) and 0 (``*_max``)."""

    position_std_min: float = 0.05
    position_std_max: float = 2.0
    rotation_std_min: float = 0.02
    rotation_std_max: float = 0.5

    def __post_init__(self) -> None:
        for lo, hi in (('position_std_min', 'position_std_max'), ('rotation_std_min', 'rotation_std_max')):
            a, b = getattr(self, lo), getattr(self, hi)
            if not (np.isfinite(a) and np.isfinite(b) and 0 < a <= b):
                raise ValueError(f'covariance: need 0 < {lo} <= {hi}, got {a} and {b}')

    def stds(self, confidence: float) -> tuple[float, float]:
        """(position std in m, rotation std in rad) for a confidence in [0, 1]."""
        c = float(np.clip(confidence if np.isfinite(confidence) else 0.0, 0.0, 1.0))
        sp = self.position_std_min * (self.position_std_max / self.position_std_min) ** (1.0 - c)
        sr = self.rotation_std_min * (self.rotation_std_max / self.rotation_std_min) ** (1.0 - c)
        return sp, sr

    def covariance(self, confidence: float) -> list[float]:
        """Row-major 6x6 covariance (36 floats) for PoseWithCovariance."""
        sp, sr = self.stds(confidence)
        return np.diag([sp * sp] * 3 + [sr * sr] * 3).reshape(-1).tolist()


def _fill_header(header, stamp_ns: int, frame_id: str) -> None:
    header.stamp = ns_to_stamp(stamp_ns)
    header.frame_id = frame_id


def transform_msg(T_ref_from_query: np.ndarray, stamp_ns: int, frame_id: str, child_frame_id: str) -> TransformStamped:
    """TransformStamped: pose of the live camera (child) in the reference camera frame (frame_id)."""
    T = np.asarray(T_ref_from_query, dtype=np.float64)
    w, x, y, z = matrix_to_quat(T[:3, :3])
    msg = TransformStamped()
    _fill_header(msg.header, stamp_ns, frame_id)
    msg.child_frame_id = child_frame_id
    tr = msg.transform
    tr.translation.x, tr.translation.y, tr.translation.z = (float(v) for v in T[:3, 3])
    tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w = float(x), float(y), float(z), float(w)
    return msg


def pose_msg(T_ref_from_query: np.ndarray, stamp_ns: int, frame_id: str, confidence: float,
             model: CovarianceModel) -> PoseWithCovarianceStamped:
    """PoseWithCovarianceStamped of the live camera in the reference frame, covariance from confidence."""
    T = np.asarray(T_ref_from_query, dtype=np.float64)
    w, x, y, z = matrix_to_quat(T[:3, :3])
    msg = PoseWithCovarianceStamped()
    _fill_header(msg.header, stamp_ns, frame_id)
    p = msg.pose.pose
    p.position.x, p.position.y, p.position.z = (float(v) for v in T[:3, 3])
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = float(x), float(y), float(z), float(w)
    msg.pose.covariance = model.covariance(confidence)
    return msg


def diagnostic_array(stamp_ns: int, name: str, hardware_id: str, level: int, message: str,
                     values: Mapping[str, Any]) -> DiagnosticArray:
    """One-status DiagnosticArray; values are formatted as strings (floats with 4 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return 'true' if v else 'false'
        if isinstance(v, float):
            return f'{v:.4g}'
        return str(v)

    status = DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id,
                              values=[KeyValue(key=k, value=fmt(v)) for k, v in values.items()])
    arr = DiagnosticArray(status=[status])
    _fill_header(arr.header, stamp_ns, '')
    return arr


__all__ = ['CovarianceModel', 'diagnostic_array', 'pose_msg', 'transform_msg']
