"""MicKey: per-image metric keypoints (backbone + four heads) and the dual-softmax matcher.

``MickeyModel.extract(image)`` turns one image (B,3,H,W) in [0,1] into N = h*w keypoints with pixel
coordinates, metric depth, scores and descriptors; ``MickeyModel.match(f0, f1)`` gives the (B,M,N)
final scores used to sample 3-D/3-D correspondences. Module names match the official checkpoint
(``extractor.det_head...``, ``matcher.matching_mat.dustbin_score``; the backbone is ``extractor.backbone``).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import FrameError
from .heads import BORDER, Head, ScoreHead
from .matcher import Matcher
from .precision import strict_fp32
from .vit import VIT_CONFIGS, DinoVisionTransformer

MIN_PATCHES = 2 * BORDER + 1      # 7 patches a side: at least one cell survives the score border


@dataclass(frozen=True)
class MickeyConfig:
    """Model sizes: ``backbone`` 'vitl14' (official MicKey) or 'vits14' (small, same heads)."""

    backbone: str = 'vitl14'
    freeze_backbone: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in VIT_CONFIGS:
            raise ValueError(f"unknown MicKey backbone '{self.backbone}', expected one of {sorted(VIT_CONFIGS)}")


@dataclass
class KeypointFeatures:
    """Per-image MicKey output, flattened in keypoint order n = i*w + j.

    kps (B,2,N) pixels (u, v); depth (B,1,N) metres; scores (B,1,N) summing to 1; desc (B,D,N) unit vectors;
    grid (h, w) the patch grid.
    """

    kps: torch.Tensor
    depth: torch.Tensor
    scores: torch.Tensor
    desc: torch.Tensor
    grid: tuple[int, int]

    def points3d(self, K: torch.Tensor) -> torch.Tensor:
        """Back-projected keypoints (B,N,3) = depth * K^-1 [u, v, 1]^T for intrinsics K (B,3,3)."""
        from ...geometry import backproject_torch

        return backproject_torch(self.kps.transpose(1, 2), self.depth[:, 0], K.to(self.kps.dtype))


def crop_to_patches(image: torch.Tensor, patch: int = 14) -> torch.Tensor:
    """Top-left crop (B,3,H,W) -> (B,3,14*floor(H/14),14*floor(W/14)); pixel coordinates are unchanged."""
    H, W = image.shape[-2:]
    h, w = H // patch, W // patch
    if h < MIN_PATCHES or w < MIN_PATCHES:
        side = MIN_PATCHES * patch
        raise FrameError(f'image {W}x{H} is too small for MicKey: it needs at least {MIN_PATCHES} patches of '
                         f'{patch} px a side, i.e. at least {side}x{side} pixels after resizing')
    return image[..., :h * patch, :w * patch]


class MickeyExtractor(nn.Module):
    """Backbone + heads: image (B,3,H,W) in [0,1] (no mean/std normalisation) -> :class:`KeypointFeatures`."""

    def __init__(self, config: MickeyConfig = MickeyConfig()) -> None:
        super().__init__()
        self.config = config
        self.backbone = DinoVisionTransformer(VIT_CONFIGS[config.backbone])
        dim = self.backbone.embed_dim
        self.det_head = ScoreHead(dim)
        self.det_offset = Head(dim, 'xy_offset', 2)
        self.depth_head = Head(dim, 'depth', 1)
        self.dsc_head = Head(dim, None)
        self.patch = self.backbone.patch_size
        self.backbone_fp16 = False     # autocast the backbone to float16 (CUDA only); heads stay float32
        self.strict_fp32 = True        # CUDA: float32 work really in float32 (TF32 off while the model runs)
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> 'MickeyExtractor':
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()       # a frozen backbone always runs in eval mode
        return self

    def backbone_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> patch-token map (B,C,h,w) in float32, after the top-left crop.

        On CUDA the backbone runs in float16 autocast when ``backbone_fp16`` is set, otherwise in strict float32
        (no TF32, see :mod:`.precision`).
        """
        x = crop_to_patches(image, self.patch)
        use_fp16 = self.backbone_fp16 and x.is_cuda
        ctx = torch.autocast('cuda', dtype=torch.float16) if use_fp16 else nullcontext()
        grad = torch.no_grad() if self.config.freeze_backbone and torch.is_grad_enabled() else nullcontext()
        with strict_fp32(self.strict_fp32 and x.is_cuda), ctx, grad:
            feats = self.backbone(x)
        return feats.float()

    def head_maps(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Patch-token map (B,C,h,w) -> maps score (B,1,h,w), offset (B,2,h,w), depth (B,1,h,w),
        desc (B,D,h,w) and keypoints kps (B,2,h,w) in pixels. Always float32 (no autocast; no TF32 on CUDA)."""
        with strict_fp32(self.strict_fp32 and feats.is_cuda):
            return self._head_maps(feats)

    def _head_maps(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        score = self.det_head.normalise(self.det_head(feats))
        offset = torch.sigmoid(self.det_offset(feats))                      # (x, y) in (0,1)
        depth = self.depth_head(feats)                                       # metres, no activation
        d = self.dsc_head(feats)
        desc = d / torch.sqrt((d * d).sum(dim=1, keepdim=True) + 1e-10)
        h, w = feats.shape[-2:]
        jj = torch.arange(w, device=feats.device, dtype=feats.dtype).view(1, w).expand(h, w)
        ii = torch.arange(h, device=feats.device, dtype=feats.dtype).view(h, 1).expand(h, w)
        grid = torch.stack([jj, ii])[None]                                   # (1,2,h,w) (column, row)
        kps = self.patch * (grid + offset)                                   # u = 14 (j + o_x), v = 14 (i + o_y)
        return {'score_map': score, 'offset_map': offset, 'depth_map': depth, 'desc_map': desc, 'kps_map': kps}

    @staticmethod
    def flatten(maps: dict[str, torch.Tensor]) -> KeypointFeatures:
        h, w = maps['score_map'].shape[-2:]
        return KeypointFeatures(kps=maps['kps_map'].flatten(2), depth=maps['depth_map'].flatten(2),
                                scores=maps['score_map'].flatten(2), desc=maps['desc_map'].flatten(2), grid=(h, w))

    def forward(self, image: torch.Tensor) -> KeypointFeatures:
        return self.flatten(self.head_maps(self.backbone_features(image)))


class MickeyModel(nn.Module):
    """The full MicKey network: ``extractor`` (per image) and ``matcher`` (per pair)."""

    def __init__(self, config: MickeyConfig = MickeyConfig()) -> None:
        super().__init__()
        self.config = config
        self.extractor = MickeyExtractor(config)
        self.matcher = Matcher()

    def extract(self, image: torch.Tensor) -> KeypointFeatures:
        return self.extractor(image)

    def match(self, f0: KeypointFeatures, f1: KeypointFeatures) -> torch.Tensor:
        """final_scores (B,M,N) = dual-softmax matches * keypoint-score products."""
        return self.matcher(f0.desc, f1.desc, f0.scores, f1.scores)[0]

    def forward(self, image0: torch.Tensor, image1: torch.Tensor
                ) -> tuple[KeypointFeatures, KeypointFeatures, torch.Tensor]:
        """Full pair forward: both extractions and the matcher."""
        f0, f1 = self.extract(image0), self.extract(image1)
        return f0, f1, self.match(f0, f1)
