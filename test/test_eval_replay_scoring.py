"""Replay scoring at the function level (no DDS): a played frame is scored by the offline rules, the summary's
``dropped_frames`` counts frames without any output, and the report carries the reader and node counts."""
from __future__ import annotations

import numpy as np
import pytest

from relpose_ros.eval.metrics import score_pair, summarize
from relpose_ros.eval.replay import _partial, score_replay_frame
from relpose_ros.eval.report import EvalResult, build_metrics, markdown_report
from relpose_ros.geometry import inverse_T, make_T
from relpose_ros.ros.replay import ReplayFrame, ReplayResult

K = np.array([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]])
T_GT = make_T(np.eye(3), [0.02, 0.0, 0.01])                  # true T_query_from_ref


def frame(T_query_from_ref=None, confidence=None, index=1) -> ReplayFrame:
    """A played frame as the recorder fills it: the published transform is T_ref_from_query."""
    published = T_query_from_ref is not None
    return ReplayFrame(index=index, stamp_ns=index, sent_stamp_ns=index, sent_s=0.1 * index,
                       T_ref_from_query=inverse_T(T_query_from_ref) if published else None, confidence=confidence,
                       received_s=0.1 * index + 0.05 if published else None)


def score(f: ReplayFrame):
    return score_replay_frame(f, 0, f.index, T_GT, K, 64, 48)


def test_published_pose_is_scored_like_offline():
    p = score(frame(T_GT, 0.7))
    assert not p.failed and p.confidence == pytest.approx(0.7) and p.latency_ms == pytest.approx(50.0)
    assert p.trans_err_m == pytest.approx(0.0, abs=1e-12) and p.extra['status'] == 'published'
    offline = score_pair(0, 1, T_GT[:3, :3], T_GT[:3, 3], 0.7, True, T_GT, K, 64, 48)
    assert (p.ok, p.rot_err_deg, p.vcre_px) == (offline.ok, offline.rot_err_deg, offline.vcre_px)


@pytest.mark.parametrize('confidence', [float('nan'), float('inf')])
def test_non_finite_confidence_is_a_failure(confidence):
    p = score(frame(T_GT, confidence))
    offline = score_pair(0, 1, T_GT[:3, :3], T_GT[:3, 3], confidence, True, T_GT, K, 64, 48)
    assert p.failed and offline.failed and p.reason == offline.reason == 'non-finite estimate'
    assert summarize([p])['n_failed'] == 1 and summarize([p])['precision_pose'] == 0.0


def test_non_finite_or_degenerate_pose_is_a_failure():
    T = T_GT.copy()
    T[0, 3] = np.nan
    assert score(frame(T, 0.9)).failed
    degenerate = frame(T_GT, 0.9)
    degenerate.T_ref_from_query = np.zeros((4, 4))           # singular: cannot be inverted
    p = score(degenerate)
    assert p.failed and p.reason == 'non-finite estimate'


def test_missing_confidence_scores_the_pose_last_and_outside_the_spearman():
    good = [score(frame(make_T(np.eye(3), [0.02 + e, 0, 0.01]), c, index=i + 1))
            for i, (e, c) in enumerate([(0.0, 0.9), (0.05, 0.6), (0.1, 0.3), (0.3, 0.1)])]
    lost = score(frame(make_T(np.eye(3), [0.52, 0, 0.01]), None, index=9))   # 0.5 m off: not accepted
    assert not lost.failed and lost.confidence == 0.0 and lost.extra['confidence_missing']
    s = summarize(good + [lost])
    assert s['n_failed'] == 0 and s['spearman_conf_err'] == pytest.approx(-1.0)  # the 4 with a confidence
    assert summarize(good)['spearman_conf_err'] == pytest.approx(-1.0)
    # ranked last by AUC (accepted: the first three): precision 1, 1, 1, 3/4, then 3/5 at its rank, over 5
    assert summarize(good)['auc_pose'] == pytest.approx(3.75 / 4)
    assert s['auc_pose'] == pytest.approx((3.75 + 3 / 5) / 5)


def test_frames_without_a_published_pose_are_failures_with_their_reason():
    gated, dropped = score(frame(None, 0.2)), score(frame(None, None, index=2))
    assert gated.failed and dropped.failed and gated.extra['dropped'] and dropped.extra['dropped']
    assert gated.reason.startswith('not published') and dropped.reason.startswith('dropped')
    assert (gated.extra['status'], dropped.extra['status']) == ('not published', 'dropped')


def test_summary_dropped_frames_counts_frames_without_output_and_node_count_is_extra():
    frames = [frame(T_GT, 0.5, 1), frame(None, 0.2, 2), frame(None, None, 3), frame(None, None, 4)]
    replay = ReplayResult(bag='b', reference_index=0, reference_stamp_ns=0, reference_T_world_from_cam=None,
                          rate_hz=10.0, frames=frames, diagnostics={'dropped_frames': '5'})
    assert replay.dropped_frames == 2 and replay.node_dropped_frames == 5
    assert ReplayResult('b', 0, 0, None, 1.0, []).node_dropped_frames is None
    pairs = [score(f) for f in frames]
    result = EvalResult(pairs=pairs, mode='replay', dropped_frames=replay.dropped_frames,
                        meta={'node_dropped_frames': 5, 'frames_without_gt': 0, 'skipped_no_depth': 3,
                              'skipped_no_camera_info': 1, 'confidence_missing': 0})
    m = build_metrics(result)
    assert m['summary']['dropped_frames'] == 2 and m['summary']['n_failed'] == 3
    assert m['meta']['node_dropped_frames'] == 5 and 'node_dropped_frames' not in m['summary']
    report = markdown_report(m)
    assert ('Frames: 0 without ground truth (kept, not scored); skipped by the reader: 3 without depth, 1 without '
            "camera_info; 5 replaced in the node's latest-only queue") in report


def test_partial_reasons_are_merged():
    class Src:
        def __init__(self, partial, reason):
            self.partial, self.partial_reason = partial, reason
    assert _partial(Src(False, ''), Src(False, '')) == (False, '')
    assert _partial(Src(True, 'cut'), Src(True, 'cut'), Src(True, '')) == (True, 'cut; read only in part')
