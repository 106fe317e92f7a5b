"""Geometry: rotations (transforms3d), rigid transforms, pose errors, intrinsics, back-projection,
and the batched weighted Kabsch / Procrustes solver in torch.

Quaternions are (w, x, y, z) as in transforms3d and kornia; ROS messages store x, y, z, w
(:func:`quat_wxyz_to_xyzw`).
"""
from __future__ import annotations

import numpy as np
import torch
import transforms3d.quaternions as tq

# ----------------------------------------------------------------------------- rotations


def quat_to_matrix(q_wxyz) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> 3x3 rotation matrix (the quaternion is normalised first)."""
    q = np.asarray(q_wxyz, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f'invalid quaternion {q.tolist()}')
    return tq.quat2mat(q / n)


def matrix_to_quat(R) -> np.ndarray:
    """3x3 rotation matrix -> unit quaternion (w, x, y, z) with w >= 0."""
    q = tq.mat2quat(np.asarray(R, dtype=np.float64))
    q = q / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def quat_wxyz_to_xyzw(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.array([q[1], q[2], q[3], q[0]])


def quat_xyzw_to_wxyz(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.array([q[3], q[0], q[1], q[2]])


# ----------------------------------------------------------------------------- transforms


def make_T(R, t) -> np.ndarray:
    """4x4 homogeneous transform from R (3x3) and t (3,)."""
    T = np.eye(4)
    T[:3, :3] = np.asarray(R, dtype=np.float64)
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def inverse_T(T) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def compose(*Ts) -> np.ndarray:
    """Product T1 @ T2 @ ... of 4x4 transforms."""
    out = np.eye(4)
    for T in Ts:
        out = out @ np.asarray(T, dtype=np.float64)
    return out


def relative_pose(T_world_from_ref, T_world_from_query) -> np.ndarray:
    """``T_query_from_ref`` from two camera-to-world poses."""
    return inverse_T(T_world_from_query) @ np.asarray(T_world_from_ref, dtype=np.float64)


def camera_centre(R, t) -> np.ndarray:
    """Centre of the camera whose world-to-camera pose is (R, t): ``-R^T t``."""
    R = np.asarray(R, dtype=np.float64)
    return -R.T @ np.asarray(t, dtype=np.float64).reshape(3)


# ----------------------------------------------------------------------------- pose errors


def rotation_error_deg(R_est, R_gt) -> float:
    """Angle of ``R_est R_gt^T`` in degrees."""
    M = np.asarray(R_est, dtype=np.float64) @ np.asarray(R_gt, dtype=np.float64).T
    c = np.clip((np.trace(M) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(c)))


def camera_centre_error(R_est, t_est, R_gt, t_gt) -> float:
    """Distance (m) between estimated and true camera centres."""
    return float(np.linalg.norm(camera_centre(R_est, t_est) - camera_centre(R_gt, t_gt)))


def translation_direction_error_deg(t_est, t_gt, eps: float = 1e-9) -> float:
    """Angle (deg) between estimated and true translation vectors (NaN if either is ~zero)."""
    a, b = np.asarray(t_est, dtype=np.float64).reshape(3), np.asarray(t_gt, dtype=np.float64).reshape(3)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na < eps or nb < eps:
        return float('nan')
    return float(np.degrees(np.arccos(np.clip(a @ b / (na * nb), -1.0, 1.0))))


# ----------------------------------------------------------------------------- intrinsics


def scale_intrinsics(K, sx: float, sy: float | None = None) -> np.ndarray:
    """Intrinsics after resizing an image by (sx, sy) (pixel-corner convention: u' = sx * u)."""
    sy = sx if sy is None else sy
    K2 = np.asarray(K, dtype=np.float64).copy()
    K2[0, :] *= sx
    K2[1, :] *= sy
    K2[2] = [0.0, 0.0, 1.0]
    return K2


def resize_intrinsics(K, old_wh: tuple[int, int], new_wh: tuple[int, int]) -> np.ndarray:
    """Intrinsics after resizing an image from ``old_wh`` to ``new_wh`` (width, height)."""
    return scale_intrinsics(K, new_wh[0] / old_wh[0], new_wh[1] / old_wh[1])


def crop_intrinsics(K, x0: float, y0: float) -> np.ndarray:
    """Intrinsics after cropping an image at top-left corner (x0, y0)."""
    K2 = np.asarray(K, dtype=np.float64).copy()
    K2[0, 2] -= x0
    K2[1, 2] -= y0
    return K2


def backproject(uv, depth, K) -> np.ndarray:
    """Pixels (N,2) with depths (N,) -> 3-D points (N,3) ``d * K^-1 [u, v, 1]``."""
    uv = np.asarray(uv, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64).reshape(-1)
    K = np.asarray(K, dtype=np.float64)
    x = (uv[:, 0] - K[0, 2] - K[0, 1] * (uv[:, 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    return np.stack([x * d, y * d, d], axis=1)


def project(X, K) -> np.ndarray:
    """3-D points (N,3) in a camera -> pixels (N,2)."""
    X = np.asarray(X, dtype=np.float64)
    x = X @ np.asarray(K, dtype=np.float64).T
    return x[:, :2] / x[:, 2:3]


def backproject_torch(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Batched back-projection: uv (B,N,2), depth (B,N), K (B,3,3) -> (B,N,3) = d K^-1 [u v 1]."""
    ones = torch.ones_like(uv[..., :1])
    rays = torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(K).transpose(-1, -2)
    return rays * depth.unsqueeze(-1)


# ----------------------------------------------------------------------------- Kabsch / Procrustes


def kabsch(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched (weighted) Kabsch: the rigid (R, t) minimising sum w |R X + t - Y|^2.

    X, Y: (B,N,3) corresponding points; weights: (B,N) >= 0 or None (plain means).
    Returns R (B,3,3) with det +1 (determinant fix) and t (B,3).
    With weights: w~ = w / (sum|w| + 1e-16) for the centroids, H = sum w (X - x)(Y - y)^T.
    """
    if weights is None:
        x_bar, y_bar = X.mean(dim=1, keepdim=True), Y.mean(dim=1, keepdim=True)
        H = (X - x_bar).transpose(1, 2) @ (Y - y_bar)                       # (B,3,3)
    else:
        w_n = weights / (weights.abs().sum(dim=1, keepdim=True) + 1e-16)      # (B,N)
        x_bar = (w_n.unsqueeze(-1) * X).sum(dim=1, keepdim=True)             # (B,1,3)
        y_bar = (w_n.unsqueeze(-1) * Y).sum(dim=1, keepdim=True)
        H = (X - x_bar).transpose(1, 2) @ (weights.unsqueeze(-1) * (Y - y_bar))
    U, _, Vh = torch.linalg.svd(H)
    V = Vh.transpose(1, 2)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
    R = V @ D @ U.transpose(1, 2)
    t = y_bar.squeeze(1) - (R @ x_bar.transpose(1, 2)).squeeze(-1)
    return R, t
