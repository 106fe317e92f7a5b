"""Replay evaluation: play a bag into a spawned (or running) ``relocalize_node`` over DDS, record what it
publishes with arrival times (:mod:`relpose_ros.ros.replay`), and score it like an offline run.

The node holds one reference, so replay uses the fixed-reference protocol: the reference frame is sent on
``reference/*`` and every other frame is played live at the recorded rate (times ``speed``) or at ``rate_hz``.
A dataset that is not a bag is first written to ``<out>/replay_bag`` (MCAP) with the bag writer.
Per frame: the published pose (``T_query_from_ref`` = inverse of the published transform), its confidence,
and the latency from sending the frame to receiving the pose. Frames with no published pose are failures.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

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
        T_gt = bag.gt_relative_pose(ref, q)
        latency_ms = None if rf.latency_s is None else rf.latency_s * 1e3
        if rf.published:
            T = rf.T_query_from_ref
            conf = rf.confidence if rf.confidence is not None else float('nan')
            p = score_pair(ref, q, T[:3, :3], T[:3, 3], conf if np.isfinite(conf) else 0.0, True, T_gt, K, W, H,
                           latency_ms=latency_ms)
        else:
            p = score_pair(ref, q, np.eye(3), np.zeros(3), 0.0, False, T_gt, K, W, H,
                           reason='no pose published (dropped, failed or gated)')
            p.extra['dropped'] = True
        p.extra['published'] = bool(rf.published)
        p.extra['sent_s'] = rf.sent_s
        pairs.append(p)
    info = dict(meta or {})
    info.update({'backend': backend, 'bag': str(bag_path), 'rate_hz': replay.rate_hz, 'frames_sent': len(replay.frames),
                 'published': replay.published, 'startup_s': replay.startup_s, 'duration_s': replay.duration_s,
                 'node_diagnostics': replay.diagnostics, 'frames_unknown_to_reader': unknown,
                 'frames_without_gt': getattr(bag, 'frames_without_gt', None), 'reference': ref})
    partial = bool(getattr(bag, 'partial', False))
    return EvalResult(pairs=pairs, mode='replay', meta=info, partial=partial,
                      partial_reason=getattr(bag, 'partial_reason', '') if partial else '',
                      dropped_frames=replay.dropped_frames, trajectory=trajectory_from_pairs(poses, pairs))
