"""Map-free metrics for relative poses (see ``../shared/REFERENCE.md``).

Per pair: camera-centre error (m), rotation error (deg), translation-direction error (deg) and VCRE
(px, with the query's K and image size, projections clipped to the image). Over a list of pairs:
medians, precision at 25 cm / 5 deg and at 90 px, AUC by confidence with failures counted, Spearman
between confidence and error, latency percentiles and per-gap summaries.

A *failure* is a pair without a usable estimate: no estimate at all, ``ok`` False, or a non-finite pose.
Failures count in every denominator (precision, AUC recall) and never in the medians.
Pairs without ground truth are not scored at all; they are counted separately (``n_no_gt``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..geometry import camera_centre_error, project, rotation_error_deg, translation_direction_error_deg

#: Acceptance thresholds of the Map-free benchmark.
POSE_TRANS_THRESHOLD_M = 0.25
POSE_ROT_THRESHOLD_DEG = 5.0
VCRE_THRESHOLD_PX = 90.0

#: Keys of a summary, in metrics.json order (latency keys only in replay mode).
SUMMARY_KEYS = ('n_pairs', 'n_failed', 'median_rot_err_deg', 'median_trans_err_m', 'median_vcre_px',
                'precision_pose', 'precision_vcre', 'auc_pose', 'auc_vcre', 'spearman_conf_err')
LATENCY_KEYS = ('latency_ms_p50', 'latency_ms_p95', 'dropped_frames')


def virtual_points() -> np.ndarray:
    """The 196 VCRE points (7x4x7 grid, 0.3 m step) in the true query camera frame, (196, 3) metres."""
    xs = -0.9 + 0.3 * np.arange(7)
    ys = -0.45 + 0.3 * np.arange(4)
    zs = 1.8 + 0.3 * np.arange(7)
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing='ij')
    return np.stack([X.ravel(), Y.ravel(), Z.ravel()], axis=1)


_VIRTUAL_POINTS = virtual_points()


def vcre_px(R_est, t_est, R_gt, t_gt, K, width: int, height: int) -> float:
    """Virtual correspondence reprojection error (px) of a ``T_query_from_ref`` estimate vs the truth.

    As the Map-free benchmark evaluates it: the 196 virtual points X (in front of the camera) project with the
    query's K as ``K X`` under the truth and as ``K T_est^-1 T_gt X`` under the estimate, i.e.
    ``R_est^T (R_gt X + t_gt - t_est)`` (the residual transform, identity for a perfect estimate). Both
    projections are clipped to [0, width] x [0, height]; VCRE is the mean Euclidean distance.
    """
    R_est, R_gt = np.asarray(R_est, float), np.asarray(R_gt, float)
    t_est, t_gt = np.asarray(t_est, float).reshape(3), np.asarray(t_gt, float).reshape(3)
    X = _VIRTUAL_POINTS
    X_res = (X @ R_gt.T + (t_gt - t_est)) @ R_est        # (196,3): R_est^T (R_gt X + t_gt - t_est)
    lo, hi = np.zeros(2), np.array([float(width), float(height)])
    with np.errstate(divide='ignore', invalid='ignore'):
        uv_gt = np.clip(project(X, K), lo, hi)
        uv_est = np.clip(project(X_res, K), lo, hi)
    uv_est = np.where(np.isfinite(uv_est), uv_est, hi)  # a point on the camera centre lands on the border
    return float(np.linalg.norm(uv_gt - uv_est, axis=1).mean())


@dataclass
class PairErrors:
    """Errors of one estimate against ground truth."""

    rot_err_deg: float
    trans_err_m: float
    transdir_err_deg: float
    vcre_px: float


def pair_errors(R_est, t_est, T_gt_query_from_ref, K, width: int, height: int) -> PairErrors:
    """All per-pair errors of an estimated ``T_query_from_ref = (R_est, t_est)`` against the true 4x4."""
    T = np.asarray(T_gt_query_from_ref, dtype=np.float64)
    R_gt, t_gt = T[:3, :3], T[:3, 3]
    return PairErrors(
        rot_err_deg=rotation_error_deg(R_est, R_gt),
        trans_err_m=camera_centre_error(R_est, t_est, R_gt, t_gt),
        transdir_err_deg=translation_direction_error_deg(t_est, t_gt),
        vcre_px=vcre_px(R_est, t_est, R_gt, t_gt, K, width, height),
    )


@dataclass
class PairResult:
    """One scored (or unscorable) pair. Errors are None for failures and for pairs without ground truth."""

    reference: int
    query: int
    gap: int
    R: np.ndarray
    t: np.ndarray
    confidence: float
    ok: bool
    has_gt: bool = True
    rot_err_deg: float | None = None
    trans_err_m: float | None = None
    transdir_err_deg: float | None = None
    vcre_px: float | None = None
    latency_ms: float | None = None
    reason: str = ''
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """A scored pair without a usable estimate (not ok, or non-finite)."""
        return self.has_gt and not (self.ok and self.rot_err_deg is not None and np.isfinite(self.rot_err_deg)
                                    and np.isfinite(self.trans_err_m))

    def to_json(self) -> dict:
        def num(x):
            return None if x is None or not np.isfinite(x) else float(x)
        d = {'reference': int(self.reference), 'query': int(self.query), 'gap': int(self.gap),
             'R': np.asarray(self.R, float).tolist(), 't': np.asarray(self.t, float).tolist(),
             'confidence': num(self.confidence) or 0.0, 'ok': bool(self.ok),
             'rot_err_deg': num(self.rot_err_deg), 'trans_err_m': num(self.trans_err_m),
             'vcre_px': num(self.vcre_px), 'transdir_err_deg': num(self.transdir_err_deg),
             'has_gt': bool(self.has_gt), 'latency_ms': num(self.latency_ms), 'reason': self.reason}
        d.update(self.extra)
        return d


def score_pair(reference: int, query: int, R, t, confidence: float, ok: bool, T_gt_query_from_ref,
               K, width: int, height: int, latency_ms: float | None = None, reason: str = '',
               gap: int | None = None) -> PairResult:
    """Build a :class:`PairResult`; a non-finite estimate becomes a failure, no ground truth is marked."""
    R = np.asarray(R, dtype=np.float64).reshape(3, 3)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    finite = bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and np.isfinite(confidence))
    if ok and not finite:
        ok, reason = False, reason or 'non-finite estimate'
    res = PairResult(reference=reference, query=query, gap=query - reference if gap is None else gap,
                     R=R, t=t, confidence=float(confidence) if np.isfinite(confidence) else 0.0, ok=bool(ok),
                     has_gt=T_gt_query_from_ref is not None, latency_ms=latency_ms, reason=reason)
    if res.has_gt and res.ok:
        e = pair_errors(R, t, T_gt_query_from_ref, K, width, height)
        res.rot_err_deg, res.trans_err_m = e.rot_err_deg, e.trans_err_m
        res.transdir_err_deg, res.vcre_px = e.transdir_err_deg, e.vcre_px
    return res


# ----------------------------------------------------------------------------- aggregate metrics


def precision(accepted: Sequence[bool], n_failed: int) -> float:
    """Accepted / (estimates + failures); NaN when there is nothing to score."""
    n = len(accepted) + n_failed
    return float(np.sum(accepted) / n) if n else float('nan')


def auc_by_confidence(confidence: Sequence[float], accepted: Sequence[bool], n_failed: int) -> float:
    """Area under the precision-recall curve with estimates ranked by confidence (highest first).

    At rank k: precision = accepted in the top k / k, recall = k / (N + failures);
    AP = sum over ranks of delta-recall x precision. Failures never get a rank, so they cap the recall.
    Ties in confidence are broken by input order (stable sort).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    acc = np.asarray(accepted, dtype=bool)
    n_total = len(acc) + n_failed
    if n_total == 0:
        return float('nan')
    if len(acc) == 0:
        return 0.0
    order = np.argsort(-conf, kind='stable')
    ranks = np.arange(1, len(acc) + 1)
    prec = np.cumsum(acc[order]) / ranks
    return float(np.sum(prec) / n_total)  # every step adds 1 / n_total of recall


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (NaN with fewer than 3 values or a constant input)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float('nan')
    from scipy.stats import spearmanr
    return float(spearmanr(a, b).statistic)


