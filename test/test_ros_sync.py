"""Stamp synchroniser, latest-only pipeline, resize and parameter helpers (pure Python parts of the node)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from relpose_ros.backends.base import Estimator, Reference
from relpose_ros.backends.constant import ConstantEstimator
from relpose_ros.errors import ConfigError
from relpose_ros.ros.params import NODE_PARAMS, check_value, coerce_backend_value, flatten, unflatten
from relpose_ros.ros.pipeline import RelocalizationPipeline, resize_frame
from relpose_ros.ros.sync import StampSynchronizer
from relpose_ros.types import Frame, PoseEstimate

MS = 1_000_000


def _sync(slop=0.01, queue=5, channels=('image', 'camera_info', 'depth')):
    out = []
    return StampSynchronizer(channels, slop, queue, out.append), out


def test_sync_matches_within_slop_in_any_arrival_order():
    s, out = _sync()
    s.add('depth', 100 * MS + 4 * MS, 'd1')
    s.add('image', 100 * MS, 'i1')
    assert out == []
    s.add('camera_info', 100 * MS, 'c1')
    assert out == [{'image': 'i1', 'camera_info': 'c1', 'depth': 'd1'}]


def test_sync_rejects_partners_outside_slop_and_picks_nearest():
    s, out = _sync(slop=0.005)
    s.add('image', 100 * MS, 'i')
    s.add('camera_info', 100 * MS, 'c')
    s.add('depth', 106 * MS, 'far')
    assert out == []
    s.add('depth', 98 * MS, 'near')
    s.add('depth', 101 * MS, 'nearest')
    assert out[-1]['depth'] == 'near'  # emitted as soon as a partner within slop exists
    s.slop_s = 0.0
    s.add('image', 200 * MS, 'i2')
    s.add('camera_info', 200 * MS, 'c2')
    s.add('depth', 200 * MS + 1, 'd2')
    assert len(out) == 1
    s.add('depth', 200 * MS, 'd2exact')
    assert out[-1] == {'image': 'i2', 'camera_info': 'c2', 'depth': 'd2exact'}


def test_sync_emits_newest_and_counts_unmatched_images():
    s, out = _sync(channels=('image', 'camera_info'), queue=3)
    for k in range(5):  # five images without camera_info: two fall out of the queue
        s.add('image', k * 100 * MS, f'i{k}')
    assert s.unmatched == 2
    s.add('camera_info', 300 * MS, 'c3')  # matches i3; i2 (older) can no longer be emitted
    assert out == [{'image': 'i3', 'camera_info': 'c3'}] and s.unmatched == 3
    s.add('camera_info', 100 * MS, 'late')  # older than anything pending: nothing to emit
    assert len(out) == 1
    s.add('camera_info', 400 * MS, 'c4')
    assert out[-1] == {'image': 'i4', 'camera_info': 'c4'}


def test_sync_is_thread_safe():
    s, out = _sync(channels=('image', 'camera_info'), queue=50)

    def feed(channel):
        for k in range(500):
            s.add(channel, k * MS * 33, k)
    threads = [threading.Thread(target=feed, args=(c,)) for c in ('image', 'camera_info')]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps = [m['image'] for m in out]
    assert stamps == sorted(set(stamps)) and stamps[-1] == 499
    assert all(m['image'] == m['camera_info'] for m in out)


K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])


def _frame(stamp=0, h=480, w=640, frame_id='cam'):
    return Frame(np.zeros((h, w, 3), np.uint8), K, np.ones((h, w), np.float32), stamp, frame_id)


def test_resize_frame_rescales_intrinsics():
    f = resize_frame(_frame(), 320)
    assert f.rgb.shape == (240, 320, 3) and f.depth.shape == (240, 320)
    np.testing.assert_allclose(f.K, [[250, 0, 160], [0, 250, 120], [0, 0, 1]])
    assert resize_frame(f, 0) is f and resize_frame(f, 640) is f


class _Raising(Estimator):
    name = 'raising'

    def prepare_reference(self, frame):
        return Reference(frame)

    def estimate(self, reference, frame):
        raise RuntimeError('boom')


def test_pipeline_survives_a_raising_estimator_and_counts_drops():
    results = []
    p = RelocalizationPipeline(_Raising(device='cpu'), lambda f, e, r: results.append(e))
    p.start()
    try:
        p.submit_reference(_frame(frame_id='ref'))
        assert p.wait_idle() and p.has_reference and p.reference_frame.frame_id == 'ref'
        p.submit_live(_frame(1))
        assert p.wait_idle()
        assert len(results) == 1 and not results[0].ok and 'boom' in results[0].reason
        assert p.stats.failed_estimates == 1
    finally:
        p.stop()
    # without a running worker, each new frame replaces the waiting one
    q = RelocalizationPipeline(ConstantEstimator(device='cpu'), lambda f, e, r: None)
    for k in range(4):
        q.submit_live(_frame(k))
    assert q.stats.dropped_frames == 3 and q.stats.live_frames == 4


def test_pipeline_clear_discards_a_reference_being_prepared():
    gate = threading.Event()

    class Slow(ConstantEstimator):
        def prepare_reference(self, frame):
            gate.wait(5)
            return super().prepare_reference(frame)
    p = RelocalizationPipeline(Slow(device='cpu'), lambda f, e, r: None)
    p.start()
    try:
        p.submit_reference(_frame(frame_id='ref'))
        time.sleep(0.05)
        p.clear_reference()
        gate.set()
        assert p.wait_idle()
        assert not p.has_reference
    finally:
        p.stop()


def test_a_reference_that_fails_to_prepare_clears_the_old_one():
    errors = []

    class Picky(ConstantEstimator):
        def prepare_reference(self, frame):
            if frame.frame_id == 'bad':
                raise ValueError('reference has no depth')
            return super().prepare_reference(frame)
    p = RelocalizationPipeline(Picky(device='cpu'), lambda f, e, r: None, on_error=errors.append)
    p.start()
    try:
        p.submit_reference(_frame(frame_id='good'))
        assert p.wait_idle() and p.has_reference
        p.submit_reference(_frame(frame_id='bad'))
        assert p.wait_idle()
        assert not p.has_reference and p.stats.reference_errors == 1
        assert 'reference has no depth' in errors[0] and 'reference cleared' in errors[0]
    finally:
        p.stop()


def test_request_reference_takes_the_next_live_frame():
    results = []
    p = RelocalizationPipeline(ConstantEstimator(device='cpu'), lambda f, e, r: results.append((f, e, r)))
    p.start()
    try:
        p.request_reference()
        p.submit_live(_frame(1, frame_id='a'))
        p.submit_live(_frame(2, frame_id='b'))
        assert p.wait_idle()
        assert p.reference_frame.stamp_ns == 1
        assert [(f.stamp_ns, r.stamp_ns) for f, _, r in results] == [(2, 1)]
    finally:
        p.stop()


def test_param_helpers():
    nested = {'a': {'b': 1, 'c': {'d': [1.0, 2.0]}}, 'e': 'x'}
    assert flatten(nested) == {'a.b': 1, 'a.c.d': [1.0, 2.0], 'e': 'x'}
    assert unflatten(flatten(nested)) == nested
    assert coerce_backend_value('k', 1.0, 2) == 2.0 and isinstance(coerce_backend_value('k', 1.0, 2), float)
    assert coerce_backend_value('k', [0.0, 1.0], [1, 2]) == [1.0, 2.0]
    assert coerce_backend_value('k', None, None) is None and coerce_backend_value('k', 'a', None) == 'a'
    with pytest.raises(ConfigError, match='k must be of the type'):
        coerce_backend_value('k', 3, 'three')
    with pytest.raises(ConfigError):
        coerce_backend_value('k', True, 1)
    specs = {s.name: s for s in NODE_PARAMS}
    assert check_value(specs['min_confidence'], 1) is None
    assert 'must be in' in check_value(specs['min_confidence'], 1.5)
    assert 'must be one of' in check_value(specs['device'], 'tpu')
    assert 'must be a bool' in check_value(specs['use_depth'], 'yes')


def test_constant_estimator_validates_config():
    est = ConstantEstimator({'translation': [1, 2, 3], 'rotation_wxyz': [2, 0, 0, 0]}, device='cpu')
    e = est.estimate(est.prepare_reference(_frame()), _frame())
    assert isinstance(e, PoseEstimate) and e.ok and e.confidence == 1.0
    np.testing.assert_allclose(e.R, np.eye(3)) and np.testing.assert_allclose(e.t, [1, 2, 3])
    for bad in ({'confidence': 1.5}, {'rotation_wxyz': [0, 0, 0, 0]}, {'translation': [1, 2]},
                {'delay_s': -1}, {'nope': 1}):
        with pytest.raises(ConfigError):
            ConstantEstimator(bad, device='cpu')
