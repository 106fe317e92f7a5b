"""MicKey's four dense heads (scores, offsets, depth, descriptors) on the backbone's patch-token map.

Each head: BasicBlocks 1024->512->256->128, a 2-D sine positional encoding plus three linear-attention
encoder layers (width 128, 8 heads), a last BasicBlock (128->64, or 128->128 without the final ReLU for
descriptors) and, except for descriptors, a 1x1 output convolution without bias.
Key names follow the official checkpoint (``resblock1.conv1.weight``, ``att_layer.layers.0.q_proj.weight``, ...).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HEAD_WIDTHS = (512, 256, 128)
ATT_WIDTH, ATT_HEADS, ATT_LAYERS = 128, 8, 3
BORDER = 3                 # score cells zeroed on every side
SCORE_TEMPERATURE = 100.0
MAX_PE_SIDE = 256          # the official positional-encoding table is 256 x 256


class BasicBlock(nn.Module):
    """y = BN2(conv2(ReLU(BN1(conv1(x))))) + shortcut(x); out = ReLU(y) (optional)."""

    def __init__(self, cin: int, cout: int, final_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False)) if cin != cout else nn.Sequential()
        self.final_relu = final_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y)) + self.shortcut(x)
        return F.relu(y) if self.final_relu else y


def sine_positional_encoding(h: int, w: int, channels: int = ATT_WIDTH, device=None) -> torch.Tensor:
    """2-D sine encoding (1,channels,h,w): for m < channels/4, f_m = 10000^(-2m/(channels/2)),
    x = column + 1, y = row + 1: channels 4m..4m+3 = sin(x f), cos(x f), sin(y f), cos(y f)."""
    if h > MAX_PE_SIDE or w > MAX_PE_SIDE:
        raise ValueError(f'feature map {h}x{w} exceeds the positional-encoding table ({MAX_PE_SIDE} per side)')
    half = channels // 2
    div = torch.exp(torch.arange(0, half, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / half))
    ones = torch.ones(h, w, dtype=torch.float32, device=device)
    x = ones.cumsum(1)[None]                                             # (1,h,w) column + 1
    y = ones.cumsum(0)[None]                                             # (1,h,w) row + 1
    div = div[:, None, None]                                             # (c/4,1,1)
    pe = torch.zeros(channels, h, w, dtype=torch.float32, device=device)
    pe[0::4], pe[1::4] = torch.sin(x * div), torch.cos(x * div)
    pe[2::4], pe[3::4] = torch.sin(y * div), torch.cos(y * div)
    return pe[None]


def elu_feature_map(t: torch.Tensor) -> torch.Tensor:
    return F.elu(t) + 1


class LinearAttentionLayer(nn.Module):
    """Encoder layer with linear attention (phi = elu + 1), merge + LN1, MLP on [x ; m] + LN2, residual."""

    def __init__(self, dim: int = ATT_WIDTH, num_heads: int = ATT_HEADS) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """x (B,L,C) -> (B,L,C): out_l = phi(q_l)^T (sum_s phi(k_s) v_s^T) / (phi(q_l) . sum_s phi(k_s) + 1e-6)."""
        B, L, C = x.shape
        d = C // self.num_heads
        q = elu_feature_map(self.q_proj(x)).view(B, L, self.num_heads, d)
        k = elu_feature_map(self.k_proj(x)).view(B, L, self.num_heads, d)
        v = self.v_proj(x).view(B, L, self.num_heads, d)
        kv = torch.einsum('bshd,bshe->bhde', k, v)                        # (B,heads,d,d)
        z = 1.0 / (torch.einsum('blhd,bhd->blh', q, k.sum(dim=1)) + 1e-6)  # (B,L,heads)
        out = torch.einsum('blhd,bhde->blhe', q, kv) * z.unsqueeze(-1)
        return out.reshape(B, L, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.norm1(self.merge(self.attention(x)))
        m = self.norm2(self.mlp(torch.cat([x, m], dim=-1)))
        return x + m


class AttentionStage(nn.Module):
    """Add the sine encoding, flatten to h*w tokens (row-major), encoder layers, back to (B,C,h,w)."""

    def __init__(self, dim: int = ATT_WIDTH, num_layers: int = ATT_LAYERS) -> None:
        super().__init__()
        self.layers = nn.ModuleList([LinearAttentionLayer(dim) for _ in range(num_layers)])
        self._pe_cache: dict[tuple, torch.Tensor] = {}

    def positional_encoding(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, str(device))
        if key not in self._pe_cache:
            self._pe_cache[key] = sine_positional_encoding(h, w, self.layers[0].merge.in_features, device)
        return self._pe_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, h, w = x.shape
        x = x + self.positional_encoding(h, w, x.device).to(x.dtype)
        tokens = x.flatten(2).transpose(1, 2)                             # (B,h*w,C)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens.transpose(1, 2).reshape(B, C, h, w)


class Head(nn.Module):
    """One dense head: features (B,Cin,h,w) -> resblocks + attention -> (B,out,h,w).

    ``out_name`` is the output convolution's attribute (``score``, ``xy_offset``, ``depth``) or None for the
    descriptor head, whose last block keeps 128 channels and skips the final ReLU.
    """

    def __init__(self, in_dim: int, out_name: str | None = None, out_channels: int = 1) -> None:
        super().__init__()
        w1, w2, w3 = HEAD_WIDTHS
        self.resblock1 = BasicBlock(in_dim, w1)
        self.resblock2 = BasicBlock(w1, w2)
        self.resblock3 = BasicBlock(w2, w3)
        self.att_layer = AttentionStage(w3)
        self.out_name = out_name
        if out_name is None:
            self.resblock4 = BasicBlock(w3, w3, final_relu=False)
        else:
            self.resblock4 = BasicBlock(w3, 64)
            setattr(self, out_name, nn.Conv2d(64, out_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resblock3(self.resblock2(self.resblock1(x)))
        x = self.resblock4(self.att_layer(x))
        return x if self.out_name is None else getattr(self, self.out_name)(x)


class ScoreHead(Head):
    """Keypoint-score head with the official checkpoint's extra constants (only ``eps`` is used)."""

    def __init__(self, in_dim: int) -> None:
        super().__init__(in_dim, 'score', 1)
        self.eps = nn.Parameter(torch.tensor(1e-16), requires_grad=False)
        self.offset_par1 = nn.Parameter(torch.tensor(0.5), requires_grad=False)
        self.offset_par2 = nn.Parameter(torch.tensor(2.0), requires_grad=False)
        self.ones_kernel = nn.Parameter(torch.ones(1, 1, 3, 3), requires_grad=False)

    def normalise(self, s: torch.Tensor) -> torch.Tensor:
        """Raw scores (B,1,h,w) -> scores summing to 1 per image, zero in the 3-cell border.

        s' = s - (mean(s) + eps); e = exp(s' / 100); e = 0 on the border; e / (sum(e) + eps).
        """
        s = s - (s.mean(dim=(2, 3), keepdim=True) + self.eps)
        e = torch.exp(s / SCORE_TEMPERATURE)
        h, w = e.shape[-2:]
        mask = torch.zeros(h, w, dtype=torch.bool, device=e.device)
        mask[BORDER:h - BORDER, BORDER:w - BORDER] = True
        e = e * mask
        return e / (e.sum(dim=(2, 3), keepdim=True) + self.eps)
