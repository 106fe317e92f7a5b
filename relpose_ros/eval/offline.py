"""Offline evaluation: run a backend directly over the pairs of a sequence and score every pair.

Each reference is prepared once (``prepare_reference``) and reused for all its queries; the per-query
``estimate`` time is recorded as the pair's latency. A frame that cannot be read (truncated file or bag,
camera_info inconsistent with the image) stops the run: the pairs done so far are kept and the result is marked
partial; when it happens before the first pair the error is raised.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence as Seq

import numpy as np
from tqdm import tqdm

from ..data.sequence import reader_counts
from ..errors import ConfigError, DatasetError
from ..geometry import inverse_T, relative_pose
from .metrics import PairResult, score_pair
from .protocols import Pair
from .report import EvalResult


class FrameCache:
    """A small LRU cache of loaded frames (keyframes are reused by many queries)."""

    def __init__(self, sequence, size: int = 8):
        self.sequence, self.size = sequence, size
        self._items: OrderedDict = OrderedDict()

    def __call__(self, index: int):
        if index in self._items:
            self._items.move_to_end(index)
            return self._items[index]
        item = self.sequence[index]
        self._items[index] = item
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return item


def trajectory_from_pairs(world_poses: dict[int, np.ndarray | None], pairs: Seq[PairResult]) -> dict | None:
    """World-frame camera centres for the top-view plot.

    world_poses: frame index -> ``T_world_from_cam`` (or None when unknown). Returns ``{'gt': (N,3) true query
    centres, 'est': (N,3) estimated centres (NaN for failures), 'ref': (M,3) keyframes, 'path': (K,3) every
    known frame in index order}`` or None without ground truth.
    """
    gt, est, refs = [], [], {}
    for p in pairs:
        T_ref, T_q = world_poses.get(p.reference), world_poses.get(p.query)
        if T_ref is None or T_q is None:
            continue
        gt.append(T_q[:3, 3])
        refs[p.reference] = T_ref[:3, 3]
        if p.failed:
            est.append(np.full(3, np.nan))
        else:
            T_q_r = np.eye(4)
            T_q_r[:3, :3], T_q_r[:3, 3] = p.R, p.t
            est.append((T_ref @ inverse_T(T_q_r))[:3, 3])
    if not gt:
        return None
    path = [world_poses[i][:3, 3] for i in sorted(world_poses) if world_poses[i] is not None]
    return {'gt': np.array(gt), 'est': np.array(est), 'ref': np.array(list(refs.values())), 'path': np.array(path)}


def evaluate_offline(estimator, sequence, pairs: Seq[Pair], progress: bool = True,
                     meta: dict | None = None) -> EvalResult:
    """Run ``estimator`` over ``pairs`` of ``sequence``; returns an :class:`EvalResult` (mode 'offline')."""
    load = FrameCache(sequence)
    results: list[PairResult] = []
    partial, partial_reason = False, ''
    order = sorted(pairs, key=lambda p: (p.reference, p.query))
    current_ref, prepared = None, None
    poses: dict[int, np.ndarray | None] = {}
    bar = tqdm(order, desc=f'eval {getattr(estimator, "name", "")}', unit='pair', disable=not progress,
               dynamic_ncols=True)
    for pair in bar:
        try:
            ref_item = load(pair.reference)
            q_item = load(pair.query)
        except (DatasetError, OSError, ValueError) as exc:
            if not results:  # nothing to keep: fail loudly with the reader's message
                raise DatasetError(f'cannot evaluate: {exc}') from None
            partial, partial_reason = True, f'stopped at pair {pair.reference}->{pair.query}: {exc}'
            break
        if pair.reference != current_ref:
            prepared, current_ref = estimator.prepare_reference(ref_item.frame), pair.reference
        t0 = time.perf_counter()
        try:
            est = estimator.estimate(prepared, q_item.frame)
            R, t, conf, ok, reason = est.R, est.t, est.confidence, est.ok, est.reason
        except ConfigError:
            raise
        except Exception as exc:  # an estimator must not raise on content; count it, keep going, report it
            R, t, conf, ok, reason = np.eye(3), np.zeros(3), 0.0, False, f'exception {type(exc).__name__}: {exc}'
        latency_ms = (time.perf_counter() - t0) * 1e3
        for idx, item in ((pair.reference, ref_item), (pair.query, q_item)):
            poses[idx] = item.T_world_from_cam if item.has_pose else None
        T_gt = None
        if ref_item.has_pose and q_item.has_pose:
            T_gt = relative_pose(ref_item.T_world_from_cam, q_item.T_world_from_cam)
        f = q_item.frame
        results.append(score_pair(pair.reference, pair.query, R, t, conf, ok, T_gt, f.K, f.width, f.height,
                                  latency_ms=latency_ms, reason=reason, gap=pair.gap))
    bar.close()
    if getattr(sequence, 'partial', False):  # e.g. a truncated bag: read up to its last complete message
        reason = getattr(sequence, 'partial_reason', '') or 'the dataset was read only in part'
        partial, partial_reason = True, '; '.join(r for r in (reason, partial_reason) if r)
    info = dict(meta or {})
    info.setdefault('frames_without_gt', getattr(sequence, 'frames_without_gt', None))
    for key, count in reader_counts(sequence).items():  # frames the reader left out (skipped_no_depth, ...)
        info.setdefault(key, count)
    info.setdefault('backend', getattr(estimator, 'name', ''))
    info.setdefault('frames', len(sequence))
    return EvalResult(pairs=results, mode='offline', meta=info, partial=partial, partial_reason=partial_reason,
                      trajectory=trajectory_from_pairs(poses, results))
