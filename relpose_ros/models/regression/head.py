"""Pose regression head (paper, Sec. 3.3 and App. B): PreAct ResNet blocks, then three MLPs.

Correspondence map (B, 2C+5, h, w) -> 1x1 projection -> PreAct blocks (stride 2) -> adaptive average pool to
3x3 (any input size) -> flattened 128*9 = 1152 vector (optional dropout, not in the paper) -> MLPs for the
quaternion (4, normalised), the unit translation direction (3, normalised) and the positive scale (1, softplus).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + (projected) identity."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (nn.Conv2d(c_in, c_out, 1, stride, bias=False)
                         if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


def _mlp(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c_out))


class PoseHead(nn.Module):
    """(B, c_in, h, w) correspondence map -> quaternion (B, 4), direction (B, 3), scale (B,)."""

    def __init__(self, c_in: int, channels: tuple[int, ...] = (256, 256, 128), pool: int = 3,
                 mlp_hidden: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = float(dropout)   # on the pooled features, training only (no parameters)
        self.proj = nn.Conv2d(c_in, channels[0], 1)
        blocks, c = [], channels[0]
        for c_out in channels:
            blocks.append(PreActBlock(c, c_out, stride=2))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.bn_out = nn.BatchNorm2d(c)
        self.pool = nn.AdaptiveAvgPool2d(pool)
        flat = c * pool * pool
        self.rot = _mlp(flat, mlp_hidden, 4)
        self.dir = _mlp(flat, mlp_hidden, 3)
        self.scale = _mlp(flat, mlp_hidden, 1)
        with torch.no_grad():  # start near the identity rotation: w = 1
            self.rot[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))

    def forward(self, cmap: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.blocks(self.proj(cmap))                     # (B, c, h/8, w/8)
        x = self.pool(F.relu(self.bn_out(x))).flatten(1)     # (B, 1152)
        x = F.dropout(x, self.dropout, self.training)
        q = F.normalize(self.rot(x), dim=1)                  # (B, 4) unit quaternion (w, x, y, z)
        d = F.normalize(self.dir(x), dim=1, eps=1e-6)        # (B, 3) unit direction
        s = F.softplus(self.scale(x)).squeeze(1)             # (B,)  scale > 0
        return {'quat': q, 'dir': d, 'scale': s}
