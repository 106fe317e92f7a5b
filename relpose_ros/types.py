"""Core value types: :class:`Frame` (one posed-or-not camera image) and :class:`PoseEstimate`.

Pose convention (see README): an estimator returns ``T_query_from_ref = (R, t)`` with
``X_query = R @ X_ref + t``; camera frames are optical frames (x right, y down, z forward).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import FrameError


@dataclass
class Frame:
    """One camera frame.

    rgb: HxWx3 uint8 RGB image. K: 3x3 intrinsics (pixels). depth: optional HxW float32 metres,
    invalid pixels NaN. stamp_ns: capture time in nanoseconds. frame_id: camera (optical) frame.
    """

    rgb: np.ndarray
    K: np.ndarray
    depth: np.ndarray | None = None
    stamp_ns: int = 0
    frame_id: str = ''

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64)
        self.validate()

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def has_depth(self) -> bool:
        return self.depth is not None

    def validate(self) -> None:
        """Raise :class:`FrameError` naming the first inconsistency."""
        rgb = self.rgb
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise FrameError(f'rgb must be an HxWx3 array, got shape {getattr(rgb, "shape", None)}')
        if rgb.dtype != np.uint8:
            raise FrameError(f'rgb must be uint8, got {rgb.dtype}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise FrameError(f'rgb is empty ({rgb.shape[1]}x{rgb.shape[0]})')
        if self.K.shape != (3, 3):
            raise FrameError(f'K must be 3x3, got {self.K.shape}')
        if not np.all(np.isfinite(self.K)):
            raise FrameError('K contains NaN or Inf')
        fx, fy = self.K[0, 0], self.K[1, 1]
        if fx <= 0 or fy <= 0:
            raise FrameError(f'K has non-positive focal lengths (fx={fx}, fy={fy})')
        if not np.allclose(self.K[2], [0.0, 0.0, 1.0]) or self.K[1, 0] != 0:
            raise FrameError(f'K last row must be [0, 0, 1] and K[1,0] zero, got {self.K.tolist()}')
        if self.depth is not None:
            d = self.depth
            if not isinstance(d, np.ndarray) or d.ndim != 2:
                raise FrameError(f'depth must be an HxW array, got shape {getattr(d, "shape", None)}')
            if d.shape != rgb.shape[:2]:
                raise FrameError(f'depth size {d.shape[1]}x{d.shape[0]} differs from image size '
                                 f'{rgb.shape[1]}x{rgb.shape[0]}')
            if d.dtype != np.float32:
                raise FrameError(f'depth must be float32 metres, got {d.dtype}')


@dataclass
class PoseEstimate:
    """Result of one estimate: ``T_query_from_ref = (R, t)`` plus confidence and diagnostics.

    confidence: in [0, 1] (what the node gates and publishes). score: the backend's raw score
    (e.g. the soft inlier count). ok: False when no trustworthy pose exists; reason says why.
    timings: seconds per stage.
    """

    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))
    confidence: float = 0.0
    score: float = 0.0
    num_inliers: int = 0
    ok: bool = False
    reason: str = ''
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.confidence = float(self.confidence)
        self.score = float(self.score)
        self.num_inliers = int(self.num_inliers)
        if self.ok and not self.is_finite():
            self.ok, self.reason = False, 'non-finite pose'
        if not self.ok:
            self.confidence = 0.0
            if not self.is_finite():
                self.R, self.t = np.eye(3), np.zeros(3)
        self.confidence = float(np.clip(self.confidence, 0.0, 1.0)) if np.isfinite(self.confidence) else 0.0

    @classmethod
    def failure(cls, reason: str, timings: dict[str, float] | None = None, score: float = 0.0,
                num_inliers: int = 0) -> 'PoseEstimate':
        """A not-ok estimate: identity pose, confidence 0, with the reason."""
        return cls(ok=False, reason=reason, timings=dict(timings or {}), score=score if np.isfinite(score) else 0.0,
                   num_inliers=num_inliers)

    def is_finite(self) -> bool:
        return bool(np.all(np.isfinite(self.R)) and np.all(np.isfinite(self.t)))

    @property
    def T_query_from_ref(self) -> np.ndarray:
        """4x4 homogeneous transform mapping reference-camera points into the query camera."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.R, self.t
        return T

    @property
    def T_ref_from_query(self) -> np.ndarray:
        """4x4 pose of the query (live) camera in the reference camera frame (what ROS publishes)."""
        T = np.eye(4)
        T[:3, :3] = self.R.T
        T[:3, 3] = -self.R.T @ self.t
        return T