def latency_percentiles(latencies_ms: Iterable[float], percentiles=(50, 90, 95, 99)) -> dict[str, float]:
    """``{'p50': ..., 'p90': ..., 'mean': ..., 'max': ...}`` in ms (NaN when empty)."""
    x = np.asarray([v for v in latencies_ms if v is not None and np.isfinite(v)], dtype=np.float64)
    out = {f'p{p}': (float(np.percentile(x, p)) if len(x) else float('nan')) for p in percentiles}
    out['mean'] = float(x.mean()) if len(x) else float('nan')
    out['max'] = float(x.max()) if len(x) else float('nan')
    out['n'] = int(len(x))
    return out


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float('nan')


def summarize(pairs: Sequence[PairResult], dropped_frames: int | None = None,
              with_latency: bool = False) -> dict[str, float]:
    """The metrics.json summary of a list of pairs (only pairs with ground truth are scored).

    ``spearman_conf_err`` correlates confidence with the camera-centre error over the successful pairs
    (a well-calibrated backend gives a negative value), leaving out replayed poses whose confidence never
    arrived (``extra['confidence_missing']``). With ``with_latency`` the replay keys
    ``latency_ms_p50``, ``latency_ms_p95`` and ``dropped_frames`` are added.
    """
    scored = [p for p in pairs if p.has_gt]
    good = [p for p in scored if not p.failed]
    n_failed = len(scored) - len(good)
    rot = [p.rot_err_deg for p in good]
    trans = [p.trans_err_m for p in good]
    vcre = [p.vcre_px for p in good]
    conf = [p.confidence for p in good]
    calibrated = [(p.confidence, p.trans_err_m) for p in good if not p.extra.get('confidence_missing')]
    acc_pose = [r < POSE_ROT_THRESHOLD_DEG and t < POSE_TRANS_THRESHOLD_M for r, t in zip(rot, trans)]
    acc_vcre = [v < VCRE_THRESHOLD_PX for v in vcre]
    out = {
        'n_pairs': len(scored),
        'n_failed': n_failed,
        'median_rot_err_deg': _median(rot),
        'median_trans_err_m': _median(trans),
        'median_vcre_px': _median(vcre),
        'precision_pose': precision(acc_pose, n_failed),
        'precision_vcre': precision(acc_vcre, n_failed),
        'auc_pose': auc_by_confidence(conf, acc_pose, n_failed),
        'auc_vcre': auc_by_confidence(conf, acc_vcre, n_failed),
        'spearman_conf_err': spearman(*zip(*calibrated)) if calibrated else float('nan'),
    }
    if with_latency:
        lat = latency_percentiles(p.latency_ms for p in pairs)
        out['latency_ms_p50'] = lat['p50']
        out['latency_ms_p95'] = lat['p95']
        out['dropped_frames'] = int(dropped_frames or 0)
    return out


