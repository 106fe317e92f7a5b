"""Scale calibration of the regressed camera centre, fitted on held-out pairs (not in the paper).

A regressed direction d̂ that is off by an angle θ makes the centre estimate ŝ·d̂ worse than predicting zero
motion unless ŝ < 2·‖c‖·cos θ. When the direction error on unseen pairs is large (as it is when the head
generalises poorly), the centre error is minimised by shrinking the scale by the expected cos θ, something the
training loss cannot learn because the head's directions on its own training pairs are much better than on
new ones. The calibration is the least-squares factor on pairs the head never trained on:

    scalar:      ĉ_i = a · ŝ_i d̂_i
    confidence:  ĉ_i = max(a + b · k_i, 0) · ŝ_i d̂_i        (k_i = the match confidence in [0, 1])

with (a, b) = argmin Σ_i ‖(a + b k_i) ŝ_i d̂_i − c_i‖². The model stores (a, b) in its ``scale_calibration``
buffer (default (1, 0): no calibration), so the checkpoint the backend loads carries it.
"""
from __future__ import annotations

import numpy as np
import torch

CALIBRATION_MODES = ('none', 'scalar', 'confidence')


def fit_scale_calibration(scale: np.ndarray, direction: np.ndarray, confidence: np.ndarray, centre: np.ndarray,
                          mode: str) -> tuple[float, float]:
    """Least-squares (a, b) for ``mode`` from raw scales (N,), unit directions (N, 3), confidences (N,) and
    true centres (N, 3). ``none`` or no usable pairs give (1, 0)."""
    if mode not in CALIBRATION_MODES:
        raise ValueError(f'scale calibration mode must be one of {CALIBRATION_MODES}, got {mode!r}')
    u = np.asarray(scale, np.float64)[:, None] * np.asarray(direction, np.float64)     # (N, 3) raw centres
    c = np.asarray(centre, np.float64)
    k = np.asarray(confidence, np.float64)
    ok = np.isfinite(u).all(1) & np.isfinite(c).all(1) & np.isfinite(k)
    u, c, k = u[ok], c[ok], k[ok]
    uu, uc = (u * u).sum(1), (u * c).sum(1)                                            # (N,) |u|^2, u.c
    if mode == 'none' or len(u) == 0 or uu.sum() <= 0:
        return 1.0, 0.0
    if mode == 'scalar':
        return max(float(uc.sum() / uu.sum()), 0.0), 0.0
    A = np.array([[uu.sum(), (k * uu).sum()], [(k * uu).sum(), (k * k * uu).sum()]])
    rhs = np.array([uc.sum(), (k * uc).sum()])
    if abs(np.linalg.det(A)) < 1e-12 * max(A[0, 0] ** 2, 1e-30):    # confidences all equal: scalar fit
        return max(float(uc.sum() / uu.sum()), 0.0), 0.0
    a, b = np.linalg.solve(A, rhs)
    return float(a), float(b)


def calibration_factor(calibration: torch.Tensor, confidence: torch.Tensor) -> torch.Tensor:
    """Per-pair scale factor max(a + b·k, 0) (B,) from the (2,) buffer (a, b) and confidences k (B,)."""
    return (calibration[0] + calibration[1] * confidence).clamp(min=0.0)
