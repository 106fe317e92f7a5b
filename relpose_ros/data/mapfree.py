"""Reader of one Map-free scene folder ``{train,val,test}/sXXXXX``.

Layout: ``intrinsics.txt`` (``frame_path fx fy cx cy W H``), ``poses.txt`` (``frame_path qw qx qy qz tx ty tz``,
world-to-camera, metres; the reference ``seq0/frame_00000.jpg`` has the identity), ``seq0/frame_00000.jpg``
(the reference) and ``seq1/frame_NNNNN.jpg`` (queries). Test scenes have no query poses: those frames
have an unknown pose. Index 0 of the sequence is the reference, then the seq1 frames by number.

Optional ``depth_suffix`` (e.g. ``'zoe'`` or ``'dptkitti'``) reads estimated depth maps
``frame_NNNNN.<suffix>.png`` (uint16 millimetres) next to the images.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..geometry import inverse_T, make_T, quat_to_matrix, relative_pose
from ..types import Frame
from .sequence import PosedFrame, Sequence
from .seven_scenes import read_depth_mm_png, read_rgb

_FRAME = re.compile(r'^frame_(\d{5})\.(jpg|png)$')
FRAME_RATE_HZ = 30.0


def read_intrinsics(path: Path) -> dict[str, tuple[np.ndarray, int, int]]:
    """``intrinsics.txt`` -> {frame_path: (K, W, H)}."""
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith('#'):
            continue
        if len(parts) != 7:
            raise DatasetError(f'{path}:{n}: expected "frame_path fx fy cx cy W H", got {line!r}')
        fx, fy, cx, cy = (float(v) for v in parts[1:5])
        out[parts[0]] = (np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), int(float(parts[5])), int(float(parts[6])))
    return out


def read_poses(path: Path) -> dict[str, np.ndarray]:
    """``poses.txt`` -> {frame_path: T_cam_from_world 4x4}."""
    out = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts or parts[0].startswith('#'):
            continue
        if len(parts) != 8:
            raise DatasetError(f'{path}:{n}: expected "frame_path qw qx qy qz tx ty tz", got {line!r}')
        v = [float(x) for x in parts[1:]]
        out[parts[0]] = make_T(quat_to_matrix(v[:4]), v[4:])
    return out


class MapFreeSequence(Sequence):
    """One Map-free scene: index 0 = ``seq0/frame_00000.jpg``, then the ``seq1`` queries in frame order."""

    def __init__(self, root: str | Path, depth_suffix: str | None = None,
                 frame_id: str = 'camera_color_optical_frame'):
        self.root = Path(root)
        self.name = self.root.name
        self.frame_id = frame_id
        self.depth_suffix = depth_suffix
        expected = ('intrinsics.txt', 'seq0', 'seq1')
        missing = [f for f in expected if not (self.root / f).exists()]
        if missing:
            raise DatasetError(f'{self.root} is not in the Map-free layout: expected intrinsics.txt, poses.txt, '
                               f'seq0/frame_00000.jpg and seq1/frame_NNNNN.jpg; missing: {", ".join(missing)}')
        self.intrinsics = read_intrinsics(self.root / 'intrinsics.txt')
        poses = read_poses(self.root / 'poses.txt')
        ref = [p for p in sorted((self.root / 'seq0').iterdir()) if _FRAME.match(p.name)]
        if not ref:
            raise DatasetError(f'{self.root}: Map-free layout expects the reference seq0/frame_00000.jpg; none found')
        queries = sorted((p for p in (self.root / 'seq1').iterdir() if _FRAME.match(p.name)),
                         key=lambda p: int(_FRAME.match(p.name).group(1)))
        self.frames = [f'seq0/{ref[0].name}'] + [f'seq1/{p.name}' for p in queries]
        no_k = [f for f in self.frames if f not in self.intrinsics]
        if no_k:
            raise DatasetError(f'{self.root / "intrinsics.txt"} has no line for {len(no_k)} frames '
                               f'(first: {no_k[0]})')
        self.T_world_from_cam = [None if f not in poses else inverse_T(poses[f]) for f in self.frames]
        if self.T_world_from_cam[0] is None:  # the reference defines the world (identity)
            self.T_world_from_cam[0] = np.eye(4)
        self.frames_without_gt = sum(T is None for T in self.T_world_from_cam)

    def __len__(self) -> int:
        return len(self.frames)

    def frame_number(self, index: int) -> int:
        return int(_FRAME.match(Path(self.frames[index]).name).group(1))

    def query_numbers(self) -> list[tuple[int, int]]:
        """(sequence index, seq1 frame number) of every query."""
        return [(i, self.frame_number(i)) for i in range(1, len(self.frames))]

    def gt_relative_pose(self, ref_index: int, query_index: int) -> np.ndarray | None:
        """Ground-truth ``T_query_from_ref`` from poses.txt (no image is read), or None when unknown."""
        a, b = self.T_world_from_cam[ref_index], self.T_world_from_cam[query_index]
        return None if a is None or b is None else relative_pose(a, b)

    def load(self, index: int) -> PosedFrame:
        rel = self.frames[index]
        rgb = read_rgb(self.root / rel)
        K, W, H = self.intrinsics[rel]
        if (rgb.shape[1], rgb.shape[0]) != (W, H):
            raise DatasetError(f'{self.root / rel}: image is {rgb.shape[1]}x{rgb.shape[0]} but intrinsics.txt '
                               f'says {W}x{H}')
        depth = None
        if self.depth_suffix:
            depth = read_depth_mm_png(self.root / rel.replace(Path(rel).suffix, f'.{self.depth_suffix}.png'))
        number = self.frame_number(index)
        stamp_ns = 0 if index == 0 else int(round((number + 1) * 1e9 / FRAME_RATE_HZ))
        frame = Frame(rgb=rgb, K=K.copy(), depth=depth, stamp_ns=stamp_ns, frame_id=self.frame_id)
        T = self.T_world_from_cam[index]
        return PosedFrame(frame=frame, T_world_from_cam=None if T is None else T.copy(), name=rel)