def summarize_per_gap(pairs: Sequence[PairResult], with_latency: bool = False,
                      gap_bin: int = 1) -> dict[str, dict[str, float]]:
    """``{str(gap): summary}`` for every gap present, in increasing gap order.

    ``gap_bin`` > 1 groups gaps into bins keyed by their lower edge (``gap // bin * bin``), useful for the fixed
    reference protocol where every query has its own gap. In replay mode the per-gap ``dropped_frames`` counts
    the pairs of that gap for which no pose was published (dropped or failed).
    """
    gap_bin = max(int(gap_bin), 1)
    key = {p.gap: p.gap // gap_bin * gap_bin for p in pairs}
    out = {}
    for g in sorted(set(key.values())):
        sub = [p for p in pairs if key[p.gap] == g]
        dropped = sum(1 for p in sub if p.extra.get('dropped'))
        out[str(g)] = summarize(sub, dropped_frames=dropped, with_latency=with_latency)
    return out


def details(pairs: Sequence[PairResult]) -> dict[str, float]:
    """Extra numbers for the report (not part of the stable summary keys)."""
    good = [p for p in pairs if p.has_gt and not p.failed]
    td = [p.transdir_err_deg for p in good if p.transdir_err_deg is not None and np.isfinite(p.transdir_err_deg)]
    lat = latency_percentiles(p.latency_ms for p in pairs)
    reasons: dict[str, int] = {}
    for p in pairs:
        if p.has_gt and p.failed:
            key = re.sub(r'\d+(\.\d+)?', 'N', p.reason) if p.reason else 'not ok'  # group by kind
            reasons[key] = reasons.get(key, 0) + 1
    return {
        'n_no_gt': sum(1 for p in pairs if not p.has_gt),
        'median_transdir_err_deg': _median(td),
        'mean_rot_err_deg': float(np.mean([p.rot_err_deg for p in good])) if good else float('nan'),
        'mean_trans_err_m': float(np.mean([p.trans_err_m for p in good])) if good else float('nan'),
        'latency_ms': lat,
        'failure_reasons': reasons,
    }
