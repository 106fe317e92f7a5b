"""Replay evaluation: play a bag into a spawned (or running) ``relocalize_node`` over DDS, record what it
publishes with arrival times (:mod:`relpose_ros.ros.replay`), and score it like an offline run.

The node holds one reference, so replay uses the fixed-reference protocol: the reference frame is sent on
``reference/*`` and every other frame is played live at the recorded rate (times ``speed``) or at ``rate_hz``.
A dataset that is not a bag is first written to ``<out>/replay_bag`` (MCAP) with the bag writer.
Per frame: the published pose (``T_query_from_ref`` = inverse of the published transform), its confidence,
and the latency from sending the frame to receiving the pose. Scoring follows the offline rules
(:func:`score_replay_frame`): frames with no published pose are failures, a non-finite pose or confidence is a
failure; a published pose whose confidence message never arrived is scored (the robot got the pose) with
confidence 0, flagged ``confidence_missing`` and left out of the confidence/error Spearman.
A truncated MCAP bag is played up to its last complete frame and the result is marked partial.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data.sequence import reader_counts
from ..errors import ConfigError
from .metrics import PairResult, score_pair
from .offline import trajectory_from_pairs
from .report import EvalResult


def _ros_value(value):
    """ROS parameter arrays hold one type: a list mixing ints and floats becomes all floats."""
    if isinstance(value, (list, tuple)) and any(isinstance(v, float) for v in value) \
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    return value


def bag_for_replay(sequence, work_dir: Path, max_frames: int | None = None, progress: bool = True):
    """(bag path, BagSequence over it): the sequence itself when it is a bag, else a bag written from it."""
    from ..data.bag_reader import BagSequence
    from ..data.bag_writer import write_bag

    if isinstance(sequence, BagSequence):
        return sequence.path, sequence
    path = Path(work_dir) / 'replay_bag'
    n = len(sequence) if max_frames is None else min(len(sequence), max_frames)
    write_bag(sequence, path, indices=range(n), overwrite=True, progress=progress)
    return path, BagSequence(path)


def score_replay_frame(frame, reference: int, query: int, T_gt_query_from_ref, K, width: int,
                       height: int) -> PairResult:
    """Score one played frame (a :class:`~relpose_ros.ros.replay.ReplayFrame`) like an offline pair.

    Published: its ``T_query_from_ref`` and confidence go through :func:`score_pair`, so a non-finite pose or
    confidence is a failure; a missing confidence (its message lost or not matched) scores the pose with
    confidence 0 and ``extra['confidence_missing']``. Not published: a failure (``extra['dropped']``), with the
    reason 'not published' (estimated but failed or gated: only a confidence came) or 'dropped' (no output).
    """
    latency_ms = None if frame.latency_s is None else frame.latency_s * 1e3
    if frame.published:
        try:
            T = np.asarray(frame.T_query_from_ref, dtype=np.float64)
        except np.linalg.LinAlgError:  # a degenerate published transform: a non-finite estimate
            T = np.full((4, 4), np.nan)
        missing = frame.confidence is None
        conf = 0.0 if missing else float(frame.confidence)
        p = score_pair(reference, query, T[:3, :3], T[:3, 3], conf, True, T_gt_query_from_ref, K, width, height,
                       latency_ms=latency_ms)
        if missing:
            p.extra['confidence_missing'] = True
    else:
        why = ('not published: estimate failed or gated (only its confidence came)' if frame.confidence is not None
               else 'dropped: no output for this frame (replaced by a newer frame, or lost)')
        p = score_pair(reference, query, np.eye(3), np.zeros(3), 0.0, False, T_gt_query_from_ref, K, width, height,
                       reason=why)
        p.extra['dropped'] = True
    p.extra['published'] = bool(frame.published)
    p.extra['status'] = frame.status
    p.extra['sent_s'] = frame.sent_s
    return p


def _partial(*sources) -> tuple[bool, str]:
    """(partial, reason) of the objects among ``sources`` that are marked partial (reasons deduplicated)."""
    reasons = [getattr(s, 'partial_reason', '') or 'read only in part' for s in sources if getattr(s, 'partial', False)]
    return bool(reasons), '; '.join(dict.fromkeys(reasons))


def evaluate_replay(sequence, backend: str, config: dict | None = None, out_dir: str | Path = '.',
                    reference: int = 0, speed: float = 1.0, rate_hz: float | None = None, spawn: bool = True,
                    namespace: str = '/relpose_replay', device: str = 'auto', max_frames: int | None = None,
                    drain_timeout_s: float = 10.0, progress: bool = True, meta: dict | None = None) -> EvalResult:
    """Replay ``sequence`` through the node running ``backend`` and score every played frame.

    Returns an :class:`EvalResult` in mode 'replay' (latency percentiles and dropped frames in its summary).
    """
    from ..data.bag_writer import BagTopics
    from ..ros.params import flatten
    from ..ros.replay import ReplayOptions, replay_bag

    bag_path, bag = bag_for_replay(sequence, Path(out_dir), max_frames, progress)
    if not 0 <= reference < len(bag):
        raise ConfigError(f'reference index {reference} out of range for the {len(bag)} frames of {bag_path}')
    topics = BagTopics(image=bag.image_topic, camera_info=bag.info_topic, depth=bag.depth_topic or '/_no_depth',
                       gt_pose='/_ground_truth_read_by_relpose_eval')
    params = {f'{backend}.{k}': _ros_value(v) for k, v in flatten(config or {}).items()}
    params['device'] = device
    opts = ReplayOptions(reference_index=reference, rate_hz=rate_hz, speed=speed, max_frames=max_frames,
                         include_reference=False, use_depth=bag.depth_topic is not None, restamp=True,
                         namespace=namespace, spawn=spawn, backend=backend, min_confidence=0.0, node_params=params,
                         node_log=Path(out_dir) / 'node.log', drain_timeout_s=drain_timeout_s, topics=topics)
    bar = tqdm(desc=f'replay {backend}', unit='frame', disable=not progress, dynamic_ncols=True)

    def on_progress(k: int, n: int) -> None:
        bar.total = n
        bar.update(k - bar.n)

    try:
        replay = replay_bag(bag_path, opts, progress=on_progress)
    finally:
        bar.close()

    index_of = {bag.stamp_ns(i): i for i in range(len(bag))}
    ref = index_of.get(replay.reference_stamp_ns, reference)
    T_ref = bag.pose(ref)
    poses = {ref: T_ref}
    pairs: list[PairResult] = []
    unknown = 0
    for rf in replay.frames:
        q = index_of.get(rf.stamp_ns)
        if q is None:  # the replay tool matched a frame our reader skipped: count it, no ground truth
            unknown += 1
            continue
        poses[q] = bag.pose(q)
        K, W, H = bag.intrinsics(q)
        pairs.append(score_replay_frame(rf, ref, q, bag.gt_relative_pose(ref, q), K, W, H))
    info = dict(meta or {})
    info.update({'backend': backend, 'bag': str(bag_path), 'rate_hz': replay.rate_hz, 'frames_sent': len(replay.frames),
                 'published': replay.published, 'startup_s': replay.startup_s, 'duration_s': replay.duration_s,
                 'node_diagnostics': replay.diagnostics, 'node_dropped_frames': replay.node_dropped_frames,
                 'confidence_missing': sum(1 for p in pairs if p.extra.get('confidence_missing')),
                 'frames_unknown_to_reader': unknown,
                 'frames_without_gt': getattr(bag, 'frames_without_gt', None), 'reference': ref})
    # frames the readers left out: of the dataset (when it was converted to a bag) and of the bag
    readers = (bag,) if sequence is bag else (sequence, bag)
    info.update(reader_counts(*readers, keys=('skipped_no_depth', 'skipped_no_camera_info')))
    partial, partial_reason = _partial(bag, replay)
    return EvalResult(pairs=pairs, mode='replay', meta=info, partial=partial, partial_reason=partial_reason,
                      dropped_frames=replay.dropped_frames, trajectory=trajectory_from_pairs(poses, pairs))
