"""Metric 3-D/3-D pose solver: batched Procrustes RANSAC with soft-inlier scoring (MicKey, rgbd).

Given correspondences ``X`` (reference camera) and ``Y`` (query camera) with ``Y = R X + t``:

1. hypotheses: for every sample set s (S sets of N correspondences), ``H`` minimal sets of 3 distinct
   correspondences are drawn with probability proportional to their weight; Kabsch on each;
2. score: soft inlier count ``sum_i sigmoid((k / th) (th - r_i))`` with ``r_i = sqrt(|R X_i + t - Y_i|^2 + 1e-6)``,
   ``th = th_score`` (MicKey: 0.3 m, k = 5) over all N correspondences of the hypothesis' set;
3. the best hypothesis (first maximum) is refined up to ``max_refinements`` times by weighted Procrustes on its hard
   inliers (``r <= th_refine``), as long as the inlier count grows;
4. confidence score = soft inlier count at ``th_refine`` of the final pose.

Everything is a tensor operation on the input's device: no Python loop over hypotheses. Degenerate minimal sets
(repeated or collinear points: covariance singular-value ratio below ``min_triplet_cond``) and non-finite hypotheses
are rejected instead of producing arbitrary rotations. Draws come from a seeded ``torch.Generator`` (deterministic
for a seed) or can be injected (``triplets``) to reproduce a reference run exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .geometry import kabsch

RESIDUAL_EPS = 1e-6


@dataclass
class SolverConfig:
    """RANSAC parameters; the defaults are MicKey's test-time values."""

    hypotheses_per_set: int = 100
    th_score: float = 0.3            # metres, soft-inlier threshold for scoring hypotheses
    th_refine: float = 0.15          # metres, hard inliers for refinement, confidence and the inlier list
    softness: float = 5.0            # k in sigmoid((k / th) (th - r))
    max_refinements: int = 4
    min_triplet_cond: float = 1e-3   # sigma2 / sigma1 of a triplet's covariance below this: degenerate
    seed: int = 0


@dataclass
class SolverResult:
    """Best pose ``Y = R X + t`` and its support within the winning sample set."""

    R: np.ndarray
    t: np.ndarray
    ok: bool
    reason: str = ''
    score: float = 0.0                   # soft inlier count at th_refine (raw confidence)
    num_inliers: int = 0                 # hard inliers at th_refine
    inlier_mask: np.ndarray | None = None  # (N,) bool over the winning set
    set_index: int = -1
    best_hypothesis: int = -1
    refinements: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    hypotheses: dict[str, torch.Tensor] | None = None  # R (S*H,3,3), t (S*H,3), score, valid (when asked)


