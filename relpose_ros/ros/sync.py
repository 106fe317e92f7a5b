"""Header-stamp synchroniser for image / camera_info / depth (message_filters is not installable
off-ROS, and the node only needs the newest matched set).

The first channel is the pivot (the image). Each time a message arrives, the newest pivot message
that has a partner within ``slop_s`` on every other channel is emitted with those partners, and
everything as old or older is dropped. Pivot messages dropped without ever being matched are
counted in ``unmatched``. Thread-safe; pure Python (no rclpy).
"""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any


class StampSynchronizer:
    """Approximate-time matching of several channels by integer nanosecond stamps."""

    def __init__(self, channels: Sequence[str], slop_s: float, queue_size: int,
                 callback: Callable[[dict[str, Any]], None]) -> None:
        if len(channels) < 1 or len(set(channels)) != len(channels):
            raise ValueError(f'channels must be distinct and non-empty, got {list(channels)}')
        if queue_size < 1:
            raise ValueError(f'queue_size must be >= 1, got {queue_size}')
        self.channels = tuple(channels)
        self.slop_s = float(slop_s)
        self.queue_size = int(queue_size)
        self.callback = callback
        self.unmatched = 0
        self.last_stamps: dict[str, int | None] = {c: None for c in self.channels}  # newest stamp seen per channel
        self._queues: dict[str, deque[tuple[int, Any]]] = {c: deque() for c in self.channels}
        self._lock = threading.Lock()

    def add(self, channel: str, stamp_ns: int, msg: Any) -> bool:
        """Queue one message; emit the newest complete set if there is one. Returns True if emitted."""
        with self._lock:
            q = self._queues[channel]
            q.append((int(stamp_ns), msg))
            self.last_stamps[channel] = int(stamp_ns)
            if len(q) > self.queue_size:
                q.popleft()
                if channel == self.channels[0]:
                    self.unmatched += 1
            matched = self._match()
        if matched is None:
            return False
        self.callback(matched)
        return True

    def reset(self) -> None:
        with self._lock:
            for q in self._queues.values():
                q.clear()

    def _match(self) -> dict[str, Any] | None:
        pivot_q = self._queues[self.channels[0]]
        slop_ns = int(round(self.slop_s * 1e9))
        for i in range(len(pivot_q) - 1, -1, -1):  # newest pivot first
            stamp, msg = pivot_q[i]
            picked: dict[str, tuple[int, int]] = {}  # channel -> (index, stamp)
            for ch in self.channels[1:]:
                best = None
                for j, (s, _) in enumerate(self._queues[ch]):
                    d = abs(s - stamp)
                    if d <= slop_ns and (best is None or d < best[0]):
                        best = (d, j, s)
                if best is None:
                    break
                picked[ch] = (best[1], best[2])
            else:
                out = {self.channels[0]: msg}
                for ch, (j, _) in picked.items():
                    out[ch] = self._queues[ch][j][1]
                self.unmatched += i  # older pivots can no longer be emitted
                for _ in range(i + 1):
                    pivot_q.popleft()
                for ch, (j, _) in picked.items():
                    for _ in range(j + 1):
                        self._queues[ch].popleft()
                return out
        return None
