"""Pose stages of the rgbd backend that are not RANSAC on 3-D/3-D (that is :mod:`relpose_ros.solver`):
PnP RANSAC when only the reference has depth, the final reprojection refinement, and the confidence.

Refinement: starting from RANSAC's pose, minimise with a Huber loss (``huber_px``) over the inliers

    sum_i rho(|pi(K_q (R X_i + t)) - u_i^q|^2) + sum_i rho(|pi(K_r R^T (Y_i - t)) - u_i^r|^2)

where X_i / Y_i are the reference / query 3-D points (the second sum only when the query has depth).
Keypoint positions are accurate to a pixel while depth carries centimetres of noise along the viewing ray,
so measuring residuals in the images weighs each coordinate by how well it is known.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation


def _project(P: np.ndarray, K: np.ndarray) -> np.ndarray:
    z = np.maximum(P[:, 2:3], 1e-6)
    return (P[:, :2] / z) * np.diag(K)[:2] + K[:2, 2]


def nearest_rotation(R: np.ndarray) -> np.ndarray:
    """Closest proper rotation (SVD projection, float64): float32 Kabsch output is off SO(3) by ~1e-7,
    which ``arccos``-based angle errors read as a few hundredths of a degree."""
    U, _, Vt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    return U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt


def refine_reprojection(R: np.ndarray, t: np.ndarray, X_ref: np.ndarray, uv_query: np.ndarray, K_query: np.ndarray,
                        Y_query: np.ndarray | None = None, uv_ref: np.ndarray | None = None,
                        K_ref: np.ndarray | None = None, huber_px: float = 1.5, max_iterations: int = 20
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``X_query = R X_ref + t`` on inlier correspondences (see module docstring); returns (R, t)."""
    R0 = np.asarray(R, dtype=np.float64)
    t0 = np.asarray(t, dtype=np.float64)
    two_way = Y_query is not None and uv_ref is not None and K_ref is not None

    def residuals(p: np.ndarray) -> np.ndarray:
        Rp = Rotation.from_rotvec(p[:3]).as_matrix() @ R0
        tp = t0 + p[3:]
        r = [(_project(X_ref @ Rp.T + tp, K_query) - uv_query).ravel()]
        if two_way:
            r.append((_project((Y_query - tp) @ Rp, K_ref) - uv_ref).ravel())
        return np.concatenate(r)

    sol = least_squares(residuals, np.zeros(6), loss='huber', f_scale=float(huber_px), method='trf',
                        max_nfev=int(max_iterations) * 7, x_scale=np.array([1e-2] * 3 + [1e-2] * 3))
    if not np.all(np.isfinite(sol.x)):
        return R0, t0
    return Rotation.from_rotvec(sol.x[:3]).as_matrix() @ R0, t0 + sol.x[3:]


def reprojection_errors(R: np.ndarray, t: np.ndarray, X_ref: np.ndarray, uv_query: np.ndarray,
                        K_query: np.ndarray) -> np.ndarray:
    """Pixel distance between projected reference points and query keypoints (inf behind the camera)."""
    P = X_ref @ np.asarray(R).T + np.asarray(t)
    err = np.linalg.norm(_project(P, K_query) - uv_query, axis=1)
    return np.where(P[:, 2] > 1e-6, err, np.inf)


def pnp_ransac(X_ref: np.ndarray, uv_query: np.ndarray, K_query: np.ndarray, reprojection_px: float,
               iterations: int, confidence: float, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """OpenCV PnP RANSAC (P3P minimal sets, then refinement on inliers); (R, t, inlier mask) or None."""
    if len(X_ref) < 4:
        return None
    cv2.setRNGSeed(int(seed))
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        X_ref.astype(np.float64), uv_query.astype(np.float64), np.asarray(K_query, np.float64), None,
        iterationsCount=int(iterations), reprojectionError=float(reprojection_px), confidence=float(confidence),
        flags=cv2.SOLVEPNP_AP3P)
    if not ok or inliers is None or len(inliers) < 4:
        return None
    R = cv2.Rodrigues(rvec)[0]
    mask = np.zeros(len(X_ref), bool)
    mask[inliers.ravel()] = True
    return R, tvec.ravel(), mask


def soft_inlier_confidence(soft_inliers: float, num_correspondences: int, saturation: float) -> float:
    """Confidence in [0, 1]: soft inlier ratio x saturating support,
    ``(S / N) * (1 - exp(-S / saturation))`` with S the soft inlier count and N the correspondences."""
    if num_correspondences <= 0 or not np.isfinite(soft_inliers):
        return 0.0
    ratio = soft_inliers / num_correspondences
    return float(np.clip(ratio * (1.0 - np.exp(-soft_inliers / max(saturation, 1e-9))), 0.0, 1.0))
