"""Two-way pose fusion (``model.two_way``; not in the paper).

The coarse transformer attends across both images, so its outputs serve both matching directions at once:
matching query cells into the reference gives the pose of the query camera in the reference frame (the forward
pose, T_ref_from_query), matching reference cells into the query gives the pose of the reference camera in the
query frame (the backward pose, T_query_from_ref). Inverting the backward pose and averaging it with the forward
one costs one more matching and head pass (no second LoFTR pass) and averages out part of the head's error; the
mean of two disagreeing centres is also shorter than either, which is the right shrinkage when the direction is
uncertain.
"""
from __future__ import annotations

import torch
from kornia.geometry.conversions import quaternion_to_rotation_matrix

TWO_WAY_CHOICES = ('none', 'eval', 'always')


def quat_conjugate(q: torch.Tensor) -> torch.Tensor:
    """(B, 4) w, x, y, z -> the inverse rotation's quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def fuse_two_way(forward: dict[str, torch.Tensor], backward: dict[str, torch.Tensor], eps: float = 1e-9
                 ) -> dict[str, torch.Tensor]:
    """Mean of the forward pose and the inverted backward pose, both as T_ref_from_query.

    forward: quat (B, 4) of R_ref_from_query, dir (B, 3), scale (B,) (the query centre in the reference frame is
    dir * scale); backward: the same for T_query_from_ref (the reference centre in the query frame).
    Returns quat (sign-aligned mean, normalised), dir and scale of the mean centre
    ``(c_f + c_b') / 2`` with ``c_b' = -R c_b`` (R = the fused R_ref_from_query).
    """
    q_f, q_b = forward['quat'], quat_conjugate(backward['quat'])                     # both R_ref_from_query
    q_b = torch.where((q_f * q_b).sum(dim=1, keepdim=True) < 0, -q_b, q_b)
    quat = q_f + q_b
    quat = quat / quat.norm(dim=1, keepdim=True).clamp(min=eps)                     # (B, 4)
    R = quaternion_to_rotation_matrix(quat)                                          # (B, 3, 3)
    c_f = forward['dir'] * forward['scale'][:, None]                                 # (B, 3) query centre, ref frame
    c_b = backward['dir'] * backward['scale'][:, None]                               # (B, 3) ref centre, query frame
    centre = 0.5 * (c_f - (R @ c_b[:, :, None])[:, :, 0])                            # (B, 3)
    scale = centre.norm(dim=1)
    return {'quat': quat, 'dir': centre / scale[:, None].clamp(min=eps), 'scale': scale}
