"""Hard matching and warping (paper, Sec. 3.2) and the match-consistency statistics behind the confidence.

For every coarse cell i of image A (the query): correlation with all cells j of image B (the reference),
``S_ij = <f_A,i, f_B,j> / C``; hard match ``m(i) = argmax_j S_ij``; confidence ``c_i = softmax_j(S_ij / T)[m(i)]``.
Correspondence map (B, 2C + 5, hA, wA) = [f_A,i, p_A(i), f_B,m(i), p_B(m(i)), c_i], positions normalised to
[-1, 1] by the map size (any size, portrait or landscape).
"""
from __future__ import annotations

import torch


def normalised_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h*w, 2) cell positions (x, y) in [-1, 1], row-major like the flattened feature maps."""
    ys = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype) if h > 1 else torch.zeros(1, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype) if w > 1 else torch.zeros(1, device=device, dtype=dtype)
    gy, gx = torch.meshgrid(ys, xs, indexing='ij')
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2)


def subcell_positions(prob: torch.Tensor, match: torch.Tensor, h: int, w: int, grid: torch.Tensor) -> torch.Tensor:
    """(B, Na, 2) expected position of each match over the 3x3 cells around it, weighted by ``prob``.

    prob: (B, Na, Nb) matching softmax, match: (B, Na) argmax cell, grid: (Nb, 2) normalised cell positions.
    Refines the hard match below one cell (the same idea as a local soft-argmax); cells outside the map
    are left out.
    """
    off = torch.tensor([-1, 0, 1], device=match.device)
    dy, dx = torch.meshgrid(off, off, indexing='ij')
    row = (match // w)[..., None] + dy.reshape(-1)                                # (B, Na, 9)
    col = (match % w)[..., None] + dx.reshape(-1)
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    idx = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1))                          # (B, Na, 9)
    wgt = prob.gather(2, idx) * inside                                             # (B, Na, 9)
    wgt = wgt / wgt.sum(dim=2, keepdim=True).clamp(min=1e-12)
    return (wgt[..., None] * grid[idx]).sum(dim=2)                                 # (B, Na, 2)


def cmap_channels(num_channels: int) -> dict[str, slice]:
    """Channel slices of the correspondence map that :func:`hard_match_and_warp` builds:
    [f_a (C), p_a (2), f_b,m(i) (C), p_b,m(i) (2), c (1)]."""
    c = (num_channels - 5) // 2
    return {'feat_a': slice(0, c), 'pos_a': slice(c, c + 2), 'feat_b': slice(c + 2, 2 * c + 2),
            'pos_b': slice(2 * c + 2, 2 * c + 4), 'conf': slice(2 * c + 4, 2 * c + 5)}


def hard_match_and_warp(tok_a: torch.Tensor, tok_b: torch.Tensor, hw_a: tuple[int, int], hw_b: tuple[int, int],
                        temperature: float = 0.1, subcell: bool = False
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Correspondence map of image A's cells and per-cell match statistics.

    tok_a: (B, Na, C), tok_b: (B, Nb, C) transformer outputs. Returns the map (B, 2C+5, hA, wA) and
    ``{'softmax_conf': (B, Na), 'mutual': (B, Na) bool (forward/backward argmax agree within one cell)}``.
    ``subcell``: the warped position is refined below one cell (:func:`subcell_positions`; not in the paper,
    which uses the matched cell's position); the warped feature is always the hard match's.
    """
    bsz, n_a, c = tok_a.shape
    (h_a, w_a), (h_b, w_b) = hw_a, hw_b
    sim = torch.einsum('bic,bjc->bij', tok_a, tok_b) / c                      # (B, Na, Nb)
    match = sim.argmax(dim=2)                                                  # (B, Na)  m(i)
    prob = torch.softmax(sim / temperature, dim=2)                             # (B, Na, Nb)
    conf = prob.gather(2, match[..., None]).squeeze(2)                         # (B, Na)  c_i
    warped = tok_b.gather(1, match[..., None].expand(-1, -1, c))               # (B, Na, C) f_B,m(i)
    pos_a = normalised_grid(h_a, w_a, tok_a.device, tok_a.dtype).expand(bsz, -1, -1)   # (B, Na, 2)
    grid_b = normalised_grid(h_b, w_b, tok_a.device, tok_a.dtype)                      # (Nb, 2)
    pos_b = (subcell_positions(prob, match, h_b, w_b, grid_b) if subcell else grid_b[match])  # (B, Na, 2)
    cmap = torch.cat([tok_a, pos_a, warped, pos_b, conf[..., None]], dim=2)           # (B, Na, 2C+5)
    cmap = cmap.transpose(1, 2).reshape(bsz, 2 * c + 5, h_a, w_a)
    with torch.no_grad():
        back = sim.argmax(dim=1).gather(1, match)                              # (B, Na) argmax_i S_i,m(i)
        cell = torch.arange(n_a, device=tok_a.device)
        dy = (back // w_a - cell // w_a).abs()
        dx = (back % w_a - cell % w_a).abs()
        mutual = (dx <= 1) & (dy <= 1)
    return cmap, {'softmax_conf': conf.detach(), 'mutual': mutual}


def match_confidence(stats: dict[str, torch.Tensor], kind: str = 'mutual') -> torch.Tensor:
    """Per-pair confidence in [0, 1] from the match statistics (B,).

    'mutual': fraction of query cells whose match is forward/backward consistent; 'softmax': mean matching
    confidence; 'mutual_softmax': mean of consistent cells' confidence (both at once).
    """
    mutual = stats['mutual'].float()
    soft = stats['softmax_conf'].float()
    if kind == 'mutual':
        return mutual.mean(dim=1)
    if kind == 'softmax':
        return soft.mean(dim=1)
    if kind == 'mutual_softmax':
        return (mutual * soft).mean(dim=1)
    raise ValueError(f"unknown confidence kind '{kind}', expected mutual, softmax or mutual_softmax")
