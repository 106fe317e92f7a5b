"""``rgbd``: the default backend. Local features + metric pose from depth, no learned weights needed.

Per live frame (the reference's keypoints, descriptors and 3-D points are cached by ``prepare_reference``):

1. features on the query: SIFT with RootSIFT descriptors, matched by mutual nearest neighbour + ratio test
   (``extractor: auto`` takes OpenCV's SIFT on the CPU; on another device it times OpenCV's and kornia's once
   when the backend is built and keeps the faster, :func:`relpose_ros.features.auto_extractor`); or, from local
   weight files only, DISK / ALIKED (+ LightGlue or the same mutual-ratio matcher) or LoFTR (dense: no
   descriptors, its matches are lifted from the cached reference depth);
2. 3-D points from depth cleaned of holes and discontinuities (:mod:`relpose_ros.features.depth`);
3. depth on both frames: 3-D/3-D Procrustes RANSAC (:mod:`relpose_ros.solver`) with metric thresholds, whose
   Procrustes refits on the hard inliers give the pose; depth on the reference only (or too few matches with
   depth on both): PnP RANSAC;
4. refinement on the inliers by minimising reprojection errors
   (:func:`~relpose_ros.backends.rgbd_pose.refine_reprojection`): always after PnP; after 3-D/3-D only with
   ``refine.reprojection_3d3d`` (off by default; then in both images);
5. confidence = soft inlier ratio x saturating support (:func:`~relpose_ros.backends.rgbd_pose.soft_inlier_confidence`).

Bad image content never raises: it gives ``PoseEstimate.failure(reason)``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np
import torch
from scipy.special import expit

from ..errors import FrameError
from ..features import build_pipeline
from ..features.base import Features
from ..features.depth import clean_depth, lift
from ..solver import SolverConfig, hard_inliers, residuals, soft_inliers, solve
from ..types import Frame, PoseEstimate
from .base import Estimator, Reference, StageTimer
from .rgbd_pose import nearest_rotation, pnp_ransac, refine_reprojection, reprojection_errors, soft_inlier_confidence


def sample_triplets_gumbel(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` triplets of distinct indices drawn without replacement with probability proportional to
    ``weights`` (N,) (Gumbel top-k: the 3 largest of log w + Gumbel noise), as (1,count,3) for ``solve``.
    Same distribution as ``torch.multinomial(..., 3, replacement=False)`` per row, without its per-row cost."""
    u = torch.rand((count, weights.shape[0]), generator=generator, device=weights.device).clamp_(1e-12, 1.0)
    keys = torch.log(weights.clamp_min(1e-20)).unsqueeze(0) - torch.log(-torch.log(u))
    return keys.topk(3, dim=1).indices.unsqueeze(0)


@dataclass
class RGBDFeatures:
    """Cached reference data: features, cleaned depth (H,W), 3-D points per keypoint (N,3, NaN rows) and the
    number of keypoints detected before those without depth were dropped."""

    features: Features
    depth: torch.Tensor
    K: torch.Tensor
    points: torch.Tensor
    num_detected: int = 0


