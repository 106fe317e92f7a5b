"""Descriptor matching: mutual nearest neighbours with Lowe's ratio test (kornia's ``match_smnn``)."""
from __future__ import annotations

import kornia.feature as KF
import torch

from .base import Features, Matcher, Matches, empty_matches


class MutualRatioMatcher(Matcher):
    """Nearest neighbours in descriptor space, kept when the first/second-neighbour distance ratio is
    <= ``ratio`` (in both directions and mutual when ``mutual``); score = 1 - ratio."""

    name = 'mnn_ratio'

    def __init__(self, ratio: float = 0.8, mutual: bool = True) -> None:
        self.ratio = float(ratio)
        self.mutual = bool(mutual)

    @torch.inference_mode()
    def match(self, a: Features, b: Features) -> Matches:
        if a.descriptors is None or b.descriptors is None or len(a) < 2 or len(b) < 2:
            return empty_matches(a.keypoints.device)
        fn = KF.match_smnn if self.mutual else KF.match_snn
        ratios, idx = fn(a.descriptors, b.descriptors, self.ratio)             # (M,1), (M,2)
        ia, ib = idx[:, 0], idx[:, 1]
        return Matches(a.keypoints[ia], b.keypoints[ib], (1.0 - ratios[:, 0]).clamp(0, 1), ia)
