"""Training loss (paper, Sec. 3.4): rotation + (1 - cosine) direction + L1 scale, unit weights.

rotation: ``min(|q - q_gt|, |q + q_gt|)`` (a quaternion and its negation are the same rotation, so a sign flip
costs nothing); direction: ``1 - cos(d, t_gt)`` (skipped for pairs whose true translation is ~0);
scale: ``|s - |t_gt||``.

Optional (``weights['centre'] > 0``, off in the paper's loss): ``|s d - t_gt|``, the camera-centre error itself
(metres). Under an uncertain direction it pulls the predicted centre towards the reference camera, which the
separate direction and scale terms never do.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F


PAPER_WEIGHTS = {'rot': 1.0, 'dir': 1.0, 'scale': 1.0, 'centre': 0.0}


def pose_loss(quat: torch.Tensor, direction: torch.Tensor, scale: torch.Tensor, quat_gt: torch.Tensor,
              t_gt: torch.Tensor, eps: float = 1e-6, weights: Mapping[str, float] | None = None
              ) -> dict[str, torch.Tensor]:
    """Loss terms (scalars): 'rot', 'dir', 'scale', 'centre' and their weighted sum 'loss'. quat (B, 4),
    direction (B, 3), scale (B,), quat_gt (B, 4) unit, t_gt (B, 3) metres; ``weights`` default: the paper's."""
    rot = torch.minimum((quat - quat_gt).norm(dim=1), (quat + quat_gt).norm(dim=1)).mean()
    norm = t_gt.norm(dim=1)
    valid = norm > eps
    cos = F.cosine_similarity(direction, t_gt, dim=1, eps=eps)
    dir_term = ((1.0 - cos) * valid).sum() / valid.sum().clamp(min=1)
    scale_term = (scale - norm).abs().mean()
    centre = (direction * scale[:, None] - t_gt).norm(dim=1).mean()
    w = {**PAPER_WEIGHTS, **(weights or {})}
    terms = {'rot': rot, 'dir': dir_term, 'scale': scale_term, 'centre': centre}
    loss = sum(float(w[k]) * v for k, v in terms.items() if float(w[k]) != 0.0)
    return {'loss': loss, **terms}
