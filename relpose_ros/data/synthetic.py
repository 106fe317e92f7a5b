"""Synthetic posed RGB-D sequences: a textured room with boxes, rendered by vectorised ray casting.

The scene (:class:`SyntheticScene`) is an axis-aligned room (world frame: x, y horizontal, z up, floor at
z = 0) with textured walls, floor and ceiling and a few axis-aligned boxes standing on the floor. Every face
has its own procedural texture (multi-scale noise, random shapes and text-like glyphs, so matches are not
ambiguous) stored in one texture atlas; a frame is rendered by intersecting one ray per pixel with the room
(exit face) and all boxes (slab test) in numpy and sampling the atlas with one ``cv2.remap``.

Depth is exact: rays are ``R_world_from_cam K^-1 [u, v, 1]`` (camera z = 1), so the ray parameter of the
first hit *is* the depth along the optical axis. Pixel centres are at integer coordinates (OpenCV).
Everything is deterministic for a seed.

Entry points: :class:`SyntheticSequence` (a :class:`~relpose_ros.data.sequence.Sequence`),
:func:`render_pair` (two frames with a known relative pose), :func:`orbit_path` (the default camera path),
:func:`look_at` and :func:`default_intrinsics`.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError
from ..geometry import relative_pose
from ..types import Frame
from .sequence import PosedFrame, Sequence

DEFAULT_FRAME_ID = 'camera_color_optical_frame'
DEFAULT_FPS = 30.0
_GLYPHS = 'ABCDEFGHJKLMNPQRSTUVWXYZ0123456789#@%&'
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
          cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX)


# ----------------------------------------------------------------------------- camera helpers


def default_intrinsics(width: int, height: int) -> np.ndarray:
    """Kinect-like pinhole intrinsics (fx = fy = 525 at 640 px wide) centred on the image."""
    f = 525.0 * width / 640.0
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye, target, up=(0.0, 0.0, 1.0), roll_deg: float = 0.0) -> np.ndarray:
    """``T_world_from_cam`` (4x4) of an optical camera (x right, y down, z forward) at ``eye`` looking at
    ``target`` with world ``up``, rotated by ``roll_deg`` about its optical axis."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ConfigError(f'look_at: viewing direction {z.tolist()} is parallel to up {up.tolist()}')
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(np.radians(roll_deg)), np.sin(np.radians(roll_deg))
    x, y = c * x + s * y, -s * x + c * y
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def orbit_path(num_frames: int, centre=(0.0, 0.0, 1.4), radius: float = 0.5, yaw0_deg: float = 0.0,
               yaw_amplitude_deg: float = 20.0, pitch_deg: float = -8.0, roll_amplitude_deg: float = 3.0,
               period_frames: float = 240.0) -> np.ndarray:
    """Smooth default path (``num_frames`` x 4 x 4 ``T_world_from_cam``): the camera drifts on a Lissajous
    curve of size ``radius`` around ``centre`` while its heading swings by +-``yaw_amplitude_deg`` around
    ``yaw0_deg`` (0 = looking along +x), so every view overlaps the first one. One loop takes
    ``period_frames`` frames (8 s at 30 Hz: at most ~0.6 m/s and ~35 deg/s)."""
    if num_frames < 1 or period_frames <= 0:
        raise ConfigError(f'num_frames and period_frames must be positive, got {num_frames}, {period_frames}')
    centre = np.asarray(centre, dtype=np.float64)
    poses = np.empty((num_frames, 4, 4))
    for i in range(num_frames):
        s = 2.0 * np.pi * i / period_frames
        eye = centre + np.array([radius * 0.6 * np.sin(s), radius * np.sin(2.0 * s) * 0.7,
                                 0.15 * radius * np.sin(3.0 * s)])
        yaw = np.radians(yaw0_deg + yaw_amplitude_deg * np.sin(s + 0.4))
        pitch = np.radians(pitch_deg + 4.0 * np.sin(2.0 * s))
        direction = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        poses[i] = look_at(eye, eye + direction, roll_deg=roll_amplitude_deg * np.sin(1.5 * s))
    return poses


