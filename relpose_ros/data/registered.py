"""A posed RGB-D sequence whose depth camera and colour camera have different intrinsics."""
from __future__ import annotations

import numpy as np

from ..features.depth import register_depth
from ..types import Frame
from .sequence import READER_COUNTS, PosedFrame, Sequence

_DELEGATED = READER_COUNTS + ('partial', 'partial_reason')


class RegisteredSequence(Sequence):
    """A posed RGB-D sequence whose colour camera has intrinsics ``K_colour`` while its depth images are in
    the base sequence's K (the depth camera): frames get ``K_colour`` and depth registered into it."""

    def __init__(self, base: Sequence, K_colour: np.ndarray) -> None:
        self.base, self.K_colour = base, np.asarray(K_colour, dtype=np.float64)
        self.name = base.name

    def __len__(self) -> int:
        return len(self.base)

    def __getattr__(self, name: str):
        """Reader counts and flags of the base (``frames_without_gt``, ``skipped_no_depth``, ``partial``, ...)."""
        if name in _DELEGATED:
            return getattr(self.base, name)
        raise AttributeError(f'{type(self).__name__} has no attribute {name!r}')

    def load(self, index: int) -> PosedFrame:
        pf = self.base.load(index)
        f = pf.frame
        depth = None if f.depth is None else register_depth(f.depth, f.K, self.K_colour, (f.width, f.height))
        frame = Frame(rgb=f.rgb, K=self.K_colour.copy(), depth=depth, stamp_ns=f.stamp_ns, frame_id=f.frame_id)
        return PosedFrame(frame=frame, T_world_from_cam=pf.T_world_from_cam, name=pf.name)
