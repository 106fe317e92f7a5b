"""MicKey backend: metric relative pose from two RGB images (no depth sensor).

Per frame: resize to the processing size (intrinsics rescaled), MicKey extractor (backbone + heads; cached for
the reference), dual-softmax matching, S sets of n correspondences drawn from the final scores with probability
proportional to value (seeded), back-projection with the predicted metric depths, then the shared Procrustes
RANSAC solver (:mod:`relpose_ros.solver`).

Confidence published to ROS: ``min(1, soft_inliers / n)`` with ``n = min(samples_per_set, M*N)`` the number of
correspondences per sample set (``samples_per_set`` = 2048 unless the image pair has fewer candidate matches M*N):
the soft inlier count at ``inlier_threshold`` (0.15 m) of the final pose over the winning set, i.e. the (soft)
inlier fraction; the raw soft inlier count (MicKey's confidence, used for Map-free submissions) is
``PoseEstimate.score``.

A bad live frame (too small, intrinsics that do not fit the image, invalid arrays) gives ``ok = False`` with the
reason; a bad reference raises :class:`FrameError` from ``prepare_reference`` (the node reports it and clears the
reference). On CUDA the float32 parts run with TF32 disabled (:mod:`relpose_ros.models.mickey.precision`).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import cv2
import numpy as np
import torch

from ..errors import ConfigError, FrameError
from ..geometry import resize_intrinsics
from ..models.mickey.model import MIN_PATCHES, KeypointFeatures, MickeyConfig, MickeyModel
from ..models.mickey.precision import strict_fp32
from ..solver import SolverConfig, solve
from ..types import Frame, PoseEstimate
from .base import Estimator, Reference, StageTimer

PATCH = 14
_FP16_CHOICES = {'auto': None, 'true': True, 'on': True, 'false': False, 'off': False, True: True, False: False}


def _first_occurrences(idx: torch.Tensor) -> torch.Tensor:
    """(S,L) draws -> bool mask of the first occurrence of each value per row (in draw order)."""
    sorted_idx, order = torch.sort(idx, dim=1, stable=True)
    first_sorted = torch.ones_like(sorted_idx, dtype=torch.bool)
    first_sorted[:, 1:] = sorted_idx[:, 1:] != sorted_idx[:, :-1]             # earliest draw of each value
    return torch.zeros_like(first_sorted).scatter_(1, order, first_sorted)


def draw_without_replacement(weights: torch.Tensor, num_sets: int, n: int, generator: torch.Generator,
                             oversample: int = 2, rounds: int = 1) -> torch.Tensor:
    """Independent draws of ``n`` distinct indices, probability proportional to ``weights``.

    weights (K,) -> (num_sets, n); weights (B,K) -> (B, num_sets, n), every row of B with its own weights.

    Successive sampling without replacement (what ``torch.multinomial(replacement=False)`` does) equals drawing
    with replacement and keeping the first occurrence of each index, in draw order. That needs a few ``n``
    inverse-CDF look-ups per set instead of one random key per candidate (K = M*N can be millions). A set still
    short of ``n`` distinct indices after ``rounds`` extensions (very peaked weights) is completed exactly by
    ``torch.multinomial`` over the indices not drawn yet. A row with fewer than ``n`` positive weights is drawn by
    ``torch.multinomial`` (which then adds zero-weight indices, like the official code).
    """
    single = weights.dim() == 1
    w = weights.double().reshape(-1, weights.shape[-1])
    B, K = w.shape
    probs = w / w.sum(dim=1, keepdim=True)                                    # (B,K)
    cdf = torch.cumsum(probs, dim=1)
    device = w.device

    def draws(length: int) -> torch.Tensor:                                   # (B*num_sets, length), all rows
        u = torch.rand(B, num_sets * length, generator=generator, dtype=torch.float64, device=device)
        idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)            # zero-weight entries never hit
        return idx.clamp_max_(K - 1).view(B * num_sets, length)

    out = torch.empty(B * num_sets, n, dtype=torch.int64, device=device)
    todo = torch.ones(B * num_sets, dtype=torch.bool, device=device)
    few = ((probs > 0).sum(dim=1) < n).repeat_interleave(num_sets)
    for r in torch.nonzero(few).flatten().tolist():
        out[r] = torch.multinomial(probs[r // num_sets].float(), n, replacement=False, generator=generator)
    todo &= ~few
    idx = draws(oversample * n)
    for round_ in range(rounds + 1):
        rows = torch.nonzero(todo).flatten()
        if len(rows) == 0:
            break
        first = _first_occurrences(idx[rows])
        count = first.cumsum(1)
        enough = count[:, -1] >= n
        if bool(enough.any()):
            keep = first[enough] & (count[enough] <= n)
            out[rows[enough]] = idx[rows[enough]][keep].view(-1, n)
            todo[rows[enough]] = False
        if round_ < rounds and not bool(enough.all()):                       # extend every sequence
            idx = torch.cat([idx, draws(4 * idx.shape[1])], dim=1)
    for r in torch.nonzero(todo).flatten().tolist():                          # exact completion
        seq = idx[r]
        got = seq[_first_occurrences(seq[None])[0]]
        rest = probs[r // num_sets].clone()
        rest[got] = 0
        more = torch.multinomial(rest.float(), n - len(got), replacement=False, generator=generator)
        out[r] = torch.cat([got, more])
    return out.view(num_sets, n) if single else out.view(B, num_sets, n)


class MickeyEstimator(Estimator):
    """MicKey with a cached reference. ``model`` may be injected (tests, benchmarks); otherwise the official
    files ``checkpoint`` and ``dinov2_weights`` are loaded (strict check) at construction."""

    name = 'mickey'
    depth_usage = 'none'
    default_config: dict[str, Any] = {
        'checkpoint': '',              # MicKey Lightning checkpoint (e.g. mickey.ckpt), local path
        'dinov2_weights': '',          # DINOv2 ViT-L/14 checkpoint (dinov2_vitl14_pretrain.pth), local path
        'backbone': 'vitl14',          # 'vitl14' (official) or 'vits14' (small, for own training)
        'image_size': [720, 540],      # processing box [long side, short side] px in the input's orientation;
                                       # the image is scaled to fit it, aspect ratio kept; [] or [0, 0] = native
        'backbone_fp16': 'auto',       # fp16 autocast of the backbone (CUDA only): 'auto', 'true', 'false'
        'num_sample_sets': 20,         # outer RANSAC iterations (sets of sampled correspondences)
        'samples_per_set': 2048,       # correspondences drawn per set from the final scores
        'hypotheses_per_set': 100,     # minimal-set hypotheses per set
        'score_threshold': 0.3,        # m, soft-inlier threshold for scoring hypotheses
        'inlier_threshold': 0.15,      # m, refinement / confidence / inlier threshold
        'max_refinements': 4,
        'min_triplet_cond': 1e-3,      # reject (near-)degenerate minimal sets
        'min_inliers': 5,              # fewer hard inliers: ok = False
        'min_image_std': 2.0,          # grey-level std (0-255) below this: textureless, ok = False
        'max_principal_offset': 0.2,   # |cx/W - 0.5|, |cy/H - 0.5| above this: intrinsics do not match the image
        'seed': 0,                     # sampling seed (deterministic results)
    }

    def __init__(self, config: dict[str, Any] | None = None, device: str = 'auto',
                 model: MickeyModel | None = None) -> None:
        super().__init__(config, device)
        c = self.config
        self._check_config()
        if model is None:
            from ..models.mickey.weights import load_mickey

            if not c['checkpoint']:
                from ..errors import WeightsError

                raise WeightsError('mickey.checkpoint is not set: give the local path of the MicKey checkpoint '
                                   '(see docs/mickey.md for the download)')
            model = load_mickey(c['checkpoint'], c['dinov2_weights'] or None, MickeyConfig(c['backbone']),
                                device=self.device)
        self.model = model.to(self.device).eval()
        fp16 = _FP16_CHOICES[c['backbone_fp16'] if isinstance(c['backbone_fp16'], bool)
                             else str(c['backbone_fp16']).lower()]
        self.model.extractor.backbone_fp16 = (self.device.type == 'cuda') if fp16 is None else fp16
        self.solver_config = SolverConfig(hypotheses_per_set=int(c['hypotheses_per_set']),
                                          th_score=float(c['score_threshold']),
                                          th_refine=float(c['inlier_threshold']),
                                          max_refinements=int(c['max_refinements']),
                                          min_triplet_cond=float(c['min_triplet_cond']), seed=int(c['seed']))

    def _check_config(self) -> None:
        c = self.config
        size = list(c['image_size'] or [])
        if size and any(v != 0 for v in size) and (len(size) != 2 or min(size) < MIN_PATCHES * PATCH
                                                     or size[0] < size[1]):
            raise ConfigError(f'mickey.image_size must be [] or [long side, short side] with both >= '
                              f'{MIN_PATCHES * PATCH} px, got {c["image_size"]}')
        fp16 = c['backbone_fp16']
        if (fp16 if isinstance(fp16, bool) else str(fp16).lower()) not in _FP16_CHOICES:
            raise ConfigError(f"mickey.backbone_fp16 must be 'auto', true or false, got {c['backbone_fp16']!r}")
        for key in ('num_sample_sets', 'samples_per_set', 'hypotheses_per_set'):
            if int(c[key]) < 1:
                raise ConfigError(f'mickey.{key} must be >= 1, got {c[key]}')
        for key in ('score_threshold', 'inlier_threshold'):
            if not float(c[key]) > 0:
                raise ConfigError(f'mickey.{key} must be > 0 m, got {c[key]}')

    # ------------------------------------------------------------------ input

    def processing_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) the network sees: the input scaled (aspect ratio kept) to fit the
        ``image_size`` box [long side, short side] laid out in the input's orientation."""
        size = self.config['image_size']
        if not size or not any(size):
            return width, height
        long_side, short_side = int(size[0]), int(size[1])
        box_w, box_h = (long_side, short_side) if width >= height else (short_side, long_side)
        scale = min(box_w / width, box_h / height)
        return max(1, int(round(width * scale))), max(1, int(round(height * scale)))

    def preprocess(self, frame: Frame) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame -> image tensor (1,3,H',W') in [0,1] on the device and intrinsics K' (1,3,3) of that image."""
        frame.validate()
        H, W = frame.height, frame.width
        K = frame.K
        off = self.config['max_principal_offset']
        cx, cy = K[0, 2] / W, K[1, 2] / H
        if abs(cx - 0.5) > off or abs(cy - 0.5) > off:
            raise FrameError(f'intrinsics do not match the {W}x{H} image: principal point ({K[0, 2]:.1f}, '
                             f'{K[1, 2]:.1f}) is far from the image centre (K given for another resolution?)')
        w2, h2 = self.processing_size(W, H)
        if w2 // PATCH < MIN_PATCHES or h2 // PATCH < MIN_PATCHES:
            side = MIN_PATCHES * PATCH
            raise FrameError(f'image {W}x{H} (processed at {w2}x{h2}) is too small for MicKey: it needs at least '
                             f'{MIN_PATCHES} patches of {PATCH} px a side ({side}x{side} px)')
        rgb = frame.rgb
        if (w2, h2) != (W, H):
            interp = cv2.INTER_AREA if w2 * h2 < W * H else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (w2, h2), interpolation=interp)
            K = resize_intrinsics(K, (W, H), (w2, h2))
        image = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        image = image.permute(2, 0, 1)[None].float().div_(255.0)              # (1,3,H',W'), no mean/std
        return image, torch.as_tensor(K, dtype=torch.float32, device=self.device)[None]

    def _sync(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def _extract(self, image: torch.Tensor, K: torch.Tensor, timer: StageTimer
                 ) -> tuple[KeypointFeatures, torch.Tensor]:
        with timer('extract'):
            feats = self.model.extract(image)
            points = feats.points3d(K)[0]                                      # (N,3) metres
            self._sync()
        return feats, points

    def _strict_fp32(self) -> AbstractContextManager[None]:
        """TF32 off on CUDA while this backend computes (model, sampling and solver in true float32)."""
        return strict_fp32(self.device.type == 'cuda')

    # ------------------------------------------------------------------ estimator API

    @torch.inference_mode()
    def prepare_reference(self, frame: Frame) -> Reference:
        """Extract and cache the reference. Raises :class:`FrameError` for a frame MicKey cannot use (too small,
        intrinsics that do not fit the image, invalid arrays)."""
        timer = StageTimer()
        with timer('preprocess'):
            image, K = self.preprocess(frame)
        with self._strict_fp32():
            feats, points = self._extract(image, K, timer)
        return Reference(frame=frame, features={'kp': feats, 'points': points,
                                                'textureless': self._textureless(frame)},
                         timings=timer.timings)

    def _textureless(self, frame: Frame) -> str:
        std = float(cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2GRAY).std())
        if std < float(self.config['min_image_std']):
            return f'textureless image (grey-level std {std:.2f} < min_image_std {self.config["min_image_std"]})'
        return ''

    @torch.inference_mode()
    def estimate(self, reference: Reference, frame: Frame) -> PoseEstimate:
        """Pose of ``frame`` against the cached reference. A live frame MicKey cannot use (too small, intrinsics
        that do not fit, invalid arrays, textureless) gives ``ok = False`` with the reason, confidence 0."""
        timer = StageTimer()
        if reference.features is None or 'kp' not in reference.features:
            raise ValueError('reference was not prepared by the mickey backend')
        if reference.features['textureless']:
            return PoseEstimate.failure(f'reference: {reference.features["textureless"]}', timer.timings)
        try:
            with timer('preprocess'):
                image, K = self.preprocess(frame)
        except FrameError as exc:
            return PoseEstimate.failure(f'query: bad frame: {exc}', timer.timings)
        reason = self._textureless(frame)
        if reason:
            return PoseEstimate.failure(f'query: {reason}', timer.timings)
        with self._strict_fp32():
            return self._estimate(reference, image, K, timer)

    def _estimate(self, reference: Reference, image: torch.Tensor, K: torch.Tensor, timer: StageTimer
                  ) -> PoseEstimate:
        feats, points = self._extract(image, K, timer)
        ref_feats, ref_points = reference.features['kp'], reference.features['points']
        with timer('match'):
            final_scores = self.model.match(ref_feats, feats)[0]              # (M,N)
        with timer('sample'):
            sample = self.sample_correspondences(final_scores, ref_points, points)
            self._sync()
        if isinstance(sample, str):
            return PoseEstimate.failure(sample, timer.timings)
        X, Y, w = sample
        with timer('solve'):
            gen = torch.Generator(device=self.device).manual_seed(int(self.config['seed']) + 1)
            # minimal sets: 3 distinct correspondences per hypothesis, probability proportional to weight
            triplets = draw_without_replacement(w, self.solver_config.hypotheses_per_set, 3, gen)   # (S,H,3)
            res = solve(X, Y, w, self.solver_config, triplets=triplets)
        if not res.ok:
            return PoseEstimate.failure(f'solver: {res.reason}', timer.timings)
        n = X.shape[1]                         # confidence denominator: min(samples_per_set, M*N)
        if res.num_inliers < int(self.config['min_inliers']):
            return PoseEstimate.failure(f'too few inliers ({res.num_inliers} < min_inliers '
                                        f'{self.config["min_inliers"]})', timer.timings, score=res.score,
                                        num_inliers=res.num_inliers)
        return PoseEstimate(R=res.R, t=res.t, confidence=res.score / n, score=res.score,
                            num_inliers=res.num_inliers, ok=True, timings=timer.timings)

    def sample_correspondences(self, final_scores: torch.Tensor, ref_points: torch.Tensor, points: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | str:
        """Draw S sets of n distinct matches with probability proportional to final_scores (seeded).

        final_scores (M,N); ref_points (M,3); points (N,3) -> X (S,n,3), Y (S,n,3), weights (S,n), or the
        reason why no pose can be computed.
        """
        M, N = final_scores.shape
        p = final_scores.reshape(-1).float()
        if not bool(torch.isfinite(p).all()) or not bool(torch.isfinite(ref_points).all()) \
                or not bool(torch.isfinite(points).all()):
            return 'non-finite network output'
        positive = int((p > 0).sum())
        if positive < 3:
            return f'no surviving matches ({positive} candidate matches with non-zero score)'
        S, n = int(self.config['num_sample_sets']), min(int(self.config['samples_per_set']), M * N)
        gen = torch.Generator(device=p.device).manual_seed(int(self.config['seed']))
        flat = draw_without_replacement(p, S, n, gen)                          # (S,n) flat indices
        i, j = flat // N, flat % N                                              # reference / query keypoint
        return ref_points[i], points[j], p[flat]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({'backbone': self.config['backbone'], 'image_size': self.config['image_size'],
                  'backbone_fp16': self.model.extractor.backbone_fp16,
                  'checkpoint': self.config['checkpoint'], 'dinov2_weights': self.config['dinov2_weights']})
        return d
