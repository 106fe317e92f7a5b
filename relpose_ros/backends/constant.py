"""``constant``: returns one configured pose for every frame (node wiring and integration tests).

Config: ``rotation_wxyz`` (unit quaternion, normalised), ``translation`` (metres), ``confidence``
in [0, 1], ``delay_s`` (sleep per estimate, to emulate a slow backend). Images are ignored.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..geometry import quat_to_matrix
from ..types import Frame, PoseEstimate
from .base import Estimator, Reference


class ConstantEstimator(Estimator):
    """Returns ``T_query_from_ref = (R(rotation_wxyz), translation)`` with a fixed confidence."""

    name = 'constant'
    depth_usage = 'none'
    default_config: Mapping[str, Any] = {
        'rotation_wxyz': [1.0, 0.0, 0.0, 0.0],
        'translation': [0.0, 0.0, 0.0],
        'confidence': 1.0,
        'delay_s': 0.0,
    }

    def __init__(self, config: Mapping[str, Any] | None = None, device: str = 'auto') -> None:
        super().__init__(config, device)
        c = self.config
        try:
            q = np.asarray(c['rotation_wxyz'], dtype=np.float64).reshape(4)
            t = np.asarray(c['translation'], dtype=np.float64).reshape(3)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'constant: rotation_wxyz needs 4 numbers and translation 3 numbers ({exc})') from exc
        if not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-9:
            raise ConfigError(f'constant: rotation_wxyz must be a finite non-zero quaternion, got {q.tolist()}')
        if not np.all(np.isfinite(t)):
            raise ConfigError(f'constant: translation must be finite, got {t.tolist()}')
        confidence, delay = float(c['confidence']), float(c['delay_s'])
        if not 0.0 <= confidence <= 1.0:
            raise ConfigError(f'constant: confidence must be in [0, 1], got {confidence}')
        if not 0.0 <= delay <= 60.0:
            raise ConfigError(f'constant: delay_s must be in [0, 60] seconds, got {delay}')
        self.R, self.t = quat_to_matrix(q), t
        self.confidence, self.delay_s = confidence, delay

    def prepare_reference(self, frame: Frame) -> Reference:
        return Reference(frame=frame)

    def estimate(self, reference: Reference, frame: Frame) -> PoseEstimate:
        t0 = time.perf_counter()
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        return PoseEstimate(R=self.R, t=self.t, confidence=self.confidence, score=self.confidence,
                            ok=True, timings={'estimate': time.perf_counter() - t0})
