"""Reader of the TUM RGB-D layout.

A sequence folder holds ``rgb.txt`` and ``depth.txt`` (``timestamp path`` lines, ``#`` comments;
depth.txt is absent for monocular sequences), ``groundtruth.txt`` (``t tx ty tz qx qy qz qw``: pose of the
colour camera's optical centre in the world, i.e. ``T_world_from_cam``), ``rgb/*.png`` and ``depth/*.png``
(uint16, metres = value / 5000, 0 = no depth).

Association: each RGB image is paired with the nearest depth image and the nearest ground-truth sample
within ``max_dt`` seconds. RGB images without a depth partner are skipped (counted in ``skipped_no_depth``);
images without a ground-truth partner are kept with an unknown pose (counted in ``frames_without_gt``).

Intrinsics: ``intrinsics.txt`` (``fx fy cx cy``) in the folder, else ``camera='fr1'|'fr2'|'fr3'|'default'``
(the published TUM calibrations; images are distorted, these are the pinhole parts), else the preset is
inferred from a folder name containing ``freiburg1/2/3``.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError, DatasetError
from ..geometry import make_T, quat_to_matrix
from ..types import Frame
from .sequence import PosedFrame, Sequence
from .seven_scenes import read_rgb

#: fx, fy, cx, cy of the TUM cameras (https://cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats).
CAMERA_PRESETS: dict[str, tuple[float, float, float, float]] = {
    'fr1': (517.3, 516.5, 318.6, 255.3),
    'fr2': (520.9, 521.0, 325.1, 249.7),
    'fr3': (535.4, 539.2, 320.1, 247.6),
    'default': (525.0, 525.0, 319.5, 239.5),
}
DEPTH_SCALE = 5000.0


def read_list(path: Path) -> tuple[np.ndarray, list[str]]:
    """A TUM ``timestamp path`` list -> (timestamps (N,), paths)."""
    stamps, names = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        parts = line.split()
        if len(parts) < 2:
            raise DatasetError(f'{path}:{n}: expected "timestamp path", got {line!r}')
        try:
            stamps.append(float(parts[0]))
        except ValueError:
            raise DatasetError(f'{path}:{n}: bad timestamp {parts[0]!r}') from None
        names.append(parts[1])
    return np.asarray(stamps, dtype=np.float64), names


def read_groundtruth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``groundtruth.txt`` -> (timestamps (N,), T_world_from_cam (N,4,4))."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            raise DatasetError(f'{path}:{n}: expected 8 numbers "t tx ty tz qx qy qz qw", got {line!r}') from None
        if len(vals) != 8:
            raise DatasetError(f'{path}:{n}: expected 8 numbers "t tx ty tz qx qy qz qw", got {len(vals)}')
        rows.append(vals)
    if not rows:
        return np.zeros(0), np.zeros((0, 4, 4))
    a = np.asarray(rows)
    T = np.stack([make_T(quat_to_matrix([r[7], r[4], r[5], r[6]]), r[1:4]) for r in a])
    return a[:, 0], T


def nearest(stamps: np.ndarray, query: np.ndarray, max_dt: float) -> np.ndarray:
    """Index of the nearest ``stamps`` entry for each ``query`` time, or -1 when farther than ``max_dt``."""
    if len(stamps) == 0:
        return np.full(len(query), -1)
    order = np.argsort(stamps)
    s = stamps[order]
    pos = np.clip(np.searchsorted(s, query), 1, len(s) - 1) if len(s) > 1 else np.zeros(len(query), int)
    left = np.maximum(pos - 1, 0)
    pick = np.where(np.abs(s[left] - query) <= np.abs(s[pos] - query), left, pos)
    idx = order[pick]
    return np.where(np.abs(stamps[idx] - query) <= max_dt, idx, -1)


def read_depth_tum(path: Path) -> np.ndarray:
    """uint16 PNG (value / 5000 = metres) -> float32 metres, NaN where 0."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise DatasetError(f'cannot read 16-bit TUM depth PNG {path}')
    depth = raw.astype(np.float32) / DEPTH_SCALE
    depth[raw == 0] = np.nan
    return depth