class RGBDEstimator(Estimator):
    """Feature matching + depth: 3-D/3-D RANSAC (both depths) or PnP (reference depth only)."""

    name = 'rgbd'
    depth_usage = 'reference'
    default_config = {
        'extractor': 'auto',            # auto | opencv_sift | kornia_sift | disk | aliked | loftr
        'matcher': 'auto',              # auto | mnn_ratio | lightglue | loftr
        'weights': {'extractor': '', 'matcher': ''},   # local weight files of learned extractors / matchers
        'num_features': 4000,
        'contrast_threshold': 0.01,     # OpenCV SIFT detection threshold (lower: more keypoints)
        'root_sift': True,
        'ratio': 0.9,                   # Lowe's ratio test (first / second neighbour distance)
        'mutual': True,
        'use_query_depth': True,        # False: always PnP
        # match only reference keypoints that have a 3-D point (the others can never be used)
        'reference_keypoints_with_depth_only': True,
        'depth': {'min_m': 0.1, 'max_m': 10.0, 'edge_window': 5, 'edge_abs_m': 0.02, 'edge_rel': 0.03},
        'ransac': {'hypotheses': 512, 'th_score_m': 0.05, 'th_refine_m': 0.03, 'softness': 5.0, 'seed': 0},
        'pnp': {'reprojection_px': 3.0, 'iterations': 2000, 'confidence': 0.9999, 'th_soft_px': 3.0},
        # reprojection refinement on the inliers: always for PnP; for 3-D/3-D only when 'reprojection_3d3d'
        # (off by default: with real RGB-D noise the solver's Procrustes refit on inliers measured better)
        'refine': {'reprojection_3d3d': False, 'huber_px': 1.5, 'max_iterations': 20},
        'min_keypoints': 30,            # fewer keypoints: textureless image
        'min_matches': 12,              # fewer matches (or matches with depth): failure
        'min_inliers': 8,               # fewer hard inliers: failure (no overlap)
        'confidence_saturation': 30.0,  # S0 in confidence = (S / N) (1 - exp(-S / S0))
        # torch intra-op threads while this backend runs on the CPU (restored afterwards); its tensors are small,
        # so one thread avoids thread start/sync costs (measured: RANSAC 6 ms with 1 thread, 80 ms with 2 on a
        # busy 2-core machine). 0 = leave torch's setting. OpenCV's SIFT keeps its own threads.
        'cpu_threads': 1,
    }

    def __init__(self, config=None, device: str = 'auto') -> None:
        super().__init__(config, device)
        c = self.config
        self.extractor, self.matcher = build_pipeline(c['extractor'], c['matcher'], c, self.device)
        r = c['ransac']
        self.solver_config = SolverConfig(hypotheses_per_set=int(r['hypotheses']), th_score=float(r['th_score_m']),
                                          th_refine=float(r['th_refine_m']), softness=float(r['softness']),
                                          seed=int(r['seed']))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), 'extractor': self.extractor.name, 'matcher': self.matcher.name}

    @contextmanager
    def _threads(self) -> Iterator[None]:
        n = int(self.config['cpu_threads'])
        if self.device.type != 'cpu' or n <= 0:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    # ------------------------------------------------------------------ reference

    def _depth_hint(self) -> str:
        d = self.config['depth']
        return (f"depth must be float32 metres in [{d['min_m']}, {d['max_m']}] (depth.min_m / depth.max_m), "
                'registered to the colour image')

    def _depth_tensor(self, frame: Frame) -> torch.Tensor:
        d = self.config['depth']
        cleaned = clean_depth(frame.depth, d['min_m'], d['max_m'], int(d['edge_window']), d['edge_abs_m'],
                              d['edge_rel'])
        return torch.from_numpy(cleaned).to(self.device)

    @torch.inference_mode()
    def prepare_reference(self, frame: Frame) -> Reference:
        """Features, cleaned depth and 3-D keypoints of the reference. Raises FrameError without depth."""
        if frame.depth is None:
            raise FrameError("the rgbd backend needs depth on the reference frame (got an RGB-only frame); "
                             "subscribe a registered depth image or use a backend with depth_usage 'none'")
        timer = StageTimer()
        with self._threads(), timer('extract'):
            feats = self.extractor.extract(frame.rgb)
        with self._threads(), timer('lift'):
            depth = self._depth_tensor(frame)
            K = torch.as_tensor(frame.K, dtype=torch.float32, device=self.device)
            points = lift(depth, feats.keypoints, K)
            detected = len(feats)
            if self.config['reference_keypoints_with_depth_only'] and feats.descriptors is not None:
                keep = torch.isfinite(points).all(-1)
                feats = Features(feats.keypoints[keep], feats.descriptors[keep], feats.size,
                                 None if feats.scores is None else feats.scores[keep], feats.image)
                points = points[keep]
        return Reference(frame=frame, features=RGBDFeatures(feats, depth, K, points, detected), timings=timer.timings)

    # ------------------------------------------------------------------ live frames

    @torch.inference_mode()
    def estimate(self, reference: Reference, frame: Frame) -> PoseEstimate:
        timer = StageTimer()
        try:
            with self._threads():
                return self._estimate(reference, frame, timer)
        except FrameError as exc:
            return PoseEstimate.failure(f'bad frame: {exc}', timings=timer.timings)
        except (cv2.error, np.linalg.LinAlgError, ValueError) as exc:   # numerical trouble on odd input
            return PoseEstimate.failure(f'pose computation failed: {type(exc).__name__}: {exc}',
                                        timings=timer.timings)

    def _estimate(self, reference: Reference, frame: Frame, timer: StageTimer) -> PoseEstimate:
        c = self.config
        ref: RGBDFeatures = reference.features
        if ref.features.descriptors is not None:
            if ref.num_detected < c['min_keypoints']:
                return PoseEstimate.failure(f'textureless reference image: {ref.num_detected} keypoints '
                                            f'(< min_keypoints {c["min_keypoints"]})', timings=timer.timings)
            if len(ref.features) < c['min_matches']:
                return PoseEstimate.failure(f'no valid depth at the matches: only {len(ref.features)} of '
                                            f'{ref.num_detected} reference keypoints have depth '
                                            f'(< min_matches {c["min_matches"]}; {self._depth_hint()})',
                                            timings=timer.timings)
        with timer('extract'):
            feats = self.extractor.extract(frame.rgb)
        if len(feats) < c['min_keypoints'] and feats.descriptors is not None:
            return PoseEstimate.failure(f'textureless query image: {len(feats)} keypoints '
                                        f'(< min_keypoints {c["min_keypoints"]})', timings=timer.timings)
        with timer('match'):
            m = self.matcher.match(ref.features, feats)
        if len(m) < c['min_matches']:
            return PoseEstimate.failure(f'too few matches: {len(m)} (< min_matches {c["min_matches"]})',
                                        timings=timer.timings)
        with timer('lift'):
            X = ref.points[m.idx_a] if m.idx_a is not None else lift(ref.depth, m.kp_a, ref.K)
            ok_ref = torch.isfinite(X).all(-1)
            Kq = torch.as_tensor(frame.K, dtype=torch.float32, device=self.device)
            use_3d = frame.depth is not None and c['use_query_depth']
            if use_3d:
                Y = lift(self._depth_tensor(frame), m.kp_b, Kq)
                ok_both = ok_ref & torch.isfinite(Y).all(-1)
                use_3d = int(ok_both.sum()) >= c['min_matches']
        if int(ok_ref.sum()) < c['min_matches']:
            return PoseEstimate.failure(f'no valid depth at the matches: {int(ok_ref.sum())} of {len(m)} matches '
                                        f'have reference depth (< min_matches {c["min_matches"]}; '
                                        f'{self._depth_hint()})', timings=timer.timings)
        if use_3d:
            return self._pose_3d3d(m, X, Y, ok_both, ref, frame, timer)
        return self._pose_pnp(m, X, ok_ref, ref, frame, timer)

    def _pose_3d3d(self, m, X, Y, ok, ref: RGBDFeatures, frame: Frame, timer: StageTimer) -> PoseEstimate:
        c = self.config
        X, Y, w = X[ok], Y[ok], m.scores[ok].float() + 1e-3
        uv_r, uv_q = m.kp_a[ok], m.kp_b[ok]
        with timer('ransac'):
            gen = torch.Generator(device=X.device).manual_seed(self.solver_config.seed)
            triplets = sample_triplets_gumbel(w, self.solver_config.hypotheses_per_set, gen)
            res = solve(X, Y, w, self.solver_config, triplets=triplets)
        if not res.ok:
            return PoseEstimate.failure(f'3-D/3-D RANSAC failed: {res.reason}', timings=timer.timings)
        inl = res.inlier_mask
        if res.num_inliers < c['min_inliers']:
            return PoseEstimate.failure(f'too few inliers: {res.num_inliers} of {len(X)} correspondences '
                                        f'(< min_inliers {c["min_inliers"]}; no overlap?)',
                                        timings=timer.timings, score=res.score, num_inliers=res.num_inliers)
        R, t = nearest_rotation(res.R), res.t
        Xn, Yn = X.double().cpu().numpy(), Y.double().cpu().numpy()
        if c['refine']['reprojection_3d3d']:
            with timer('refine'):
                R, t = refine_reprojection(R, t, Xn[inl], uv_q.double().cpu().numpy()[inl], frame.K,
                                           Yn[inl], uv_r.double().cpu().numpy()[inl], ref.K.double().cpu().numpy(),
                                           c['refine']['huber_px'], c['refine']['max_iterations'])
        cfg = self.solver_config
        r = residuals(torch.from_numpy(R), torch.from_numpy(t), torch.from_numpy(Xn), torch.from_numpy(Yn))
        score = float(soft_inliers(r, cfg.th_refine, cfg.softness).sum())
        n_inl = int(hard_inliers(r, cfg.th_refine).sum())
        conf = soft_inlier_confidence(score, len(Xn), c['confidence_saturation'])
        return PoseEstimate(R=R, t=t, confidence=conf, score=score, num_inliers=n_inl, ok=True,
                            reason='3d-3d', timings=timer.timings)

    def _pose_pnp(self, m, X, ok, ref: RGBDFeatures, frame: Frame, timer: StageTimer) -> PoseEstimate:
        c, p = self.config, self.config['pnp']
        Xn = X[ok].double().cpu().numpy()
        uv_q = m.kp_b[ok].double().cpu().numpy()
        with timer('ransac'):
            res = pnp_ransac(Xn, uv_q, frame.K, p['reprojection_px'], p['iterations'], p['confidence'],
                             self.config['ransac']['seed'])
        if res is None:
            return PoseEstimate.failure('PnP RANSAC found no pose', timings=timer.timings)
        R, t, inl = res
        if int(inl.sum()) < c['min_inliers']:
            return PoseEstimate.failure(f'too few inliers: {int(inl.sum())} of {len(Xn)} correspondences '
                                        f'(< min_inliers {c["min_inliers"]}; no overlap?)',
                                        timings=timer.timings, num_inliers=int(inl.sum()))
        with timer('refine'):
            R, t = refine_reprojection(R, t, Xn[inl], uv_q[inl], frame.K, huber_px=c['refine']['huber_px'],
                                       max_iterations=c['refine']['max_iterations'])
        err = reprojection_errors(R, t, Xn, uv_q, frame.K)
        th, k = float(p['th_soft_px']), float(c['ransac']['softness'])
        score = float(np.sum(expit((k / th) * (th - np.minimum(err, 1e6)))))
        n_inl = int(np.sum(err <= th))
        conf = soft_inlier_confidence(score, len(Xn), c['confidence_saturation'])
        return PoseEstimate(R=R, t=t, confidence=conf, score=score, num_inliers=n_inl, ok=True,
                            reason='pnp', timings=timer.timings)
