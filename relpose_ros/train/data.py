"""Training data: posed image pairs from any :class:`~relpose_ros.data.sequence.Sequence`.

Frames are decoded once, converted to grayscale at the network size and kept in memory (uint8), with their
poses. Pairs ``(query, reference)`` are chosen by frame gap (``min_gap <= |i - j| <= max_gap``) or by view
overlap (fraction of the reference's depth points that land in the query image, needs depth), in both orders.
Each training epoch draws ``pairs_per_epoch`` pairs, the same number from every scene (scene-balanced);
the validation pairs are a fixed, seeded list.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence as Seq
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.sequence import Sequence
from ..errors import ConfigError, DatasetError
from ..geometry import relative_pose, resize_intrinsics
from ..models.regression.model import T_to_targets

log = logging.getLogger(__name__)


def open_source(spec: str, use_depth: bool = False) -> Sequence:
    """'FORMAT:PATH' -> Sequence, through ``relpose_ros.data.datasets.open_dataset`` when available."""
    try:
        from ..data.datasets import open_dataset
    except ImportError:
        open_dataset = None
    if open_dataset is not None:
        try:
            return open_dataset(spec, use_depth=use_depth)
        except ConfigError as exc:  # a reader without the use_depth option
            if 'use_depth' not in str(exc):
                raise
            return open_dataset(spec)
    fmt, _, path = spec.partition(':')
    if fmt.lower() in ('7scenes', 'seven_scenes'):
        from ..data.seven_scenes import SevenScenesSequence
        return SevenScenesSequence(path, use_depth=use_depth)
    raise ConfigError(f"cannot open dataset '{spec}': only '7scenes:PATH' is available here")


def network_size(size: Seq[int] | None, height: int, width: int) -> tuple[int, int]:
    """(H, W) the network sees: ``size`` for landscape frames, swapped for portrait ones; None = native."""
    if size is None:
        return height, width
    h, w = int(size[0]), int(size[1])
    if (height > width) != (h > w):
        h, w = w, h
    return h, w


def to_gray(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB -> (H', W') uint8 grayscale at ``size`` = (H', W') (area interpolation)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if gray.shape != tuple(size):
        gray = cv2.resize(gray, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return gray


@dataclass
class LoadedScene:
    """One sequence in memory: grayscale frames (N, H, W) uint8, poses (N, 4, 4), global frame ids."""

    name: str
    gray: np.ndarray
    poses: np.ndarray
    first_id: int
    depth_points: list[np.ndarray] | None = None   # per frame (M, 3) camera points, for overlap pairs
    K: np.ndarray | None = None
    image_hw: tuple[int, int] | None = None


def load_scene(seq: Sequence, frames: Seq[int] | None, size: Seq[int] | None, first_id: int,
               with_depth: bool = False, depth_step: int = 16) -> LoadedScene:
    """Decode the posed frames ``frames = [start, stop(, step)]`` of ``seq`` (frames without a pose are skipped).

    Pair gaps count loaded frames: with step 2, gap 10 is 20 frames of the sequence.
    """
    start, stop, step = (0, len(seq), 1) if frames is None else (int(frames[0]), int(frames[1]),
                                                                  int(frames[2]) if len(frames) > 2 else 1)
    if not 0 <= start < stop <= len(seq) or step < 1:
        raise ConfigError(f'frames [{start}, {stop}) step {step} out of range for {seq.name or type(seq).__name__} '
                          f'({len(seq)} frames)')
    grays, poses, points = [], [], []
    K, hw = None, None
    for i in range(start, stop, step):
        pf = seq[i]
        if not pf.has_pose:
            continue
        h, w = pf.frame.rgb.shape[:2]
        grays.append(to_gray(pf.frame.rgb, network_size(size, h, w)))
        poses.append(np.asarray(pf.T_world_from_cam, dtype=np.float64))
        K, hw = pf.frame.K, (h, w)
        if with_depth:
            if pf.frame.depth is None:
                raise DatasetError(f'overlap pairs need depth, but {seq.name} frame {i} has none')
            d = pf.frame.depth[::depth_step, ::depth_step]
            v, u = np.mgrid[0:h:depth_step, 0:w:depth_step]
            ok = np.isfinite(d) & (d > 0)
            rays = np.linalg.solve(pf.frame.K, np.stack([u[ok], v[ok], np.ones(ok.sum())]))
            points.append((rays * d[ok]).T)
    if len(grays) < 2:
        raise DatasetError(f'{seq.name}: fewer than two posed frames in [{start}, {stop})')
    if len({g.shape for g in grays}) != 1:
        raise DatasetError(f'{seq.name}: frames of different sizes in one sequence are not supported')
    return LoadedScene(seq.name, np.stack(grays), np.stack(poses), first_id, points if with_depth else None, K, hw)


def view_overlap(scene: LoadedScene, ref: int, query: int) -> float:
    """Fraction of the reference's depth points that project inside the query image, in front of it."""
    X = scene.depth_points[ref]
    if len(X) == 0:
        return 0.0
    T = relative_pose(scene.poses[ref], scene.poses[query])          # T_query_from_ref
    Y = X @ T[:3, :3].T + T[:3, 3]
    z = Y[:, 2]
    uv = Y[:, :2] / np.maximum(z, 1e-6)[:, None] * np.diag(scene.K)[:2] + scene.K[:2, 2]
    h, w = scene.image_hw
    inside = (z > 0.05) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return float(inside.mean())


