"""Reader of the 7-Scenes layout: ``frame-NNNNNN.color.{jpg,png}``, ``.depth.png`` (uint16 mm,
0 and 65535 invalid), ``.pose.txt`` (4x4 camera-to-world, metres), ``camera-intrinsics.txt`` (3x3 K)."""
from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from ..errors import DatasetError
from ..types import Frame
from .sequence import PosedFrame, Sequence

DEFAULT_K = np.array([[585.0, 0.0, 320.0], [0.0, 585.0, 240.0], [0.0, 0.0, 1.0]])
_COLOR = re.compile(r'^frame-(\d{6})\.color\.(jpg|png)$')
FRAME_RATE_HZ = 30.0


def read_depth_mm_png(path: Path) -> np.ndarray:
    """uint16 millimetre PNG -> float32 metres with NaN for 0 / 65535."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise DatasetError(f'cannot read 16-bit depth PNG {path}')
    depth = raw.astype(np.float32) / 1000.0
    depth[(raw == 0) | (raw == 65535)] = np.nan
    return depth


def read_rgb(path: Path) -> np.ndarray:
    """Colour image file -> HxWx3 uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f'cannot read image {path}')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _pose_known(path: Path) -> bool:
    """True when ``path`` holds 16 finite numbers (a usable 4x4 pose)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError):
        return False
    return values.size == 16 and bool(np.all(np.isfinite(values)))


class SevenScenesSequence(Sequence):
    """A 7-Scenes sequence folder; ``use_depth=False`` loads RGB only."""

    def __init__(self, root: str | Path, use_depth: bool = True, frame_id: str = 'camera_color_optical_frame'):
        self.root = Path(root)
        self.name = self.root.name
        self.use_depth = use_depth
        self.frame_id = frame_id
        if not self.root.is_dir():
            raise DatasetError(f'7-Scenes folder {self.root} does not exist')
        self.colors = sorted((p for p in self.root.iterdir() if _COLOR.match(p.name)), key=lambda p: p.name)
        if not self.colors:
            raise DatasetError(f'{self.root} is not in the 7-Scenes layout: expected frame-NNNNNN.color.jpg/.png, '
                               f'frame-NNNNNN.depth.png and frame-NNNNNN.pose.txt files; found none')
        k_file = self.root / 'camera-intrinsics.txt'
        self.K = np.loadtxt(k_file).reshape(3, 3) if k_file.is_file() else DEFAULT_K.copy()

    def __len__(self) -> int:
        return len(self.colors)

    def _stem(self, index: int) -> str:
        return self.colors[index].name.split('.color.')[0]

    @cached_property
    def frames_without_gt(self) -> int:
        """Frames whose pose is unknown: no ``.pose.txt``, or non-finite values (7-Scenes writes inf when tracking
        was lost). Read once, on first use (training never pays for it)."""
        return sum(not _pose_known(self.root / f'{self._stem(i)}.pose.txt') for i in range(len(self)))

    def load(self, index: int) -> PosedFrame:
        stem = self._stem(index)
        depth = None
        if self.use_depth:
            dpath = self.root / f'{stem}.depth.png'
            if not dpath.is_file():
                raise DatasetError(f'7-Scenes layout: missing depth file {dpath}')
            depth = read_depth_mm_png(dpath)
        pose_path = self.root / f'{stem}.pose.txt'
        T = np.loadtxt(pose_path).reshape(4, 4) if pose_path.is_file() else None
        if T is not None and not np.all(np.isfinite(T)):
            T = None  # 7-Scenes marks lost tracking with inf poses
        if T is not None:  # stored rotations are off SO(3) by ~1e-4, which reads as ~1 deg of error
            U, _, Vt = np.linalg.svd(T[:3, :3])
            T[:3, :3] = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
        number = int(_COLOR.match(self.colors[index].name).group(1))
        frame = Frame(rgb=read_rgb(self.colors[index]), K=self.K.copy(), depth=depth,
                      stamp_ns=int(round(number * 1e9 / FRAME_RATE_HZ)), frame_id=self.frame_id)
        return PosedFrame(frame=frame, T_world_from_cam=T, name=self.colors[index].name)