def residuals(R: torch.Tensor, t: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``sqrt(|R X + t - Y|^2 + 1e-6)``: R (...,3,3), t (...,3), X/Y (...,N,3) -> (...,N)."""
    diff = X @ R.transpose(-1, -2)                                        # (...,N,3), one allocation
    diff.add_(t.unsqueeze(-2)).sub_(Y)                                   # in place: no (S,H,N,3) temporaries
    return torch.sqrt(diff.square().sum(-1) + RESIDUAL_EPS)


def soft_inliers(r: torch.Tensor, th: float, softness: float = 5.0) -> torch.Tensor:
    """Per-correspondence soft inlier terms ``sigmoid((k / th)(th - r))``."""
    return torch.sigmoid((softness / th) * (th - r))


def hard_inliers(r: torch.Tensor, th: float) -> torch.Tensor:
    """Hard inliers ``th - r >= 0`` (bool)."""
    return (th - r) >= 0


def triplet_condition(P: torch.Tensor) -> torch.Tensor:
    """sigma2 / sigma1 of the centred covariance of point triplets P (...,3,3) -> (...)."""
    Pc = P - P.mean(dim=-2, keepdim=True)
    s = torch.linalg.svdvals(Pc.transpose(-1, -2) @ Pc)
    return s[..., 1] / s[..., 0].clamp_min(1e-30)


def sample_triplets(weights: torch.Tensor, per_set: int, generator: torch.Generator | None) -> torch.Tensor:
    """Draw ``per_set`` triplets of distinct indices per set, probability proportional to weight.

    weights (S,N) >= 0 -> indices (S, per_set, 3).
    """
    S, N = weights.shape
    probs = weights.clamp_min(0).unsqueeze(1).expand(S, per_set, N).reshape(S * per_set, N)
    idx = torch.multinomial(probs, 3, replacement=False, generator=generator)
    return idx.view(S, per_set, 3)


def solve(X: torch.Tensor, Y: torch.Tensor, weights: torch.Tensor, config: SolverConfig | None = None,
          generator: torch.Generator | None = None, triplets: torch.Tensor | None = None,
          return_hypotheses: bool = False) -> SolverResult:
    """Procrustes RANSAC over S sample sets.

    X, Y: (S,N,3) or (N,3) corresponding points; weights: (S,N) or (N,) sampling weights >= 0.
    triplets: optional injected draws (S,H,3) or (S*H,3) of positions within each set.
    """
    cfg = config or SolverConfig()
    if X.dim() == 2:
        X, Y, weights = X.unsqueeze(0), Y.unsqueeze(0), weights.unsqueeze(0)
    S, N, _ = X.shape
    eye, zero = np.eye(3), np.zeros(3)
    if N < 3:
        return SolverResult(eye, zero, ok=False, reason=f'too few correspondences ({N} < 3)')
    finite = torch.isfinite(X).all(-1) & torch.isfinite(Y).all(-1) & torch.isfinite(weights)
    weights = torch.where(finite, weights, torch.zeros_like(weights))
    X = torch.where(finite.unsqueeze(-1), X, torch.zeros_like(X))
    Y = torch.where(finite.unsqueeze(-1), Y, torch.zeros_like(Y))
    if triplets is None:
        if int((weights > 0).sum(-1).min()) < 3:
            return SolverResult(eye, zero, ok=False, reason='fewer than 3 correspondences with positive weight')
        if generator is None:
            generator = torch.Generator(device=X.device).manual_seed(int(cfg.seed))
        triplets = sample_triplets(weights, cfg.hypotheses_per_set, generator)
    triplets = triplets.to(X.device).reshape(S, -1, 3)
    H = triplets.shape[1]

    # Minimal sets -> hypotheses: gather (S,H,3,3) points, Kabsch over S*H triplets.
    set_idx = torch.arange(S, device=X.device).view(S, 1, 1)
    Xt, Yt = X[set_idx, triplets], Y[set_idx, triplets]                   # (S,H,3,3)
    R_h, t_h = kabsch(Xt.reshape(S * H, 3, 3), Yt.reshape(S * H, 3, 3))   # (S*H,3,3), (S*H,3)
    R_h, t_h = R_h.view(S, H, 3, 3), t_h.view(S, H, 3)

    # Score every hypothesis over all N correspondences of its set: (S,H,N).
    r = residuals(R_h, t_h, X.unsqueeze(1), Y.unsqueeze(1))
    soft = soft_inliers(r, cfg.th_score, cfg.softness) * finite.unsqueeze(1)
    scores = soft.sum(-1)                                                 # (S,H)
    cond = torch.minimum(triplet_condition(Xt), triplet_condition(Yt))
    valid = (cond > cfg.min_triplet_cond) & torch.isfinite(scores)
    valid &= torch.isfinite(R_h).flatten(-2).all(-1) & torch.isfinite(t_h).all(-1)
    hyps = None
    if return_hypotheses:
        hyps = {'R': R_h.reshape(S * H, 3, 3), 't': t_h.reshape(S * H, 3), 'score': scores.reshape(-1),
                'valid': valid.reshape(-1), 'cond': cond.reshape(-1)}
    if not bool(valid.any()):
        return SolverResult(eye, zero, ok=False, reason='all minimal sets degenerate (repeated or collinear points)',
                            hypotheses=hyps)
    masked = torch.where(valid, scores, torch.full_like(scores, -float('inf'))).reshape(-1)
    best = int(torch.argmax(masked))                                      # first maximum
    s_best = best // H
    R, t = R_h[s_best, best % H], t_h[s_best, best % H]
    Xs, Ys, fs = X[s_best], Y[s_best], finite[s_best]

    # Refinement: weighted Procrustes on hard inliers while their count grows.
    prev, refinements = 3, []
    for _ in range(cfg.max_refinements):
        inl = hard_inliers(residuals(R, t, Xs, Ys), cfg.th_refine) & fs
        count = int(inl.sum())
        if count < 3 or count <= prev:
            break
        prev = count
        R_new, t_new = kabsch(Xs.unsqueeze(0), Ys.unsqueeze(0), inl.to(Xs.dtype).unsqueeze(0))
        if not (torch.isfinite(R_new).all() and torch.isfinite(t_new).all()):
            break
        R, t = R_new[0], t_new[0]
        refinements.append((R.detach().cpu().numpy(), t.detach().cpu().numpy()))

    r_final = residuals(R, t, Xs, Ys)
    score = float((soft_inliers(r_final, cfg.th_refine, cfg.softness) * fs).sum())
    inliers = hard_inliers(r_final, cfg.th_refine) & fs
    R_np, t_np = R.detach().cpu().double().numpy(), t.detach().cpu().double().numpy()
    if not (np.all(np.isfinite(R_np)) and np.all(np.isfinite(t_np))):
        return SolverResult(eye, zero, ok=False, reason='non-finite pose', hypotheses=hyps)
    return SolverResult(R_np, t_np, ok=True, score=score, num_inliers=int(inliers.sum()),
                        inlier_mask=inliers.cpu().numpy(), set_index=s_best, best_hypothesis=best,
                        refinements=refinements, hypotheses=hyps)