def candidate_pairs(scene: LoadedScene, cfg: Mapping[str, Any]) -> np.ndarray:
    """(P, 2) local (query, reference) index pairs allowed by the pair rule, both orders."""
    n = len(scene.poses)
    lo, hi = int(cfg['min_gap']), int(cfg['max_gap'])
    out = []
    for i in range(n):
        for j in range(i + lo, min(n, i + hi + 1)):
            if cfg['mode'] == 'overlap':
                ov = view_overlap(scene, i, j)
                if not float(cfg['min_overlap']) <= ov <= float(cfg['max_overlap']):
                    continue
            elif cfg['mode'] != 'gap':
                raise ConfigError(f"pairs.mode must be 'gap' or 'overlap', got {cfg['mode']!r}")
            out += [(j, i), (i, j)]
    if not out:
        raise DatasetError(f'{scene.name}: no pairs satisfy {dict(cfg)}')
    return np.asarray(out, dtype=np.int64)


def pair_targets(scene: LoadedScene, query: int, ref: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets of one pair: quaternion of R_ref_from_query (w >= 0) and the query centre in the ref frame."""
    return T_to_targets(relative_pose(scene.poses[ref], scene.poses[query]))


MIRROR_KEY_OFFSET = 1 << 40   # feature-cache keys of mirrored frames: frame id + this


def mirror_targets(quat: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Targets of the pair seen in both images mirrored left-right (x -> -x in both camera frames).

    With M = diag(-1, 1, 1): R' = M R M (same angle, axis (ax, -ay, -az)) and c' = M c, so the quaternion
    (w, x, y, z) becomes (w, x, -y, -z).
    """
    return quat * np.array([1.0, 1.0, -1.0, -1.0]), centre * np.array([-1.0, 1.0, 1.0])


def network_K(scene: LoadedScene) -> np.ndarray:
    """The scene's intrinsics at the network resolution of its loaded frames (a mirrored frame has the same K
    when the principal point is centred, as :func:`mirror_targets` assumes)."""
    if scene.K is None or scene.image_hw is None:
        raise DatasetError(f'{scene.name}: frames have no intrinsics')
    h, w = scene.gray.shape[1:]
    return resize_intrinsics(scene.K, (scene.image_hw[1], scene.image_hw[0]), (w, h))


class PairDataset(Dataset):
    """Item k of ``pairs`` ((P, 3): scene, query, reference) as a dict of tensors.

    ``mirror``: items P..2P-1 are the same pairs with both images flipped left-right and the targets mirrored
    (:func:`mirror_targets`; exact for a principal point at the image centre, as 7-Scenes' and most cameras').
    """

    def __init__(self, scenes: list[LoadedScene], pairs: np.ndarray, mirror: bool = False) -> None:
        self.scenes, self.pairs, self.mirror = scenes, np.asarray(pairs, dtype=np.int64), bool(mirror)
        self.K_net = [torch.from_numpy(network_K(s)).float() for s in scenes]   # (3, 3) per scene, once

    def __len__(self) -> int:
        return len(self.pairs) * (2 if self.mirror else 1)

    def scene_of_item(self) -> np.ndarray:
        """(len,) scene index of every item (for :class:`SceneBalancedSampler`)."""
        return np.tile(self.pairs[:, 0], 2 if self.mirror else 1)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        flip = k >= len(self.pairs)
        s, q, r = (int(v) for v in self.pairs[k - len(self.pairs) if flip else k])
        scene = self.scenes[s]
        quat, centre = pair_targets(scene, q, r)
        gq, gr = scene.gray[q], scene.gray[r]
        offset = 0
        if flip:
            quat, centre = mirror_targets(quat, centre)
            gq, gr = np.ascontiguousarray(gq[:, ::-1]), np.ascontiguousarray(gr[:, ::-1])
            offset = MIRROR_KEY_OFFSET
        return {
            'K_ref': self.K_net[s],                                     # (3, 3) reference (= query) camera
            'gray_q': torch.from_numpy(gq).float().div_(255.0)[None],   # (1, H, W)
            'gray_r': torch.from_numpy(gr).float().div_(255.0)[None],
            'quat_gt': torch.from_numpy(quat).float(),                  # (4,)
            't_gt': torch.from_numpy(centre).float(),                   # (3,)
            'key_q': torch.tensor(scene.first_id + q + offset), 'key_r': torch.tensor(scene.first_id + r + offset),
            'scene': torch.tensor(s),
        }


class SceneBalancedSampler(Sampler[int]):
    """Each epoch: ``num_samples`` indices into the flat pair list, an equal share from every scene."""

    def __init__(self, scene_of_pair: np.ndarray, num_samples: int, seed: int = 0) -> None:
        self.groups = [np.flatnonzero(scene_of_pair == s) for s in np.unique(scene_of_pair)]
        self.num_samples, self.seed, self.epoch = int(num_samples), int(seed), 0

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        share = -(-self.num_samples // len(self.groups))
        picks = np.concatenate([rng.choice(g, size=share, replace=len(g) < share) for g in self.groups])
        rng.shuffle(picks)
        return iter(picks[:self.num_samples].tolist())


def mean_pose(quats: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The trivial predictor: mean rotation (principal eigenvector of sum q q^T) and mean centre."""
    w, v = np.linalg.eigh(quats.T @ quats)
    q = v[:, -1]
    return (q if q[0] >= 0 else -q), centres.mean(axis=0)


def build_pairs(scenes: list[LoadedScene], cfg: Mapping[str, Any]) -> np.ndarray:
    """(P, 3) scene, query, reference over all scenes."""
    rows = [np.column_stack([np.full(len(c), s), c]) for s, c in
            ((s, candidate_pairs(sc, cfg)) for s, sc in enumerate(scenes))]
    return np.concatenate(rows)


def fixed_subset(pairs: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A seeded, scene-balanced subset of ``n`` pairs (all when n is None or >= len)."""
    if n is None or n >= len(pairs):
        return pairs
    idx = list(SceneBalancedSampler(pairs[:, 0], n, seed))
    return pairs[np.sort(np.asarray(idx))]


def make_loader(dataset: Dataset, batch_size: int, sampler=None, shuffle: bool = False, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle and sampler is None,
                      num_workers=num_workers, drop_last=drop_last, persistent_workers=num_workers > 0)

