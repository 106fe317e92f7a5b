"""One interface for local features: ``Extractor.extract(rgb) -> Features`` and
``Matcher.match(a, b) -> Matches``.

Every extractor (OpenCV SIFT, kornia SIFT, DISK, ALIKED, or a dense matcher's image holder) returns
the same :class:`Features` on the extractor's device, so the pose pipeline exists once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Features:
    """Local features of one image (all tensors on the extractor's device).

    keypoints: (N,2) float32 pixel coordinates (x, y). descriptors: (N,D) float32 or None (dense matchers).
    scores: (N,) detection scores or None. image: (1,C,H,W) float image in [0,1] kept for dense / learned
    matchers that need it, else None. size: (width, height).
    """

    keypoints: torch.Tensor
    descriptors: torch.Tensor | None
    size: tuple[int, int]
    scores: torch.Tensor | None = None
    image: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass
class Matches:
    """Correspondences between image A (reference) and image B (query).

    kp_a, kp_b: (M,2) float32 pixels. idx_a: (M,) indices into A's keypoints when A has keypoints
    (None for dense matchers). scores: (M,) match quality in [0, 1] (higher is better).
    """

    kp_a: torch.Tensor
    kp_b: torch.Tensor
    scores: torch.Tensor
    idx_a: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.kp_a.shape[0])


class Extractor(ABC):
    """Detects and describes local features on one device."""

    name: str = ''

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)

    @abstractmethod
    def extract(self, rgb: np.ndarray) -> Features:
        """rgb: HxWx3 uint8 -> :class:`Features`."""


class Matcher(ABC):
    """Matches two :class:`Features` of the same extractor."""

    name: str = ''

    @abstractmethod
    def match(self, a: Features, b: Features) -> Matches:
        """Correspondences from ``a`` (reference) to ``b`` (query)."""


def empty_matches(device: torch.device) -> Matches:
    """No correspondences."""
    z2 = torch.zeros((0, 2), dtype=torch.float32, device=device)
    return Matches(z2, z2.clone(), torch.zeros(0, device=device), torch.zeros(0, dtype=torch.long, device=device))


def rgb_to_tensor(rgb: np.ndarray, device: torch.device, gray: bool = False) -> torch.Tensor:
    """HxWx3 uint8 -> (1,3,H,W) or (1,1,H,W) float32 in [0, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    if gray:
        x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    return x
