"""Validation metrics of regressed poses (all in T_ref_from_query terms, same angles / distances as
T_query_from_ref): rotation error, camera-centre error, translation-direction error, precision at 25 cm / 5 deg,
and the Spearman correlation of the confidence with the errors."""
from __future__ import annotations

import numpy as np
import torch

from ..eval.metrics import spearman


def quat_angle_deg(q: torch.Tensor, q_gt: torch.Tensor) -> torch.Tensor:
    """Rotation angle (deg) between unit quaternions (B, 4), sign invariant."""
    dot = (q * q_gt).sum(dim=1).abs().clamp(max=1.0)
    return torch.rad2deg(2.0 * torch.acos(dot))


def batch_errors(out: dict[str, torch.Tensor], quat_gt: torch.Tensor, t_gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair errors (B,): 'rot_deg', 'centre_m', 'dir_deg'."""
    centre = out['dir'] * out['scale'][:, None]
    cos = torch.nn.functional.cosine_similarity(out['dir'], t_gt, dim=1).clamp(-1.0, 1.0)
    return {'rot_deg': quat_angle_deg(out['quat'], quat_gt), 'centre_m': (centre - t_gt).norm(dim=1),
            'dir_deg': torch.rad2deg(torch.acos(cos))}


def summarize(errors: dict[str, np.ndarray], confidence: np.ndarray | None = None) -> dict[str, float]:
    """Medians, precision at (25 cm, 5 deg) and confidence/error Spearman (negative = confidence tracks error)."""
    rot, centre = errors['rot_deg'], errors['centre_m']
    out = {'rot_med_deg': float(np.median(rot)), 'centre_med_m': float(np.median(centre)),
           'dir_med_deg': float(np.median(errors['dir_deg'])),
           'prec_25cm_5deg': float(np.mean((centre < 0.25) & (rot < 5.0))), 'num_pairs': float(len(rot))}
    if confidence is not None:
        out['spearman_conf_centre'] = spearman(confidence, centre)
        out['spearman_conf_rot'] = spearman(confidence, rot)
    return out
