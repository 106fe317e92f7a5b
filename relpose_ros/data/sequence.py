"""One interface for posed sequences from any source (7-Scenes, TUM, Map-free, bags, synthetic).

A :class:`Sequence` is an indexable list of :class:`PosedFrame`: a :class:`~relpose_ros.types.Frame`
(RGB, K, optional depth, stamp, frame_id) plus its ground-truth camera-to-world pose when known.

Readers also count what they could not pair (:data:`READER_COUNTS`): ``frames_without_gt`` (frames kept with an
unknown pose; every reader has it), ``skipped_no_depth`` and ``skipped_no_camera_info`` (frames left out, where
the reader associates streams by stamp). :func:`reader_counts` collects them for reports.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..geometry import relative_pose
from ..types import Frame


@dataclass
class PosedFrame:
    """A frame with its ground-truth pose ``T_world_from_cam`` (4x4, metres) or None."""

    frame: Frame
    T_world_from_cam: np.ndarray | None
    name: str = ''

    @property
    def has_pose(self) -> bool:
        return self.T_world_from_cam is not None and bool(np.all(np.isfinite(self.T_world_from_cam)))


#: Counts a reader may report: frames kept without ground truth, frames skipped without depth / camera_info.
READER_COUNTS = ('frames_without_gt', 'skipped_no_depth', 'skipped_no_camera_info')


def reader_counts(*sequences, keys: tuple[str, ...] = READER_COUNTS) -> dict[str, int]:
    """``{key: count}`` of :data:`READER_COUNTS` summed over ``sequences`` (a key only when a reader reports it)."""
    out: dict[str, int] = {}
    for seq in sequences:
        for key in keys:
            value = getattr(seq, key, None)
            if value is not None:
                out[key] = out.get(key, 0) + int(value)
    return out


class Sequence(ABC):
    """An ordered, indexable posed sequence. Subclasses load frames lazily in ``load(i)``."""

    name: str = ''

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames."""

    @abstractmethod
    def load(self, index: int) -> PosedFrame:
        """Load frame ``index`` (0 <= index < len)."""

    def __getitem__(self, index: int) -> PosedFrame:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f'frame index {index} out of range for {self.name or type(self).__name__} ({n} frames)')
        return self.load(index)

    def __iter__(self) -> Iterator[PosedFrame]:
        for i in range(len(self)):
            yield self.load(i)

    def gt_relative_pose(self, ref_index: int, query_index: int) -> np.ndarray | None:
        """Ground-truth ``T_query_from_ref`` (4x4) of two frames, or None if either lacks a pose."""
        a, b = self[ref_index], self[query_index]
        if not (a.has_pose and b.has_pose):
            return None
        return relative_pose(a.T_world_from_cam, b.T_world_from_cam)