# ----------------------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth value noise in [-1, 1] (h, w) with features of about ``cell`` texels."""
    gh, gw = max(2, int(np.ceil(h / cell)) + 1), max(2, int(np.ceil(w / cell)) + 1)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def make_texture(rng: np.random.Generator, h: int, w: int, density: float) -> np.ndarray:
    """Procedural HxWx3 uint8 texture: coloured multi-scale noise + random shapes + glyphs.

    ``density`` is texels per metre; shape sizes and counts are set in metres so every face looks alike
    in scale but different in content (no repeated pattern)."""
    base = rng.uniform(60, 200, 3).astype(np.float32)
    tex = np.empty((h, w, 3), np.float32)
    tex[:] = base
    for cell_m, amp in ((0.8, 45.0), (0.25, 35.0), (0.07, 25.0), (0.02, 12.0)):
        colour = rng.normal(0.0, 1.0, 3).astype(np.float32)
        colour = 0.5 * colour / (np.linalg.norm(colour) + 1e-6) + 0.6
        tex += amp * _noise(rng, h, w, max(cell_m * density, 2.0))[..., None] * colour
    img = np.clip(tex, 0, 255).astype(np.uint8)
    area = h * w / density ** 2
    for _ in range(int(18 * area) + 2):                     # shapes: ~18 per square metre
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(max(2, rng.uniform(0.02, 0.18) * density))
        kind = rng.integers(0, 5)
        if kind == 0:
            cv2.circle(img, (cx, cy), size, colour, -1 if rng.random() < 0.6 else max(1, size // 6), cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx, cy), (cx + size, cy + int(size * rng.uniform(0.3, 1.5))), colour,
                          -1 if rng.random() < 0.6 else max(1, size // 8), cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(img, (cx, cy), (size, max(1, int(size * rng.uniform(0.2, 0.9)))),
                        float(rng.uniform(0, 180)), 0.0, 360.0, colour, -1, cv2.LINE_AA)
        elif kind == 3:
            pts = (np.array([cx, cy]) + rng.normal(0, size, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            text = ''.join(rng.choice(list(_GLYPHS), int(rng.integers(2, 6))))
            cv2.putText(img, text, (cx, cy), _FONTS[int(rng.integers(0, len(_FONTS)))], size / 40.0, colour,
                        max(1, size // 25), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), 0.7)


# ----------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Face:
    """An axis-aligned textured rectangle: normal ``axis``, tangent axes ``(axis_u, axis_v)``, lower corner
    ``(u0, v0)`` in metres and its tile in the atlas (``x0, y0, w, h`` texels)."""

    axis: int
    axis_u: int
    axis_v: int
    u0: float
    v0: float
    x0: int
    y0: int
    w: int
    h: int


class SyntheticScene:
    """A textured room ``[-sx/2, sx/2] x [-sy/2, sy/2] x [0, sz]`` (metres) with ``num_boxes`` boxes on the
    floor, kept at least ``clearance`` metres from the room centre so the default path never enters one."""

    def __init__(self, seed: int = 0, room_size=(6.0, 5.0, 2.8), num_boxes: int = 8,
                 texels_per_metre: float = 200.0, clearance: float = 1.3):
        self.seed = int(seed)
        self.room_size = np.asarray(room_size, dtype=np.float64)
        if self.room_size.shape != (3,) or np.any(self.room_size <= 0):
            raise ConfigError(f'room_size must be 3 positive lengths, got {room_size}')
        if texels_per_metre <= 0:
            raise ConfigError(f'texels_per_metre must be positive, got {texels_per_metre}')
        self.density = float(texels_per_metre)
        rng = np.random.default_rng(self.seed)
        sx, sy, sz = self.room_size
        self.room_lo = np.array([-sx / 2, -sy / 2, 0.0])
        self.room_hi = np.array([sx / 2, sy / 2, sz])
        self.box_lo, self.box_hi = self._place_boxes(rng, num_boxes, clearance)
        self.faces: list[Face] = []
        self.atlas = self._build_atlas(rng)
        table = np.array([[f.axis_u, f.axis_v, f.u0, f.v0, f.x0, f.y0, f.w - 1, f.h - 1] for f in self.faces])
        self._face_axes = table[:, :2].astype(np.intp).T                                 # (2, F) tangent axes
        self._face_f32 = [np.ascontiguousarray(c, dtype=np.float32) for c in table[:, 2:].T]  # u0 v0 x0 y0 w h
        self._ray_cache: dict[tuple, np.ndarray] = {}

    # -- construction

    def _place_boxes(self, rng: np.random.Generator, n: int, clearance: float) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [], []
        margin = 0.05
        for _ in range(200 * max(n, 1)):
            if len(lo) >= n:
                break
            size = rng.uniform([0.3, 0.3, 0.3], [0.9, 0.9, 1.6])
            centre = rng.uniform(self.room_lo[:2] + size[:2] / 2 + margin, self.room_hi[:2] - size[:2] / 2 - margin)
            b_lo = np.array([*(centre - size[:2] / 2), 0.0])
            b_hi = np.array([*(centre + size[:2] / 2), min(size[2], self.room_hi[2] - 0.3)])
            nearest = np.clip(0.0, b_lo[:2], b_hi[:2])            # closest point of the footprint to the centre
            if np.linalg.norm(nearest) < clearance:
                continue
            if any(np.all(b_lo[:2] < h[:2] + margin) and np.all(b_hi[:2] > l[:2] - margin) for l, h in zip(lo, hi)):
                continue
            lo.append(b_lo)
            hi.append(b_hi)
        return np.array(lo, dtype=np.float64).reshape(-1, 3), np.array(hi, dtype=np.float64).reshape(-1, 3)

    def _build_atlas(self, rng: np.random.Generator) -> np.ndarray:
        """Room faces (index 2*axis + (0: low side, 1: high side)) then 6 faces per box, shelf-packed."""
        rects = []                                          # (axis, axis_u, axis_v, u0, v0, extent_u, extent_v)
        boxes = [(self.room_lo, self.room_hi)] + list(zip(self.box_lo, self.box_hi))
        for lo, hi in boxes:
            for axis in range(3):
                au, av = [a for a in range(3) if a != axis]
                for _side in range(2):
                    rects.append((axis, au, av, lo[au], lo[av], hi[au] - lo[au], hi[av] - lo[av]))
        sizes = [(int(np.ceil(r[5] * self.density)) + 2, int(np.ceil(r[6] * self.density)) + 2) for r in rects]
        atlas_w = max(2048, max(w for w, _ in sizes))
        x, y, shelf_h, placed = 0, 0, 0, []
        for w, h in sizes:
            if x + w > atlas_w:
                x, y, shelf_h = 0, y + shelf_h, 0
            placed.append((x, y))
            x, shelf_h = x + w, max(shelf_h, h)
        atlas = np.zeros((y + shelf_h, atlas_w, 3), np.uint8)
        if atlas.shape[0] >= 32767 or atlas_w >= 32767:
            raise ConfigError('synthetic scene too large for one texture atlas: lower texels_per_metre or room_size')
        for r, (w, h), (x0, y0) in zip(rects, sizes, placed):
            atlas[y0:y0 + h, x0:x0 + w] = make_texture(rng, h, w, self.density)
            # texel (1, 1) of the tile is at (u0, v0): one texel of padding keeps bilinear reads in the tile
            self.faces.append(Face(r[0], r[1], r[2], r[3], r[4], x0 + 1, y0 + 1, w - 2, h - 2))
        return atlas

    # -- rendering

    def _camera_rays(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        key = (width, height, *np.round(K.ravel(), 9))
        rays = self._ray_cache.get(key)
        if rays is None:
            u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
            pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=1)
            rays = (np.linalg.inv(K) @ pix.T).astype(np.float32)   # (3, N), camera z = 1
            self._ray_cache = {key: rays}
        return rays

    def inside_free_space(self, point) -> bool:
        """True if ``point`` is inside the room and outside every box."""
        p = np.asarray(point, dtype=np.float64)
        if np.any(p <= self.room_lo) or np.any(p >= self.room_hi):
            return False
        return not bool(np.any(np.all((p > self.box_lo) & (p < self.box_hi), axis=1)))

    def _box_region(self, k: int, T: np.ndarray, K: np.ndarray, width: int, height: int):
        """Pixel rectangle (row0, row1, col0, col1) that box ``k`` can cover, None if it is out of view."""
        lo, hi = self.box_lo[k], self.box_hi[k]
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        X = (corners - T[:3, 3]) @ T[:3, :3]                                  # camera frame (8, 3)
        if np.all(X[:, 2] <= 0):
            return None
        if np.any(X[:, 2] <= 1e-3):                                           # straddles the camera plane
            return 0, height, 0, width
        uv = X @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        c0, r0 = np.floor(uv.min(axis=0)).astype(int) - 1
        c1, r1 = np.ceil(uv.max(axis=0)).astype(int) + 2
        c0, c1, r0, r1 = max(c0, 0), min(c1, width), max(r0, 0), min(r1, height)
        return None if c0 >= c1 or r0 >= r1 else (r0, r1, c0, c1)

    def render(self, T_world_from_cam, K, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """Render ``(rgb HxWx3 uint8, depth HxW float32 metres)`` of the camera at ``T_world_from_cam``."""
        T = np.asarray(T_world_from_cam, dtype=np.float64)
        K = np.asarray(K, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ConfigError(f'camera pose must be a finite 4x4 matrix, got shape {T.shape}')
        origin = T[:3, 3]
        if not self.inside_free_space(origin):
            raise ConfigError(f'camera centre {origin.round(3).tolist()} is outside the room or inside a box')
        # per-axis (3, N) float32 arrays: reductions over a length-3 last axis are slow in numpy
        rays = self._camera_rays(K, width, height)                                       # (3, N), camera z = 1
        R = T[:3, :3].astype(np.float32)
        # R @ rays written out: a BLAS matmul of this shape is slow (and multi-threaded) for large N
        dirs = R[:, 0:1] * rays[0] + R[:, 1:2] * rays[1] + R[:, 2:3]                    # (3, N)
        dirs[np.abs(dirs) < 1e-12] = 1e-12
        inv = 1.0 / dirs
        o = origin.astype(np.float32)
        # room: the exit face along the axis whose wall is reached first
        lo_room, hi_room = (self.room_lo - origin).astype(np.float32), (self.room_hi - origin).astype(np.float32)
        t_room = np.where(dirs > 0, hi_room[:, None], lo_room[:, None]) * inv             # (3, N)
        axis = np.argmin(t_room, axis=0)
        depth = np.minimum(np.minimum(t_room[0], t_room[1]), t_room[2])
        face = 2 * axis + (np.take_along_axis(dirs, axis[None], axis=0)[0] > 0)
        # boxes: slab test per box, only over the pixels its screen-space bounding box covers
        dirs_img, inv_img = dirs.reshape(3, height, width), inv.reshape(3, height, width)
        depth_img, face_img = depth.reshape(height, width), face.reshape(height, width)     # views
        for k in range(len(self.box_lo)):
            region = self._box_region(k, T, K, width, height)
            if region is None:
                continue
            rows, cols_ = slice(region[0], region[1]), slice(region[2], region[3])
            iv = inv_img[:, rows, cols_]                                                  # (3, h, w)
            t1 = (self.box_lo[k] - origin).astype(np.float32)[:, None, None] * iv
            t2 = (self.box_hi[k] - origin).astype(np.float32)[:, None, None] * iv
            t_min, t_max = np.minimum(t1, t2), np.maximum(t1, t2)
            t_near = np.maximum(np.maximum(t_min[0], t_min[1]), t_min[2])
            t_far = np.minimum(np.minimum(t_max[0], t_max[1]), t_max[2])
            d = depth_img[rows, cols_]
            hit = (t_near < t_far) & (t_near > 0) & (t_near < d)
            if not hit.any():
                continue
            box_axis = np.argmax(t_min, axis=0)                                          # entry face axis
            side = np.take_along_axis(dirs_img[:, rows, cols_], box_axis[None], axis=0)[0] < 0  # from the high side
            d[hit] = t_near[hit]
            face_img[rows, cols_][hit] = (6 + 6 * k + 2 * box_axis + side)[hit]
        # texture lookup in the atlas: face-local coordinates of the hit point -> atlas texel
        points = o[:, None] + depth * dirs                                                 # (3, N)
        u0, v0, x0, y0, w_max, h_max = (c[face] for c in self._face_f32)
        tu = np.clip((np.choose(self._face_axes[0][face], points) - u0) * self.density, 0.0, w_max)
        tv = np.clip((np.choose(self._face_axes[1][face], points) - v0) * self.density, 0.0, h_max)
        map_x = (x0 + tu).reshape(height, width)
        map_y = (y0 + tv).reshape(height, width)
        rgb = cv2.remap(self.atlas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return rgb, depth.astype(np.float32).reshape(height, width)


@functools.lru_cache(maxsize=4)
def shared_scene(seed: int = 0) -> SyntheticScene:
    """The default scene of a seed, built once per process (building the texture atlas takes ~0.5 s; a scene is
    never modified by rendering, so sequences can share it)."""
    return SyntheticScene(seed=seed)


# ----------------------------------------------------------------------------- sequence and pairs


class SyntheticSequence(Sequence):
    """A rendered posed RGB-D sequence (frames rendered on demand, deterministic for ``seed``).

    poses: (N, 4, 4) ``T_world_from_cam``, or a callable ``num_frames -> poses``; default :func:`orbit_path`.
    K: 3x3 intrinsics (default :func:`default_intrinsics`). ``use_depth=False`` drops depth.
    Stamps are ``start_ns + i / fps`` seconds.

    Sensor model (all off by default: exact images and depth): ``depth_noise`` scales the axial noise of a
    Kinect-like depth camera, std ``depth_noise * (0.0012 + 0.0019 (z - 0.4)^2)`` metres; ``rgb_noise`` is the
    std of Gaussian pixel noise in grey levels; depth beyond ``max_depth`` metres is invalid (NaN). The noise is
    deterministic per (seed, frame index).
    """

    def __init__(self, num_frames: int = 60, width: int = 320, height: int = 240, K=None, seed: int = 0,
                 poses: np.ndarray | Callable[[int], np.ndarray] | None = None, fps: float = DEFAULT_FPS,
                 use_depth: bool = True, scene: SyntheticScene | None = None, start_ns: int = 1_700_000_000_000_000_000,
                 frame_id: str = DEFAULT_FRAME_ID, depth_noise: float = 0.0, rgb_noise: float = 0.0,
                 max_depth: float | None = None):
        if width < 8 or height < 8:
            raise ConfigError(f'image size must be at least 8x8, got {width}x{height}')
        if fps <= 0:
            raise ConfigError(f'fps must be positive, got {fps}')
        if depth_noise < 0 or rgb_noise < 0 or (max_depth is not None and max_depth <= 0):
            raise ConfigError(f'depth_noise and rgb_noise must be >= 0 and max_depth > 0, got {depth_noise}, '
                              f'{rgb_noise}, {max_depth}')
        self.depth_noise, self.rgb_noise, self.max_depth = float(depth_noise), float(rgb_noise), max_depth
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        self.K = default_intrinsics(width, height) if K is None else np.asarray(K, dtype=np.float64)
        if self.K.shape != (3, 3):
            raise ConfigError(f'K must be 3x3, got {self.K.shape}')
        if poses is None:
            poses = orbit_path(num_frames)
        elif callable(poses):
            poses = poses(num_frames)
        self.poses = np.asarray(poses, dtype=np.float64)
        if self.poses.ndim != 3 or self.poses.shape[1:] != (4, 4):
            raise ConfigError(f'poses must be (N, 4, 4), got {self.poses.shape}')
        self.scene = scene if scene is not None else shared_scene(seed)
        self.use_depth = use_depth
        self.start_ns = int(start_ns)
        self.frame_id = frame_id
        self.name = f'synthetic-seed{self.scene.seed}'
        self.render_seconds = 0.0        # total time spent rendering in load() (for speed reports)
        self.rendered_frames = 0

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    @property
    def frames_without_gt(self) -> int:
        """Frames whose pose is not finite (0 for the rendered paths: every pose is known)."""
        return int((~np.isfinite(self.poses).all(axis=(1, 2))).sum())

    def stamp_ns(self, index: int) -> int:
        return self.start_ns + int(round(index * 1e9 / self.fps))

    def load(self, index: int) -> PosedFrame:
        t0 = time.perf_counter()
        rgb, depth = self.scene.render(self.poses[index], self.K, self.width, self.height)
        self.render_seconds += time.perf_counter() - t0
        self.rendered_frames += 1
        if self.depth_noise > 0 or self.rgb_noise > 0 or self.max_depth is not None:
            rgb, depth = self._sensor(index, rgb, depth)
        frame = Frame(rgb=rgb, K=self.K.copy(), depth=depth if self.use_depth else None,
                      stamp_ns=self.stamp_ns(index), frame_id=self.frame_id)
        return PosedFrame(frame=frame, T_world_from_cam=self.poses[index].copy(), name=f'synthetic-{index:06d}')

    def _sensor(self, index: int, rgb: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Apply the sensor model (noise, range limit) to one exact frame."""
        rng = np.random.default_rng([self.scene.seed, index, 7])
        out_of_range = depth > self.max_depth if self.max_depth is not None else None   # on the true depth
        if self.rgb_noise > 0:
            noisy = rgb + np.float32(self.rgb_noise) * rng.standard_normal(rgb.shape, dtype=np.float32)
            rgb = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        if self.depth_noise > 0:
            std = self.depth_noise * (0.0012 + 0.0019 * (depth - 0.4) ** 2)
            depth = (depth + std * rng.standard_normal(depth.shape, dtype=np.float32)).astype(np.float32)
        if out_of_range is not None:
            depth = np.where(out_of_range, np.float32(np.nan), depth).astype(np.float32)
        return rgb, depth


@dataclass
class SyntheticPair:
    """Two rendered frames and the exact ``T_query_from_ref`` (4x4)."""

    reference: PosedFrame
    query: PosedFrame
    T_query_from_ref: np.ndarray


def render_pair(width: int = 320, height: int = 240, seed: int = 0, translation=(0.2, 0.05, 0.1),
                yaw_deg: float = 10.0, pitch_deg: float = 3.0, reference_pose: np.ndarray | None = None,
                K=None, use_depth: bool = True, scene: SyntheticScene | None = None) -> SyntheticPair:
    """Render a reference frame and a query moved by ``translation`` (metres, in the reference camera's
    optical frame) and turned by ``yaw_deg`` (about camera y) and ``pitch_deg`` (about camera x)."""
    T_ref = orbit_path(1)[0] if reference_pose is None else np.asarray(reference_pose, dtype=np.float64)
    cy, sy = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    cp, sp = np.cos(np.radians(pitch_deg)), np.sin(np.radians(pitch_deg))
    R_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    R_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    T_ref_from_query = np.eye(4)
    T_ref_from_query[:3, :3] = R_yaw @ R_pitch
    T_ref_from_query[:3, 3] = translation
    T_query = T_ref @ T_ref_from_query
    seq = SyntheticSequence(num_frames=2, width=width, height=height, K=K, seed=seed,
                            poses=np.stack([T_ref, T_query]), use_depth=use_depth, scene=scene)
    ref, query = seq[0], seq[1]
    return SyntheticPair(ref, query, relative_pose(ref.T_world_from_cam, query.T_world_from_cam))