def tum_intrinsics(root: Path, camera: str | None) -> np.ndarray:
    """K from ``intrinsics.txt``, a named preset, or the preset named by the folder (freiburgN)."""
    k_file = root / 'intrinsics.txt'
    if camera is None and k_file.is_file():
        vals = k_file.read_text().split()
        if len(vals) < 4:
            raise DatasetError(f'{k_file}: expected "fx fy cx cy", got {" ".join(vals)!r}')
        fx, fy, cx, cy = (float(v) for v in vals[:4])
    else:
        if camera is None:
            m = re.search(r'freiburg([123])', root.name)
            if not m:
                raise DatasetError(f'TUM layout: no intrinsics for {root}: add intrinsics.txt ("fx fy cx cy") or '
                                   f'pass camera=fr1|fr2|fr3|default')
            camera = f'fr{m.group(1)}'
        if camera not in CAMERA_PRESETS:
            raise ConfigError(f"unknown TUM camera '{camera}'; known: {', '.join(CAMERA_PRESETS)}")
        fx, fy, cx, cy = CAMERA_PRESETS[camera]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


class TUMSequence(Sequence):
    """A TUM RGB-D sequence folder (see the module docstring for the layout and the association)."""

    def __init__(self, root: str | Path, use_depth: bool = True, camera: str | None = None, max_dt: float = 0.02,
                 frame_id: str = 'camera_color_optical_frame'):
        self.root = Path(root)
        self.name = self.root.name
        self.frame_id = frame_id
        missing = [f for f in ('rgb.txt', 'groundtruth.txt') if not (self.root / f).is_file()]
        if missing:
            raise DatasetError(f'{self.root} is not in the TUM RGB-D layout: expected rgb.txt, groundtruth.txt and '
                               f'(optional) depth.txt with rgb/ and depth/ folders; missing: {", ".join(missing)}')
        self.K = tum_intrinsics(self.root, camera)
        rgb_t, rgb_files = read_list(self.root / 'rgb.txt')
        if not rgb_files:
            raise DatasetError(f'{self.root / "rgb.txt"} lists no images')
        gt_t, gt_T = read_groundtruth(self.root / 'groundtruth.txt')
        depth_file = self.root / 'depth.txt'
        self.use_depth = bool(use_depth and depth_file.is_file())
        keep = np.ones(len(rgb_t), dtype=bool)
        self.depth_files: list[str | None] = [None] * len(rgb_t)
        if self.use_depth:
            d_t, d_files = read_list(depth_file)
            d_idx = nearest(d_t, rgb_t, max_dt)
            keep = d_idx >= 0
            self.depth_files = [d_files[i] if i >= 0 else None for i in d_idx]
        g_idx = nearest(gt_t, rgb_t, max_dt)
        self.skipped_no_depth = int((~keep).sum())
        sel = np.flatnonzero(keep)
        if len(sel) == 0:
            raise DatasetError(f'{self.root}: no RGB image has a depth image within {max_dt} s')
        self.stamps = rgb_t[sel]
        self.rgb_files = [rgb_files[i] for i in sel]
        self.depth_files = [self.depth_files[i] for i in sel]
        self.poses = [gt_T[g_idx[i]] if g_idx[i] >= 0 else None for i in sel]
        self.frames_without_gt = sum(p is None for p in self.poses)

    def __len__(self) -> int:
        return len(self.rgb_files)

    def load(self, index: int) -> PosedFrame:
        path = self.root / self.rgb_files[index]
        rgb = read_rgb(path)
        depth = None
        if self.use_depth:
            depth = read_depth_tum(self.root / self.depth_files[index])
            if depth.shape != rgb.shape[:2]:
                raise DatasetError(f'{self.root / self.depth_files[index]}: depth size {depth.shape[::-1]} '
                                   f'differs from image size {rgb.shape[1::-1]}')
        frame = Frame(rgb=rgb, K=self.K.copy(), depth=depth, stamp_ns=int(round(self.stamps[index] * 1e9)),
                      frame_id=self.frame_id)
        T = self.poses[index]
        return PosedFrame(frame=frame, T_world_from_cam=None if T is None else T.copy(),
                          name=self.rgb_files[index])
