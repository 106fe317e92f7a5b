"""Latest-frame-only relocalisation worker (pure Python, no rclpy).

Callbacks hand in frames; one worker thread prepares references and estimates only the newest live
frame. A live frame that is replaced before the worker takes it is dropped and counted, so latency
stays bounded (about two estimator periods) when the estimator is slower than the camera.

Every reference change (new reference, live frame taken as the reference, clear) starts a new
reference generation. An estimate is published only when its reference is still the current one
when it finishes: a frame estimated while the reference was cleared or replaced is dropped and
counted as stale, so nothing is ever published against a reference the user already withdrew.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2

from ..backends.base import Estimator, Reference
from ..geometry import resize_intrinsics
from ..types import Frame, PoseEstimate


def resize_frame(frame: Frame, max_image_size: int) -> Frame:
    """Downscale so that the longer side is at most ``max_image_size`` (0 = unchanged); K follows."""
    h, w = frame.height, frame.width
    if max_image_size <= 0 or max(h, w) <= max_image_size:
        return frame
    s = max_image_size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    rgb = cv2.resize(frame.rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    depth = None if frame.depth is None else cv2.resize(frame.depth, (nw, nh), interpolation=cv2.INTER_NEAREST)
    return Frame(rgb=rgb, K=resize_intrinsics(frame.K, (w, h), (nw, nh)), depth=depth,
                 stamp_ns=frame.stamp_ns, frame_id=frame.frame_id)


@dataclass
class PipelineStats:
    """Counters read by the node's diagnostics (updated by the worker and the submitters)."""

    live_frames: int = 0
    dropped_frames: int = 0
    frames_without_reference: int = 0
    stale_frames: int = 0  # estimated (or about to be) against a reference cleared / replaced meanwhile
    estimates: int = 0
    failed_estimates: int = 0
    references_set: int = 0
    reference_errors: int = 0
    last_estimate_s: float = 0.0
    last_reference_error: str = ''


ResultCallback = Callable[[Frame, PoseEstimate, Frame], None]


class RelocalizationPipeline:
    """Reference state + one-slot mailbox + worker thread around an :class:`Estimator`.

    ``on_result(live_frame, estimate, reference_frame)`` is called from the worker thread for every
    estimate (ok or not) whose reference is still current, under the pipeline lock: once
    ``clear_reference`` or ``submit_reference`` returns, no result for the old reference is delivered.
    ``estimator`` None means "configured wrongly": frames are accepted and counted, never estimated.
    """

    def __init__(self, estimator: Estimator | None, on_result: ResultCallback, max_image_size: int = 0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.estimator = estimator
        self.on_result = on_result
        self.on_error = on_error or (lambda msg: None)
        self.max_image_size = int(max_image_size)
        self.stats = PipelineStats()
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._pending_reference: Frame | None = None
        self._reference: Reference | None = None
        self._reference_original: Frame | None = None
        self._reference_requested = False
        self._generation = 0  # bumped by every reference change: estimates against an older one are stale
        self._reference_generation = -1  # generation of the prepared reference in use
        self._clears = 0  # bumped by clear_reference: a reference being prepared meanwhile is discarded
        self._stop = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, name='relpose-worker', daemon=True)

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def has_reference(self) -> bool:
        return self._reference is not None

    @property
    def reference_frame(self) -> Frame | None:
        return None if self._reference is None else self._reference_original

    @property
    def reference_requested(self) -> bool:
        return self._reference_requested

    def submit_live(self, frame: Frame) -> None:
        """Offer the newest live frame; replaces (and counts as dropped) one not yet taken."""
        with self._cond:
            self.stats.live_frames += 1
            if self._reference_requested:
                self._reference_requested = False
                self._pending_reference = frame
                self._generation += 1
            else:
                if self._latest is not None:
                    self.stats.dropped_frames += 1
                self._latest = frame
            self._cond.notify_all()

    def submit_reference(self, frame: Frame) -> None:
        """A new reference (last wins): prepared by the worker before the next estimate."""
        with self._cond:
            self._pending_reference = frame
            self._generation += 1
            self._cond.notify_all()

    def request_reference(self) -> None:
        """Make the next live frame the reference."""
        with self._cond:
            self._reference_requested = True

    def clear_reference(self) -> None:
        """Drop the reference (and any pending one); nothing is estimated until a new one is set."""
        with self._cond:
            self._generation += 1
            self._clears += 1
            self._reference = None
            self._pending_reference = None
            self._reference_requested = False
            self._latest = None

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until the mailbox is empty and the worker is idle (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is not None or self._pending_reference is not None or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.01))
        return True

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._pending_reference is None and self._latest is None:
                    self._cond.wait()
                if self._stop:
                    return
                pending, live = self._pending_reference, self._latest
                generation, clears = self._generation, self._clears
                self._pending_reference = self._latest = None
                self._busy = True
            try:
                if pending is not None:
                    self._prepare(pending, generation, clears)
                if live is not None:
                    self._estimate(live)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _prepare(self, frame: Frame, generation: int, clears: int) -> None:
        """Prepare and install ``frame`` (submitted at ``generation``) unless the reference was cleared since.

        A reference replaced while it was prepared is still installed (so a re-sent reference can never
        starve a slow ``prepare_reference``), but estimates against it are stale until the newer one is in.
        """
        if self.estimator is None:
            return
        try:
            reference = self.estimator.prepare_reference(resize_frame(frame, self.max_image_size))
        except Exception as exc:  # a bad reference must not kill the worker
            self.stats.reference_errors += 1
            self.stats.last_reference_error = f'{type(exc).__name__}: {exc}'
            with self._cond:  # never keep estimating against a keyframe the user replaced
                if clears == self._clears:
                    self._reference = self._reference_original = None
            self.on_error(f'could not prepare the new reference, reference cleared: '
                          f'{self.stats.last_reference_error}')
            return
        with self._cond:
            if clears == self._clears:
                self._reference = reference
                self._reference_original = frame  # as received (frame_id, size) for the outputs
                self._reference_generation = generation
                self.stats.references_set += 1

    def _estimate(self, frame: Frame) -> None:
        with self._cond:
            reference, reference_frame = self._reference, self._reference_original
            generation = self._reference_generation
            current = generation == self._generation
        if reference is None or self.estimator is None:
            self.stats.frames_without_reference += 1
            return
        if not current:  # a newer reference is waiting to be prepared: this one is withdrawn
            self.stats.stale_frames += 1
            return
        query = resize_frame(frame, self.max_image_size)
        t0 = time.perf_counter()
        try:
            est = self.estimator.estimate(reference, query)
        except Exception as exc:  # estimators should not raise; if one does, report and go on
            est = PoseEstimate.failure(f'estimator raised {type(exc).__name__}: {exc}')
        self.stats.last_estimate_s = time.perf_counter() - t0
        self.stats.estimates += 1
        with self._cond:  # held while publishing, so a clear / replace cannot slip in between check and publish
            if generation != self._generation:  # cleared or replaced during the estimate: no pose, no confidence
                self.stats.stale_frames += 1
                return
            if not est.ok:
                self.stats.failed_estimates += 1
            try:
                self.on_result(frame, est, reference_frame)
            except Exception as exc:
                self.on_error(f'publishing the result failed: {type(exc).__name__}: {exc}')
