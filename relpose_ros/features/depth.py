"""Depth at keypoints: clean a depth map (range, holes, discontinuities) and sample it bilinearly.

Depth from an RGB-D sensor is least trustworthy at object boundaries: the depth camera is not exactly
registered to the colour camera (7-Scenes: centimetres at edges) and depth mixes foreground and background
there. A pixel is dropped when its ``window`` x ``window`` neighbourhood spans more than
``edge_abs_m + edge_rel * depth`` or contains a hole, so a keypoint on an edge gets no 3-D point at all
instead of a wrong one.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from ..geometry import backproject_torch


def clean_depth(depth: np.ndarray, min_m: float = 0.1, max_m: float = 10.0, window: int = 5,
                edge_abs_m: float = 0.02, edge_rel: float = 0.03) -> np.ndarray:
    """HxW float32 metres (NaN invalid) -> same with out-of-range, hole-adjacent and edge pixels set to NaN."""
    d = np.asarray(depth, dtype=np.float32)
    invalid = ~np.isfinite(d) | (d < min_m) | (d > max_m)
    if window > 1:
        kernel = np.ones((int(window), int(window)), np.uint8)
        hi = cv2.dilate(np.where(invalid, 0.0, d).astype(np.float32), kernel)
        lo = cv2.erode(np.where(invalid, np.float32(1e6), d).astype(np.float32), kernel)
        near_hole = cv2.dilate(invalid.astype(np.uint8), kernel).astype(bool)
        edge = (hi - lo) > (edge_abs_m + edge_rel * np.where(invalid, 0.0, d))
        invalid = invalid | near_hole | edge
    return np.where(invalid, np.float32(np.nan), d).astype(np.float32)


def sample_depth(depth: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear depth at pixel centres ``uv`` (N,2) from depth (H,W); NaN where any neighbour is invalid
    or the point is outside the image."""
    H, W = depth.shape
    x, y = uv[:, 0], uv[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= W - 1) & (y <= H - 1)
    x = x.clamp(0, W - 1.001)
    y = y.clamp(0, H - 1.001)
    x0, y0 = x.floor().long(), y.floor().long()
    fx, fy = x - x0, y - y0
    d00, d01 = depth[y0, x0], depth[y0, x0 + 1]
    d10, d11 = depth[y0 + 1, x0], depth[y0 + 1, x0 + 1]
    d = (d00 * (1 - fx) + d01 * fx) * (1 - fy) + (d10 * (1 - fx) + d11 * fx) * fy
    return torch.where(inside, d, torch.full_like(d, float('nan')))


def lift(depth: torch.Tensor, uv: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """3-D points (N,3) of pixels uv (N,2) with depth sampled from (H,W); rows are NaN without depth."""
    d = sample_depth(depth, uv)
    return backproject_torch(uv.unsqueeze(0), d.unsqueeze(0), K.unsqueeze(0))[0]


def register_depth(depth: np.ndarray, K_depth: np.ndarray, K_colour: np.ndarray,
                   colour_size: tuple[int, int] | None = None) -> np.ndarray:
    """Resample a depth image from the depth camera into the colour camera's pixel grid, for sensors whose
    depth is not registered to colour and whose two cameras (nearly) share a centre but not intrinsics
    (7-Scenes' Kinect v1: depth fx = 585, colour fx ~ 525). Nearest-neighbour (no mixing across edges);
    colour pixels outside the depth camera's view get NaN. colour_size: (width, height), default the depth's.
    """
    d = np.asarray(depth, dtype=np.float32)
    w, h = colour_size or (d.shape[1], d.shape[0])
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(np.asarray(K_colour, np.float64)).T
    pix = rays @ np.asarray(K_depth, np.float64).T
    mx = (pix[..., 0] / pix[..., 2]).astype(np.float32)
    my = (pix[..., 1] / pix[..., 2]).astype(np.float32)
    return cv2.remap(d, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=float('nan'))
