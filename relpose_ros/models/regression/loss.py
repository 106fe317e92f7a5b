"""Training loss (paper, Sec. 3.4): rotation + (1 - cosine) direction + L1 scale, unit weights.

rotation: ``min(|q - q_gt|, |q + q_gt|)`` (a quaternion and its negation are the same rotation, so a sign flip
costs nothing); direction: ``1 - cos(d, t_gt)`` (skipped for pairs whose true translation is ~0);
scale: ``|s - |t_gt||``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pose_loss(quat: torch.Tensor, direction: torch.Tensor, scale: torch.Tensor, quat_gt: torch.Tensor,
              t_gt: torch.Tensor, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Loss terms (scalars): 'rot', 'dir', 'scale' and their sum 'loss'. quat (B, 4), direction (B, 3),
    scale (B,), quat_gt (B, 4) unit, t_gt (B, 3) metres."""
    rot = torch.minimum((quat - quat_gt).norm(dim=1), (quat + quat_gt).norm(dim=1)).mean()
    norm = t_gt.norm(dim=1)
    valid = norm > eps
    cos = F.cosine_similarity(direction, t_gt, dim=1, eps=eps)
    dir_term = ((1.0 - cos) * valid).sum() / valid.sum().clamp(min=1)
    scale_term = (scale - norm).abs().mean()
    return {'loss': rot + dir_term + scale_term, 'rot': rot, 'dir': dir_term, 'scale': scale_term}
