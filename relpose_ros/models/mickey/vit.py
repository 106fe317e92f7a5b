"""DINOv2 vision transformer (ViT-L/14 for MicKey, a ViT-S/14-sized variant for tests and training).

State-dict keys follow the original DINOv2 checkpoint format (``dinov2_vitl14_pretrain.pth``):
``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj.*``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,
ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*``, ``norm.*``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """Sizes of a DINOv2 ViT with patch size 14 and a 37x37 position-embedding grid (518 px)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_grid: int = 37


VIT_CONFIGS = {
    'vitl14': ViTConfig(1024, 24, 16),   # DINOv2 ViT-L/14 (MicKey)
    'vits14': ViTConfig(384, 12, 6),     # ViT-S/14 sized: fast CPU tests and training
}


class PatchEmbed(nn.Module):
    """14x14 stride-14 convolution: (B,3,H,W) -> (B,C,h,w)."""

    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection ([q | k | v], heads of consecutive features)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                         # (B,heads,L,d)
        out = F.scaled_dot_product_attention(q, k, v)                   # softmax(q k^T / sqrt(d)) v
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()                                            # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm block: x += g1 * Attn(LN1(x)); x += g2 * MLP(LN2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoVisionTransformer(nn.Module):
    """DINOv2 backbone: image (B,3,14h,14w) in [0,1] -> normalised patch tokens (B,C,h,w)."""

    def __init__(self, config: ViTConfig = VIT_CONFIGS['vitl14']) -> None:
        super().__init__()
        c = config
        self.config = c
        self.patch_size = c.patch_size
        self.embed_dim = c.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.pos_grid ** 2, c.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, c.embed_dim))      # unused at inference
        self.patch_embed = PatchEmbed(c.embed_dim, c.patch_size)
        self.blocks = nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)

    def interpolate_pos_encoding(self, h: int, w: int) -> torch.Tensor:
        """Position embedding for an h x w patch grid: (1, 1+h*w, C), class-token row first.

        The 37x37 grid is resampled bicubically with scale factors (h+0.1)/37, (w+0.1)/37 (DINOv2's
        behaviour; resizing "to (h, w)" would sample at different positions).
        """
        n = self.config.pos_grid
        pos = self.pos_embed
        if h == n and w == n:
            return pos
        cls_pos, grid = pos[:, :1], pos[:, 1:]
        C = grid.shape[-1]
        grid = grid.reshape(1, n, n, C).permute(0, 3, 1, 2)            # (1,C,37,37)
        grid = F.interpolate(grid.float(), scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode='bicubic',
                             align_corners=False)
        if grid.shape[-2:] != (h, w):
            raise RuntimeError(f'position-embedding resampling gave {tuple(grid.shape[-2:])}, expected {(h, w)}')
        grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, C)
        return torch.cat([cls_pos, grid], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,14h,14w) -> tokens after the final LayerNorm (B, 1+h*w, C), class token first."""
        B = x.shape[0]
        feat = self.patch_embed(x)                                       # (B,C,h,w)
        h, w = feat.shape[-2:]
        tokens = feat.flatten(2).transpose(1, 2)                         # (B,h*w,C), row-major
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(h, w)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,14h,14w) -> patch-token map (B,C,h,w) (class token dropped)."""
        B, _, H, W = x.shape
        h, w = H // self.patch_size, W // self.patch_size
        tokens = self.forward_tokens(x)
        return tokens[:, 1:].transpose(1, 2).reshape(B, self.embed_dim, h, w)
