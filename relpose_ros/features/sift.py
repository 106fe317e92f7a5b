"""SIFT without learned weights: OpenCV's (fast on CPU) and kornia's (runs on the GPU).

Both return RootSIFT descriptors (Arandjelovic & Zisserman 2012: L1-normalise, element-wise square root,
so that the Euclidean distance compares Hellinger kernels) as the same :class:`Features`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .base import Extractor, Features, rgb_to_tensor


def root_sift(descriptors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(N,128) SIFT descriptors -> RootSIFT: ``sqrt(d / |d|_1)`` (unit L2 norm)."""
    d = descriptors.clamp_min(0)
    return torch.sqrt(d / (d.sum(dim=-1, keepdim=True) + eps))


class OpenCVSIFT(Extractor):
    """OpenCV SIFT on the CPU; keypoints/descriptors are moved to ``device`` afterwards."""

    name = 'opencv_sift'

    def __init__(self, device: torch.device, num_features: int = 4000, contrast_threshold: float = 0.02,
                 edge_threshold: float = 10.0, root: bool = True) -> None:
        super().__init__(device)
        self.root = root
        self.sift = cv2.SIFT_create(nfeatures=int(num_features), contrastThreshold=float(contrast_threshold),
                                    edgeThreshold=float(edge_threshold))

    def extract(self, rgb: np.ndarray) -> Features:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self.sift.detectAndCompute(gray, None)
        h, w = gray.shape
        if desc is None or len(kps) == 0:
            return Features(torch.zeros((0, 2), device=self.device), torch.zeros((0, 128), device=self.device),
                            (w, h), torch.zeros(0, device=self.device))
        xy = torch.from_numpy(np.array([k.pt for k in kps], dtype=np.float32)).to(self.device)
        resp = torch.from_numpy(np.array([k.response for k in kps], dtype=np.float32)).to(self.device)
        d = torch.from_numpy(desc).to(self.device)
        d = root_sift(d) if self.root else torch.nn.functional.normalize(d, dim=-1)
        return Features(xy, d, (w, h), resp)


class KorniaSIFT(Extractor):
    """kornia's SIFT (scale-space detector + SIFT descriptor), on any torch device."""

    name = 'kornia_sift'

    def __init__(self, device: torch.device, num_features: int = 4000, root: bool = True) -> None:
        super().__init__(device)
        import kornia.feature as KF

        self.model = KF.SIFTFeature(num_features=int(num_features), upright=False, rootsift=root,
                                    device=self.device).eval()
        self._laf_center = KF.get_laf_center

    @torch.inference_mode()
    def extract(self, rgb: np.ndarray) -> Features:
        img = rgb_to_tensor(rgb, self.device, gray=True)                         # (1,1,H,W)
        lafs, responses, desc = self.model(img)                                 # (1,N,2,3), (1,N), (1,N,128)
        xy = self._laf_center(lafs)[0].float()                                  # (N,2)
        d = torch.nn.functional.normalize(desc[0].float(), dim=-1)
        return Features(xy, d, (rgb.shape[1], rgb.shape[0]), responses[0].float())
