"""Virtual reference-camera rotation for the geometry-only head (``data.rotate_reference_deg``; not in the paper).

The geometry-only head (``model.appearance_channels: false``) sees, per query cell, its position, the position of
its match in the reference image and the match confidence. Rotating the reference camera about its own centre by
R_a changes exactly two things, both known in closed form:

- every matched reference pixel x_r moves by the homography H = K R_a K^-1 (x_r' ~ H x_r; no depth needed), and
- the target pose T_ref_from_query becomes R' = R_a R, c' = R_a c (X_ref' = R_a X_ref = R_a R X_q + R_a c).

So a training pair can be shown with any extra relative rotation, exactly, without re-rendering images. This
widens the rotations the head trains on beyond those of the training trajectory (7-Scenes frames 0-599 rotate a
median 5° over the training gaps, frames 700-850 12°), which is where the regressed translation direction fails.
"""
from __future__ import annotations

import torch
from kornia.geometry.conversions import (axis_angle_to_rotation_matrix, quaternion_to_rotation_matrix,
                                         rotation_matrix_to_quaternion)


def random_rotations(n: int, max_deg: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) rotations about uniformly random axes by angles uniform in [0, max_deg]."""
    axis = torch.randn(n, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp(min=1e-9)
    angle = torch.rand(n, 1, generator=generator) * torch.deg2rad(torch.tensor(float(max_deg)))
    return axis_angle_to_rotation_matrix(axis * angle)


def cell_grid_to_pixels(pos: torch.Tensor, h: int, w: int, stride: int = 8) -> torch.Tensor:
    """Normalised coarse positions (..., 2) in [-1, 1] (matching.normalised_grid) -> network pixels: cell
    (col, row) has its centre at (stride*col + stride/2, stride*row + stride/2)."""
    col = (pos[..., 0] + 1.0) * 0.5 * max(w - 1, 1)
    row = (pos[..., 1] + 1.0) * 0.5 * max(h - 1, 1)
    return torch.stack([stride * col + stride / 2, stride * row + stride / 2], dim=-1)


def pixels_to_cell_grid(px: torch.Tensor, h: int, w: int, stride: int = 8) -> torch.Tensor:
    """Inverse of :func:`cell_grid_to_pixels`."""
    col = (px[..., 0] - stride / 2) / stride
    row = (px[..., 1] - stride / 2) / stride
    return torch.stack([2.0 * col / max(w - 1, 1) - 1.0, 2.0 * row / max(h - 1, 1) - 1.0], dim=-1)


def rotate_reference_positions(pos_r: torch.Tensor, R_a: torch.Tensor, K: torch.Tensor, ref_hw: tuple[int, int],
                               stride: int = 8) -> torch.Tensor:
    """Matched reference positions (B, N, 2) (normalised, reference map of size ``ref_hw``) as seen by the
    reference camera rotated by R_a (B, 3, 3); K (B, 3, 3) the reference intrinsics at network resolution."""
    h, w = ref_hw
    px = cell_grid_to_pixels(pos_r, h, w, stride)                                    # (B, N, 2)
    ones = torch.ones_like(px[..., :1])
    H = K @ R_a @ torch.linalg.inv(K)                                                # (B, 3, 3)
    x = torch.cat([px, ones], dim=-1) @ H.transpose(1, 2)                            # (B, N, 3)
    px_new = x[..., :2] / x[..., 2:].clamp(min=1e-6)
    return pixels_to_cell_grid(px_new, h, w, stride)


def compose_rotation(R_a: torch.Tensor, quat: torch.Tensor, centre: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose (quat (B, 4) w,x,y,z of R_ref_from_query, centre (B, 3)) in the reference camera rotated by R_a
    (B, 3, 3): R' = R_a R (returned with w >= 0), c' = R_a c."""
    R_new = R_a @ quaternion_to_rotation_matrix(quat)
    q = rotation_matrix_to_quaternion(R_new.contiguous())
    q = torch.where(q[:, :1] < 0, -q, q)
    return q, (R_a @ centre[:, :, None])[:, :, 0]


def rotate_reference_targets(quat: torch.Tensor, centre: torch.Tensor, R_a: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for the reference camera rotated by R_a: :func:`compose_rotation`."""
    return compose_rotation(R_a, quat, centre)
