"""Clearing or replacing the reference while a frame is being estimated: that frame's result is dropped
(no pose, no confidence) and counted as stale; the next frame is estimated against the new reference.

Pure pipeline tests (no DDS): a real worker thread and a test estimator that blocks inside
``estimate`` until the test has changed the reference."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from relpose_ros.backends.constant import ConstantEstimator
from relpose_ros.ros.pipeline import RelocalizationPipeline
from relpose_ros.types import Frame

K = np.array([[50.0, 0.0, 16.0], [0.0, 50.0, 12.0], [0.0, 0.0, 1.0]])


def _frame(stamp_ns: int = 0, frame_id: str = 'cam') -> Frame:
    return Frame(np.zeros((24, 32, 3), np.uint8), K, None, stamp_ns, frame_id)


class GatedEstimator(ConstantEstimator):
    """``estimate`` signals that it started, then waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__(device='cpu')
        self.started = threading.Event()
        self.gate = threading.Event()
        self.gated = True

    def estimate(self, reference, frame):
        if self.gated:
            self.started.set()
            assert self.gate.wait(10), 'test never opened the gate'
        return super().estimate(reference, frame)


class SlowPrepareEstimator(ConstantEstimator):
    """``prepare_reference`` of the frame 'ref_1' signals that it started, then waits for the gate."""

    def __init__(self) -> None:
        super().__init__(device='cpu')
        self.started = threading.Event()
        self.gate = threading.Event()

    def prepare_reference(self, frame):
        if frame.frame_id == 'ref_1':
            self.started.set()
            assert self.gate.wait(10), 'test never opened the gate'
        return super().prepare_reference(frame)


def _slow_prepare_pipeline():
    """(pipeline, gate, started, results) around a :class:`SlowPrepareEstimator`; not started yet."""
    est, results = SlowPrepareEstimator(), []
    p = RelocalizationPipeline(est, lambda live, e, ref: results.append((live.stamp_ns, ref.frame_id)))
    return p, est.gate, est.started, results


@pytest.fixture
def pipeline():
    results: list[tuple[int, str]] = []  # (live stamp, reference frame_id) of every delivered result
    est = GatedEstimator()
    p = RelocalizationPipeline(est, lambda live, e, ref: results.append((live.stamp_ns, ref.frame_id)))
    p.start()
    p.submit_reference(_frame(frame_id='ref_a'))
    assert p.wait_idle() and p.reference_frame.frame_id == 'ref_a'
    yield p, est, results
    est.gate.set()
    p.stop()


def _start_slow_estimate(p: RelocalizationPipeline, est: GatedEstimator, stamp: int) -> None:
    p.submit_live(_frame(stamp))
    assert est.started.wait(5), 'the worker did not start estimating'


def _finish(p: RelocalizationPipeline, est: GatedEstimator) -> None:
    est.gated = False
    est.gate.set()
    assert p.wait_idle()


def test_clear_during_an_estimate_publishes_nothing_for_that_frame(pipeline):
    p, est, results = pipeline
    _start_slow_estimate(p, est, 1)
    p.clear_reference()
    _finish(p, est)
    assert results == []  # neither a pose nor a confidence reaches on_result
    assert p.stats.stale_frames == 1 and not p.has_reference
    p.submit_live(_frame(2))  # and nothing afterwards until a new reference is set
    assert p.wait_idle()
    assert results == [] and p.stats.frames_without_reference == 1


def test_replace_during_an_estimate_drops_the_old_result_and_uses_the_new_reference(pipeline):
    p, est, results = pipeline
    _start_slow_estimate(p, est, 1)
    p.submit_reference(_frame(frame_id='ref_b'))  # replaced mid-estimate (topics: last wins)
    _finish(p, est)
    assert results == [] and p.stats.stale_frames == 1
    assert p.reference_frame.frame_id == 'ref_b'
    p.submit_live(_frame(2))
    assert p.wait_idle()
    assert results == [(2, 'ref_b')]


def test_set_reference_during_an_estimate_drops_the_old_result(pipeline):
    p, est, results = pipeline
    _start_slow_estimate(p, est, 1)
    p.request_reference()  # ~/set_reference: the next live frame becomes the reference
    p.submit_live(_frame(2, frame_id='new_ref'))
    p.submit_live(_frame(3))
    _finish(p, est)
    assert p.reference_frame.frame_id == 'new_ref'
    assert results == [(3, 'new_ref')] and p.stats.stale_frames == 1


def test_an_unchanged_reference_still_delivers_the_slow_estimate(pipeline):
    p, est, results = pipeline
    _start_slow_estimate(p, est, 1)
    p.submit_live(_frame(2))  # newer live frames do not make the running estimate stale
    _finish(p, est)
    assert results == [(1, 'ref_a'), (2, 'ref_a')] and p.stats.stale_frames == 0


def test_a_reference_replaced_while_it_is_prepared_is_still_taken_then_replaced():
    """A reference re-sent while a slow prepare_reference runs (a replay tool re-sending until the node reports it)
    must not starve the prepare: each one is installed in turn, the last one wins."""
    p, gate, started, results = _slow_prepare_pipeline()
    p.start()
    try:
        p.submit_reference(_frame(frame_id='ref_1'))
        assert started.wait(5)
        p.submit_reference(_frame(frame_id='ref_2'))
        p.submit_live(_frame(1))
        gate.set()
        assert p.wait_idle()
        assert p.stats.references_set == 2 and p.reference_frame.frame_id == 'ref_2'
        assert results == [(1, 'ref_2')] and p.stats.stale_frames == 0
    finally:
        gate.set()
        p.stop()


def test_a_frame_waiting_behind_a_superseded_reference_is_stale():
    """Live frame and reference taken together; the reference is replaced during its prepare: the frame is not
    estimated against the superseded reference (nothing delivered), the newer reference then takes over."""
    p, gate, started, results = _slow_prepare_pipeline()
    p.submit_reference(_frame(frame_id='ref_1'))
    p.submit_live(_frame(1))
    p.start()  # the worker takes both at once
    try:
        assert started.wait(5)
        p.submit_reference(_frame(frame_id='ref_2'))
        gate.set()
        assert p.wait_idle()
        assert results == [] and p.stats.stale_frames == 1 and p.reference_frame.frame_id == 'ref_2'
        p.submit_live(_frame(2))
        assert p.wait_idle()
        assert results == [(2, 'ref_2')]
    finally:
        gate.set()
        p.stop()
