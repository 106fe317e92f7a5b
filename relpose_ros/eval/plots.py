"""Evaluation plots (matplotlib, Agg backend, PNG files).

Each function takes a list of :class:`~relpose_ros.eval.metrics.PairResult` (and, for the trajectory,
poses) and writes one PNG, returning its path. :func:`write_all` writes the standard set.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .metrics import POSE_ROT_THRESHOLD_DEG, POSE_TRANS_THRESHOLD_M, PairResult  # noqa: E402


def _good(pairs: Sequence[PairResult]) -> list[PairResult]:
    return [p for p in pairs if p.has_gt and not p.failed]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def error_vs_gap(pairs: Sequence[PairResult], path: Path) -> Path:
    """Median (and 25-75 % band) rotation and camera-centre error per frame gap, plus failure rate."""
    gaps = sorted({p.gap for p in pairs if p.has_gt})
    fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    stats = {'rot': [], 'trans': []}
    fail = []
    for g in gaps:
        sub = [p for p in pairs if p.gap == g and p.has_gt]
        good = _good(sub)
        fail.append(1.0 - len(good) / len(sub) if sub else np.nan)
        for key, attr in (('rot', 'rot_err_deg'), ('trans', 'trans_err_m')):
            v = [getattr(p, attr) for p in good]
            stats[key].append(np.percentile(v, [25, 50, 75]) if v else [np.nan] * 3)
    for ax, key, label, thr in ((ax_r, 'rot', 'rotation error (deg)', POSE_ROT_THRESHOLD_DEG),
                                (ax_t, 'trans', 'camera-centre error (m)', POSE_TRANS_THRESHOLD_M)):
        s = np.asarray(stats[key], dtype=float).reshape(-1, 3)
        if len(gaps):
            ax.fill_between(gaps, s[:, 0], s[:, 2], alpha=0.25, label='25-75 %')
            ax.plot(gaps, s[:, 1], 'o-', label='median')
        ax.axhline(thr, color='r', ls='--', lw=1, label='Map-free threshold')
        ax.set_xlabel('frame gap')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax_f = ax_t.twinx()
    ax_f.plot(gaps, fail, 'k:', marker='x', label='failure rate')
    ax_f.set_ylabel('failure rate')
    ax_f.set_ylim(0, 1)
    ax_r.legend(loc='upper left', fontsize=8)
    ax_f.legend(loc='upper right', fontsize=8)
    fig.suptitle('Error vs frame gap')
    return _save(fig, path)


def top_view_axes(points: np.ndarray) -> tuple[int, int]:
    """The two world axes with the largest spread (the top view drops the one with the least)."""
    p = np.asarray(points, float).reshape(-1, 3)
    p = p[np.all(np.isfinite(p), axis=1)]
    if len(p) < 2:
        return 0, 1
    a, b = sorted(np.argsort(np.ptp(p, axis=0))[1:])
    return int(a), int(b)


def trajectory_top_view(gt_centres: np.ndarray, est_centres: np.ndarray, path: Path,
                        ref_centres: np.ndarray | None = None, gt_path: np.ndarray | None = None) -> Path:
    """Top view of true vs estimated camera centres (world frame, the two axes of largest spread).

    gt_centres, est_centres: (N,3) query centres (NaN rows = failures, drawn as red crosses at the truth);
    ref_centres: (M,3) keyframes; gt_path: (K,3) the whole true trajectory in frame order.
    """
    gt, est = np.asarray(gt_centres, float).reshape(-1, 3), np.asarray(est_centres, float).reshape(-1, 3)
    line = gt if gt_path is None or len(gt_path) < 2 else np.asarray(gt_path, float).reshape(-1, 3)
    a, b = top_view_axes(line)
    names = 'xyz'
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.plot(line[:, a], line[:, b], '-', color='0.5', lw=1.0, label='ground-truth path')
    ok = np.all(np.isfinite(est), axis=1)
    for g, e in zip(gt[ok], est[ok]):
        ax.plot([g[a], e[a]], [g[b], e[b]], color='tab:orange', lw=0.6, alpha=0.6)
    ax.scatter(gt[ok, a], gt[ok, b], s=8, c='0.2', label='true query', zorder=3)
    ax.scatter(est[ok, a], est[ok, b], s=10, c='tab:orange', label='estimated query', zorder=3)
    if (~ok).any():
        ax.scatter(gt[~ok, a], gt[~ok, b], marker='x', s=20, c='tab:red', label='failure', zorder=3)
    if ref_centres is not None and len(ref_centres):
        r = np.asarray(ref_centres, float).reshape(-1, 3)
        ax.scatter(r[:, a], r[:, b], marker='*', s=80, c='tab:blue', label='reference keyframe', zorder=4)
    ax.set_xlabel(f'{names[a]} (m)')
    ax.set_ylabel(f'{names[b]} (m)')
    ax.set_aspect('equal', adjustable='datalim')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title('Trajectory, top view (world frame)')
    return _save(fig, path)


def confidence_vs_error(pairs: Sequence[PairResult], path: Path) -> Path:
    """Scatter of confidence against camera-centre and rotation error (successful pairs)."""
    good = _good(pairs)
    conf = [p.confidence for p in good]
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    ax_t.scatter(conf, [p.trans_err_m for p in good], s=8)
    ax_t.axhline(POSE_TRANS_THRESHOLD_M, color='r', ls='--', lw=1)
    ax_t.set_ylabel('camera-centre error (m)')
    ax_r.scatter(conf, [p.rot_err_deg for p in good], s=8, c='tab:green')
    ax_r.axhline(POSE_ROT_THRESHOLD_DEG, color='r', ls='--', lw=1)
    ax_r.set_ylabel('rotation error (deg)')
    for ax in (ax_t, ax_r):
        ax.set_xlabel('confidence')
        ax.set_yscale('symlog', linthresh=0.1 if ax is ax_t else 1.0)
        ax.grid(alpha=0.3)
    fig.suptitle('Confidence vs error')
    return _save(fig, path)


def error_per_frame(pairs: Sequence[PairResult], path: Path) -> Path:
    """Rotation and camera-centre error against the query index; failures marked on the axis."""
    fig, (ax_t, ax_r) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    good = _good(pairs)
    failed = [p for p in pairs if p.has_gt and p.failed]
    q = [p.query for p in good]
    ax_t.plot(q, [p.trans_err_m for p in good], '.', ms=3)
    ax_r.plot(q, [p.rot_err_deg for p in good], '.', ms=3, c='tab:green')
    for ax in (ax_t, ax_r):
        if failed:
            ax.plot([p.query for p in failed], np.zeros(len(failed)), 'rx', ms=4, label='failure')
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_t.axhline(POSE_TRANS_THRESHOLD_M, color='r', ls='--', lw=1)
    ax_r.axhline(POSE_ROT_THRESHOLD_DEG, color='r', ls='--', lw=1)
    ax_t.set_ylabel('centre error (m)')
    ax_r.set_ylabel('rotation error (deg)')
    ax_r.set_xlabel('query frame')
    return _save(fig, path)


def latency_histogram(latencies_ms: Sequence[float], path: Path, title: str = 'Latency') -> Path:
    """Histogram of latencies (ms) with p50 / p95 lines."""
    x = np.asarray([v for v in latencies_ms if v is not None and np.isfinite(v)], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(x):
        ax.hist(x, bins=min(40, max(5, len(x) // 3)), color='tab:purple', alpha=0.8)
        for p, ls in ((50, '-'), (95, '--')):
            v = np.percentile(x, p)
            ax.axvline(v, color='k', ls=ls, lw=1, label=f'p{p} = {v:.1f} ms')
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, 'no latency samples', ha='center', va='center', transform=ax.transAxes)
    ax.set_xlabel('latency (ms)')
    ax.set_ylabel('frames')
    ax.set_title(title)
    return _save(fig, path)


def write_all(pairs: Sequence[PairResult], out_dir: Path, trajectory: dict | None = None,
              prefix: str = '') -> dict[str, str]:
    """Write the standard plots into ``out_dir``; returns ``{name: file name}``.

    trajectory: optional ``{'gt': (N,3), 'est': (N,3), 'ref': (M,3)}`` camera centres in one frame.
    """
    out_dir = Path(out_dir)
    files = {
        'error_vs_gap': error_vs_gap(pairs, out_dir / f'{prefix}error_vs_gap.png'),
        'confidence_vs_error': confidence_vs_error(pairs, out_dir / f'{prefix}confidence_vs_error.png'),
        'error_per_frame': error_per_frame(pairs, out_dir / f'{prefix}error_per_frame.png'),
        'latency_histogram': latency_histogram([p.latency_ms for p in pairs],
                                               out_dir / f'{prefix}latency_histogram.png'),
    }
    if trajectory is not None:
        files['trajectory'] = trajectory_top_view(trajectory['gt'], trajectory['est'],
                                                  out_dir / f'{prefix}trajectory.png', trajectory.get('ref'),
                                                  trajectory.get('path'))
    return {k: v.name for k, v in files.items()}
